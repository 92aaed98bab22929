"""This server's ceilings on a training job, checked before it is queued: the spec against its data (the datasets
exist, per-label settings name real labels), run time, epochs, model size and training memory.

Model size and memory are computed from the spec alone (no torch). The formulas mirror worker/ml/model.py;
tests/unit/test_limits.py compares them with the built torch modules for every architecture.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from core import ingest
from core.config import Settings
from core.db import base_models, datasets
from core.db.datasets import records_path
from core.db.tables import Dataset
from core.errors import ErrorCode, ServiceError, detail, prefixed
from core.scripts import script_mix, written_without_spaces
from core.spec import ModelSpec, TrainingSpec, with_tokenizer_kind


def _linear(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


def _gru(n_in: int, hidden: int) -> int:
    # three gates, each with input and hidden weights and two biases (torch.nn.GRU keeps b_ih and b_hh)
    return 3 * hidden * (n_in + hidden + 2)


@dataclass(frozen=True)
class EncoderShape:
    """What of an installed base model (model.name encoder) drives its size and training memory."""

    num_parameters: int
    hidden_size: int
    num_layers: int

    @property
    def heads(self) -> int:
        return max(1, self.hidden_size // 64)  # BERT's convention; the registry does not record the count


def estimate_params(model: ModelSpec, *, vocab_size: int, num_classes: int, base: EncoderShape | None = None) -> int:
    """Trainable parameters of `model` with an embedding table of `vocab_size` rows and `num_classes` outputs
    (encoder: the base model's own, plus the head)."""
    if model.name == "encoder":
        if base is None:
            raise ValueError("an encoder's size comes from its base model")
        return base.num_parameters + _linear(base.hidden_size, num_classes)
    embedding = vocab_size * model.embedding_dim
    if model.name == "textcnn":
        features = model.num_filters * len(model.filter_sizes)
        convs = sum(model.embedding_dim * model.num_filters * w + model.num_filters for w in model.filter_sizes)
        body = embedding + convs
    elif model.name == "fasttext":
        features = model.embedding_dim
        body = embedding + model.ngram_buckets * model.embedding_dim
    elif model.name == "bigru":
        hidden = model.hidden_size
        features = 2 * hidden
        sizes = [model.embedding_dim] + [2 * hidden] * (model.num_layers - 1)
        body = embedding + 2 * sum(_gru(n, hidden) for n in sizes)  # a forward and a backward GRU per layer
        if model.pooling == "attention":
            body += _linear(features, hidden) + _linear(hidden, 1, bias=False)
    else:
        raise ValueError(f"unknown model {model.name!r}")
    norm = 2 * features if model.batch_norm else 0  # BatchNorm1d: weight and bias (running stats are buffers)
    # The wide branch: per-class weights for every word and every bigram bucket (fasttext has no such branch).
    wide = (vocab_size + model.ngram_buckets) * num_classes if model.wide and model.name != "fasttext" else 0
    return body + norm + wide + _linear(features, num_classes)


def spec_params(spec: TrainingSpec, *, num_classes: int, base: EncoderShape | None = None) -> int:
    """Upper bound for a job: the vocabulary can grow to tokenizer.vocab_size (special tokens included)."""
    return estimate_params(spec.model, vocab_size=spec.tokenizer.vocab_size, num_classes=num_classes, base=base)


# ---------------------------------------------------------------------------------------------------------
# training memory

MB = 1024 * 1024
FLOAT = 4
# Optimizer state per parameter, in parameter-sized tensors (torch's implementations).
OPTIMIZER_STATES = {"sgd": 0, "momentum": 1, "nesterov": 1, "adam": 2, "adamw": 2, "rmsprop": 1, "adagrad": 1,
                    "adadelta": 2}
# Rows per validation pass in worker/ml/train.py (EVAL_BATCH): forward only, no gradients kept.
EVAL_ROWS = 512
# The TF-IDF member's L-BFGS fit: at most 2M weights (worker/ml/tfidf.py MAX_WEIGHTS), about 200 MB while fitting.
TFIDF_MAX_WEIGHTS = 2_000_000
TFIDF_BYTES_PER_WEIGHT = 100
# Bytes per stored token of the training data: the int64 ids and mask (16), and the TF-IDF member's sparse
# word + bigram counts (COO triplets, then CSR in scipy and torch), which are built from the same ids.
TOKEN_BYTES = 16
TFIDF_TOKEN_BYTES = 120
# The texts as Python strings and the tokenizer's per-text encodings, per byte of the dataset's records file.
RECORD_BYTE_FACTOR = 6
# Everything of a job that no spec field drives: the tokenizer's tables, torch's thread pools and allocator
# caches, the ONNX exporter and onnxruntime sessions for the parity check and the evaluation.
FIXED_BYTES = 200 * MB


# An encoder's head_init probe (worker/ml/train.py _Loop.probe_head), per training row and feature or class.
PROBE_FEATURE_BYTES = 4 + 8
PROBE_CLASS_BYTES = 4 * 8
# Rows per validation pass of an encoder (worker/ml/encoder.py EncoderClassifier.eval_batch).
ENCODER_EVAL_ROWS = 64
# transformers and the base model's loading add this much to an encoder job's process beyond FIXED_BYTES.
ENCODER_FIXED_BYTES = 300 * MB


def _encoder_floats_per_token(base: EncoderShape, width: int) -> int:
    """Activation floats a fine-tuning step keeps per (row, token): per layer, the ~17 hidden-sized tensors a
    BERT layer saves for backward (Korthikanti et al. 2022, 34sbh bytes in 16 bits) and its attention scores,
    probabilities and dropout mask (3 x heads x width), plus the embeddings'."""
    return base.num_layers * (17 * base.hidden_size + 3 * base.heads * width) + 4 * base.hidden_size


def _floats_per_token(model: ModelSpec, num_classes: int) -> int:
    """Activation floats a training step keeps per (row, token) for the backward pass, gradients included.
    Counted from the forward passes in worker/ml/model.py and checked against measured peaks (bench)."""
    e = model.embedding_dim
    if model.name == "textcnn":
        channels = model.num_filters * len(model.filter_sizes)
        # the embedding, masked and padded; the unfolded windows (a copy: E x max width); the feature maps
        # before and after ReLU and masking
        per_token = e * (2 + max(model.filter_sizes)) + 3 * channels
    elif model.name == "fasttext":
        per_token = 8 * e  # word and bigram embeddings, masked, and their gradients
    else:
        hidden = model.hidden_size
        # per layer and direction: the gates and states torch's GRU saves, the gathers and the concatenation
        per_token = 4 * e + model.num_layers * 28 * hidden + (4 * hidden if model.pooling == "attention" else 0)
    if model.wide and model.name != "fasttext":
        per_token += 6 * num_classes  # the word and bigram weight lookups and their gradients
    return per_token


# The word tokenizer's pre-tokenizer (tokenizers' Whitespace): each match is one token of a "word" tokenizer,
# and one or more (never more than its characters) of a subword one.
PRE_TOKEN = re.compile(r"\w+|[^\w\s]+")


@dataclass(frozen=True)
class DataShape:
    """What of a dataset drives training memory: its rows, the size of its records file, and its longest text in
    pre-tokens (words and punctuation runs) and in characters outside whitespace."""

    rows: int
    records_bytes: int
    longest_words: int
    longest_chars: int

    @classmethod
    def of(cls, texts: list[str], records_bytes: int) -> DataShape:
        words = chars = 0
        for text in texts:
            pieces = PRE_TOKEN.findall(text)
            words, chars = max(words, len(pieces)), max(chars, sum(map(len, pieces)))
        return cls(rows=len(texts), records_bytes=records_bytes, longest_words=words, longest_chars=chars)

    def longest_tokens(self, kind: str) -> int:
        """The most tokens a text can have: exact for word tokens, a bound (characters) for subword units."""
        return self.longest_words if kind == "word" else self.longest_chars


def estimate_training_bytes(spec: TrainingSpec, data: DataShape, *, num_classes: int,
                            base: EncoderShape | None = None) -> dict[str, int]:
    """Peak memory a training job adds to its process, by part (bytes): "activations", "parameters", "data",
    "tfidf" and "fixed"; their sum is the estimate. Every text is padded to the longest kept, so that length,
    the batch and the model's width set the activations. The vocabulary is taken at tokenizer.vocab_size.
    Measured figures against it: bench/training_memory.py.
    """
    rows, records_bytes = data.rows, data.records_bytes
    encoder = spec.model.name == "encoder"
    # an encoder's subword units are bounded by characters, plus its [CLS] and [SEP]
    longest = data.longest_chars + 2 if encoder else data.longest_tokens(spec.tokenizer.kind)
    width = max(min(spec.tokenizer.max_length, longest), 1)
    if encoder and base is None:
        raise ValueError("an encoder's training memory depends on its base model")
    per_token = _encoder_floats_per_token(base, width) if encoder else _floats_per_token(spec.model, num_classes)
    val_rows = math.ceil(rows * (1 - spec.test_split) * spec.validation_split)
    batch = min(spec.batch_size, rows - val_rows)
    # A training step keeps forward activations and gradients; a validation pass only the forward half (an
    # encoder's, one layer's worth at a time, in smaller batches).
    if encoder:
        evaluation = min(ENCODER_EVAL_ROWS, val_rows) * width * _encoder_floats_per_token(
            EncoderShape(base.num_parameters, base.hidden_size, 1), width)
    else:
        evaluation = min(EVAL_ROWS, val_rows) * width * per_token // 2
    activations = max(batch * width * per_token, evaluation) * FLOAT
    params = spec_params(spec, num_classes=num_classes, base=base)
    # weights, gradients, optimizer state, and the best epoch's copy; the checkpoint is written from them
    parameters = params * FLOAT * (3 + OPTIMIZER_STATES[spec.optimizer.name])
    data = rows * width * TOKEN_BYTES + records_bytes * RECORD_BYTE_FACTOR
    if encoder and spec.model.head_init == "probe":
        # the pooled features of every training row (float32, and float64 in the fit) and the fit's four
        # float64 rows x classes arrays (one-hot, logits, log-probabilities, gradient)
        data += rows * (base.hidden_size * PROBE_FEATURE_BYTES + num_classes * PROBE_CLASS_BYTES)
    tfidf = 0
    if spec.model.tfidf is not None:
        # counts of the real tokens only (at most one per byte of the records), and a weight per class for every
        # word and bigram feature, up to the member's cap
        features = spec.tokenizer.vocab_size + min(spec.model.tfidf.bigram_buckets, records_bytes)
        weights = min(TFIDF_MAX_WEIGHTS, features * num_classes)
        tfidf = weights * TFIDF_BYTES_PER_WEIGHT + min(rows * width, records_bytes) * TFIDF_TOKEN_BYTES
    return {"activations": activations, "parameters": parameters, "data": data, "tfidf": tfidf,
            "fixed": FIXED_BYTES + (ENCODER_FIXED_BYTES if encoder else 0)}


def check_spec(session: Session, spec: TrainingSpec, settings: Settings, loc: tuple = ()) -> TrainingSpec:
    """What the schema cannot know: the datasets exist, per-label settings name their labels, and the spec
    stays under this server's ceilings (422 otherwise; `loc` prefixes the error locations). Returns the spec as
    it will train, `tokenizer.kind: auto` resolved from the dataset's scripts: what the job stores and shows."""
    found = {}
    for field in ("dataset_id", "test_dataset_id"):
        dataset_id = getattr(spec, field)
        if dataset_id is None:
            continue
        # Read once, and locked until the job is stored or refused: a concurrent delete of the dataset waits and
        # then sees the job (409), or went first and leaves nothing to find here (422).
        found[field] = datasets.lock_dataset(session=session, dataset_id=dataset_id)
        if found[field] is None:
            raise ServiceError(ErrorCode.validation_error, f"No dataset with id {dataset_id}.", 422,
                               [detail([*loc, field], "dataset not found", "not_found")])
    spec = resolve_tokenizer(spec, found["dataset_id"], settings)
    spec, base = resolve_base_model(session, spec, loc)
    labels = found["dataset_id"].labels
    try:
        _check_label_keys(spec, labels)
        _check_ceilings(spec, num_classes=len(labels), settings=settings, base=base)
    except ServiceError as exc:
        if loc and isinstance(exc.details, list):
            exc.details = prefixed(exc.details, *loc)
        raise
    return spec


def resolve_base_model(session: Session, spec: TrainingSpec, loc: tuple = ()
                       ) -> tuple[TrainingSpec, EncoderShape | None]:
    """An encoder spec's base model made concrete: the one named, else the first installed (422 when there is
    none, saying how to add one), locked until the job is stored so that a concurrent delete waits (409) or went
    first (422 here); texts are cut at most at its length. Other specs pass through."""
    if spec.model.name != "encoder":
        return spec, None
    name = spec.model.base_model
    if name is None:
        first = base_models.first_base_model(session=session)
        name = first.name if first is not None else None
    row = base_models.lock_base_model(session=session, name=name) if name is not None else None
    if row is None:
        how = ("install one with `textclf base-models add FOLDER` on the server or POST /v1/base-models (admin "
               "key; a zip of a Hugging Face folder: config.json, model.safetensors, tokenizer.json)")
        message = (f"No base model named {name!r} is installed; GET /v1/base-models lists them, or {how}."
                   if spec.model.base_model is not None else
                   f"model encoder (preset accurate) fine-tunes an installed base model, and none is: {how}.")
        raise ServiceError(ErrorCode.validation_error, message, 422,
                           [detail([*loc, "model", "base_model"], "base model not installed", "not_found")])
    model = spec.model.model_copy(update={"base_model": row.name})
    tokenizer = spec.tokenizer.model_copy(update={"max_length": min(spec.tokenizer.max_length, row.max_length)})
    spec = spec.model_copy(update={"model": model, "tokenizer": tokenizer})
    return spec, EncoderShape(num_parameters=row.num_parameters, hidden_size=row.hidden_size,
                              num_layers=row.num_layers)


def resolve_tokenizer(spec: TrainingSpec, dataset: Dataset, settings: Settings) -> TrainingSpec:
    """`tokenizer.kind: auto` made concrete from the training dataset's script mix (core/scripts.py); any other
    kind is the user's choice and stays. Either way the kind's defaults fill what the spec leaves unset
    (core/spec.py with_tokenizer_kind)."""
    kind = spec.tokenizer.kind
    if kind == "auto":
        mix = dataset.scripts
        if mix is None:  # uploaded before the mix was recorded: read it off the records once
            path = records_path(settings, dataset.id)
            try:
                stat = path.stat()
            except FileNotFoundError:
                return spec  # nothing to train on: the worker fails the job with dataset_missing
            mix = _records_scripts(path, stat.st_mtime_ns, stat.st_size)
        kind = "char" if written_without_spaces(mix) else "word"
    return with_tokenizer_kind(spec, kind)


@functools.lru_cache(maxsize=64)
def _records_scripts(path: Path, mtime_ns: int, size: int) -> dict[str, float]:
    """The script mix of a records file, read once per process and file version."""
    return script_mix(ingest.read_records(path)[0])


def _over_ceiling(field: str, message: str, ceiling: int) -> ServiceError:
    return ServiceError(ErrorCode.validation_error, message, 422,
                        [detail([field], f"must be <= {ceiling}", "less_than_equal")])


def _check_ceilings(spec: TrainingSpec, *, num_classes: int, settings: Settings,
                    base: EncoderShape | None = None) -> None:
    """The server's limits on one job: run time, epochs and model size (422 naming the setting)."""
    if spec.max_runtime_seconds is not None and spec.max_runtime_seconds > settings.job_max_runtime_seconds:
        raise _over_ceiling("max_runtime_seconds", "max_runtime_seconds may be at most "
                            f"{settings.job_max_runtime_seconds} on this server (JOB_MAX_RUNTIME_SECONDS).",
                            settings.job_max_runtime_seconds)
    if spec.epochs > settings.max_epochs:
        raise _over_ceiling("epochs", f"epochs may be at most {settings.max_epochs} on this server (MAX_EPOCHS).",
                            settings.max_epochs)
    params = spec_params(spec, num_classes=num_classes, base=base)
    if params > settings.max_model_params:
        raise ServiceError(
            ErrorCode.validation_error,
            f"This model would have up to {params:,} parameters; this server allows {settings.max_model_params:,} "
            "(MAX_MODEL_PARAMS). Lower tokenizer.vocab_size, model.embedding_dim, model.ngram_buckets or the "
            "model's width.", 422,
            [detail(["model"], f"{params} parameters > {settings.max_model_params}", "less_than_equal")])
    _check_training_memory(spec, num_classes=num_classes, settings=settings, base=base)


def _memory_fields(spec: TrainingSpec, part: str) -> list[str]:
    """The spec fields behind one part of the training memory estimate, named in the 422."""
    if spec.model.name == "encoder":  # the base model's size is not a spec field: pick a smaller one
        return {"activations": ["batch_size", "tokenizer.max_length"], "parameters": ["model.base_model",
                "optimizer.name"], "data": ["tokenizer.max_length"], "tfidf": ["model.tfidf"]}[part]
    width = {"textcnn": ["model.num_filters"], "bigru": ["model.hidden_size", "model.num_layers"]}
    return {"activations": ["batch_size", "tokenizer.max_length", "model.embedding_dim",
                            *width.get(spec.model.name, [])],
            "parameters": ["tokenizer.vocab_size", "model.embedding_dim", "model.ngram_buckets", "optimizer.name"],
            "data": ["tokenizer.max_length"], "tfidf": ["model.tfidf"]}[part]


def _check_training_memory(spec: TrainingSpec, *, num_classes: int, settings: Settings,
                           base: EncoderShape | None = None) -> None:
    """422 when the job's estimated peak training memory is over TRAINING_MEMORY_LIMIT_MB: past it the worker's
    cap would fail the job with out_of_memory anyway, after it waited its turn."""
    path = records_path(settings, spec.dataset_id)
    try:
        stat = path.stat()
    except FileNotFoundError:
        return  # nothing to train on: the worker fails the job with dataset_missing
    parts = estimate_training_bytes(spec, _data_shape(path, stat.st_mtime_ns, stat.st_size), num_classes=num_classes,
                                    base=base)
    total_mb, limit = -(-sum(parts.values()) // MB), settings.training_memory_limit_mb
    if total_mb <= limit:
        return
    biggest = max(("activations", "parameters", "data", "tfidf"), key=parts.__getitem__)
    fields = _memory_fields(spec, biggest)
    breakdown = ", ".join(f"{name} {-(-value // MB):,}" for name, value in parts.items())
    raise ServiceError(
        ErrorCode.validation_error,
        f"Training this spec would take about {total_mb:,} MiB ({breakdown}); this server allows {limit:,} MiB "
        f"(TRAINING_MEMORY_LIMIT_MB). Most of it is {biggest}: lower {', '.join(fields)}.", 422,
        [detail(f.split("."), f"estimated training memory {total_mb} MiB > {limit} MiB", "less_than_equal")
         for f in fields])


@functools.lru_cache(maxsize=64)
def _data_shape(path: Path, mtime_ns: int, size: int) -> DataShape:
    """Rows and longest text of a records file, read once per process and file version (a dataset never
    changes; the key's mtime and size only guard against a reused path)."""
    return DataShape.of(ingest.read_records(path)[0], records_bytes=size)


def _check_label_keys(spec: TrainingSpec, dataset_labels: dict[str, int]) -> None:
    """Per-label settings (class weights, abstain thresholds) must name labels the dataset has: caught here,
    not hours later in the worker."""
    for field in ("class_weights", "abstain_threshold"):
        value = getattr(spec, field)
        unknown = sorted(set(value) - set(dataset_labels)) if isinstance(value, dict) else []
        if unknown:
            raise ServiceError(ErrorCode.validation_error,
                               f"{field} names labels the dataset lacks: {unknown[:10]}", 422,
                               [detail([field, label], "label not in dataset", "not_found")
                                for label in unknown[:10]])
