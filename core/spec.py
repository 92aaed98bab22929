"""The schemas: the training spec and the API's request/response bodies (pydantic v2).

TrainingSpec is the single source of truth: the API validates with it, the worker re-validates the stored
spec with it, and the OpenAPI document embeds its JSON schema.
"""

from __future__ import annotations

import unicodedata
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator
from pydantic_core import PydanticCustomError

# Names are shown in tables, logs and the dashboard, and stored as text. Refused: control characters (Cc: C0, DEL
# and C1; PostgreSQL cannot even store U+0000), line and paragraph separators (Zl, Zp), and invisible format
# characters (Cf): bidi overrides, embeddings and isolates make "invoice\u202egpj.exe" display as
# "invoiceexe.jpg", and zero-width characters make two different names look the same. Refusing all of Cf also
# refuses the zero-width joiners of emoji sequences and some scripts' spellings: a name can do without them.
_HIDDEN_CATEGORIES = {"Cc", "Cf", "Zl", "Zp"}
MAX_NAME_CHARS = 200


def _check_name(name: str) -> str:
    if hidden := next((c for c in name if unicodedata.category(c) in _HIDDEN_CATEGORIES), None):
        char = f"U+{ord(hidden):04X}" + (f" {unicodedata.name(hidden)}" if unicodedata.name(hidden, "") else "")
        raise PydanticCustomError("hidden_character", "must not contain control or invisible format characters "
                                  "(found {char} at position {position})",
                                  {"char": char, "position": name.index(hidden)})
    return name


# The one validator of every user-given name: datasets, jobs' models, sweeps and API keys.
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS), AfterValidator(_check_name)]


# Alias names appear in URLs: plain tokens only.
ALIAS_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TokenizerSpec(_Strict):
    kind: Literal["auto", "word", "char", "bpe", "wordpiece"] = Field(
        "auto", description="auto: char when the dataset is mostly in scripts written without spaces (Chinese, "
                            "Japanese, Thai, Lao, Khmer, Myanmar...), else word; a job's spec shows the choice. "
                            "word: whole words; char: every character of those scripts is a token, other words "
                            "stay whole; bpe, wordpiece: subword units learned from the training texts, so unseen "
                            "words still map to known pieces.")
    lowercase: bool = Field(True, description="Lower-case (and NFKC-normalise) text before splitting.")
    vocab_size: int = Field(30_000, ge=100, le=500_000,
                            description="Largest vocabulary kept (most frequent words, or subword units).")
    min_frequency: int = Field(1, ge=1, le=1_000,
                               description="word: rarer words become the unknown token; bpe, wordpiece: rarer "
                                           "pairs are not merged into a unit.")
    max_length: int = Field(256, ge=8, le=4_096, description="Tokens kept per text; longer texts are truncated.")


class TfidfSpec(_Strict):
    """A TF-IDF logistic regression whose class probabilities are averaged with the network's."""

    # 0.5 stays the default: choosing on validation gained 0.8 points on Chinese headlines, where the character
    # network is the weaker member, but moved the English sets by -0.4 to +0.4 (bench/README.md). Text split
    # into characters gets CHAR_TFIDF_WEIGHT (with_tokenizer_kind).
    weight: float | None = Field(
        0.5, gt=0.0, lt=1.0,
        description="Share of the TF-IDF model in the averaged class probabilities (default 0.5; 0.7 where "
                    "tokenizer.kind is char); null: chosen on the validation split from 0.05, 0.10, ... 0.95 by the "
                    "metric that picks the best epoch (ties: nearest 0.5). The model's metrics report the weight "
                    "used (tfidf_weight).")
    # Off by default: with a chosen weight it gained 0.1-1.2 points on six of our seven sets but cost SST-2 GLUE
    # 1.7 (bench/README.md).
    refit: bool = Field(
        False, description="Once the weight is chosen, fit the TF-IDF model again on the training and validation "
                           "rows together, and serve that fit. The validation scores reported stay the blend's "
                           "before the refit (an estimate on unseen rows); only a test set scores the served one.")
    c: float = Field(10.0, gt=0.0, le=1e6,
                     description="Inverse L2 regularisation strength, as scikit-learn's LogisticRegression C.")
    bigram_buckets: int = Field(262_144, ge=1_024, le=16_777_216,
                                description="Hash buckets for word bigrams (only the buckets of bigrams seen in "
                                            "at least 2 training texts are stored in the model).")


class ModelSpec(_Strict):
    name: Literal["textcnn", "fasttext", "bigru", "encoder"] = Field(
        "textcnn", description="textcnn: Kim (2014) convolutions; fasttext: bag of words + hashed bigrams; "
                               "bigru: bidirectional GRU with pooling over its states; encoder: fine-tune an "
                               "installed pretrained transformer (base_model) with a linear head.")
    base_model: Name | None = Field(
        None, description="encoder: the installed base model to fine-tune (GET /v1/base-models); null: the first "
                          "one installed. The job's spec shows the one used.")
    embedding_dim: int = Field(128, ge=8, le=1_024, description="Size of the word embeddings.")
    filter_sizes: tuple[int, ...] = Field(
        (3, 4, 5), min_length=1, max_length=8,
        description="textcnn: convolution widths in tokens (default 3, 4, 5; 1, 2, 3 where tokenizer.kind is char, "
                    "whose tokens are single characters).")
    num_filters: int = Field(100, ge=1, le=1_024, description="textcnn: feature maps per width.")
    ngram_buckets: int = Field(
        20_000, ge=1_000, le=10_000_000, description="fasttext and the wide branch: hash buckets for word bigrams.")
    hidden_size: int = Field(128, ge=8, le=1_024, description="bigru: GRU units per direction.")
    num_layers: int = Field(1, ge=1, le=4, description="bigru: stacked bidirectional GRU layers.")
    pooling: Literal["attention", "max", "mean", "cls"] = Field(
        "attention", description="bigru (attention, max, mean; default attention) and encoder (cls, mean, max; "
                                 "default mean): how the per-token states become one vector (padding is masked "
                                 "out). cls: the encoder's first ([CLS]) token.")
    head_init: Literal["random", "probe"] = Field(
        "random", description="encoder: how the new linear head starts. random: small random weights (BERT's "
                              "initialisation); probe: the logistic regression that the frozen base model's "
                              "pooled features of the training rows fit best (linear probing, then fine-tuning: "
                              "the preset accurate's choice).")
    dropout: float = Field(0.5, ge=0.0, lt=1.0,
                           description="Dropout before the output layer (bigru: also between GRU layers).")
    batch_norm: bool = Field(False, description="Batch normalisation on the pooled features.")
    max_norm: float | None = Field(
        None, gt=0.0, le=100.0, description="Rescale each output-layer weight row to at most this L2 norm after "
                                            "every optimizer step (Kim 2014 used 3.0 for textcnn); null disables.")
    wide: bool = Field(
        False, description="textcnn, bigru: add a linear branch over the text's words and hashed word bigrams to the "
                           "network's logits (wide & deep: what TF-IDF + logistic regression learns, beside it).")

    # On by default: the blend beats the network alone, each model right where the other is not (bench/README.md).
    tfidf: TfidfSpec | None = Field(
        default_factory=TfidfSpec,
        description="Blend the network with a TF-IDF (words + hashed word bigrams) logistic regression, fit by "
                    "L-BFGS on the training split once the network is trained; the exported model averages the "
                    "two models' class probabilities. null: the network alone.")

    @model_validator(mode="before")
    @classmethod
    def _encoder_defaults(cls, data: Any) -> Any:
        # An encoder is the whole model: no TF-IDF member unless asked for, and mean pooling (what
        # sentence-transformers trains MiniLM-style encoders with; [CLS] scored the same on TREC, bench/README.md).
        if isinstance(data, dict) and data.get("name") == "encoder":
            data = {"pooling": "mean", "tfidf": None, **data}
        return data

    @model_validator(mode="after")
    def _check_filters(self) -> ModelSpec:
        if self.name == "encoder" and self.pooling == "attention":
            raise ValueError("encoder pooling is cls, mean or max")
        if self.name == "bigru" and self.pooling == "cls":
            raise ValueError("bigru pooling is attention, max or mean")
        if self.base_model is not None and self.name != "encoder":
            raise ValueError("base_model applies to model name encoder")
        if self.head_init != "random" and self.name != "encoder":
            raise ValueError("head_init applies to model name encoder")
        if self.name == "encoder" and (self.wide or self.batch_norm):
            raise ValueError("wide and batch_norm apply to textcnn and bigru, not to encoder")
        if any(not 1 <= w <= 16 for w in self.filter_sizes):
            raise ValueError("filter_sizes must each be between 1 and 16")
        if self.wide and self.name == "fasttext":
            raise ValueError("wide applies to textcnn and bigru; fasttext already is a model of words and bigrams")
        return self


OptimizerName = Literal["sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad", "adadelta"]

# Learning rates that work out of the box for each method on these models (Adadelta's 1.0 is Zeiler's). Adam's
# 2e-3 beat 1e-3 on our datasets' mean test accuracy (bench/README.md).
DEFAULT_LR: dict[str, float] = {
    "sgd": 0.1, "momentum": 0.05, "nesterov": 0.05, "adam": 2e-3, "adamw": 1e-3,
    "rmsprop": 1e-3, "adagrad": 0.05, "adadelta": 1.0,
}


# Weight decay when a spec names a method without one: AdamW's decoupled decay is what the method is for
# (torch's own default is 0.01); 0.05 at lr 1e-3, the default spec, does as well as Adam at 2e-3 (bench/README.md).
DEFAULT_WEIGHT_DECAY: dict[str, float] = {"adamw": 0.05}
DEFAULT_OPTIMIZER = "adamw"


class OptimizerSpec(_Strict):
    name: OptimizerName = Field(DEFAULT_OPTIMIZER, description="Optimization method.")
    lr: float | None = Field(None, gt=0.0, le=10.0, description="Peak learning rate; null picks the method's default.")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="momentum, nesterov and rmsprop only.")
    weight_decay: float | None = Field(
        None, ge=0.0, le=1.0,
        description="L2 penalty on weight matrices (decoupled for adamw); null picks the method's default "
                    "(adamw 0.05, others 0).")
    betas: tuple[float, float] = Field((0.9, 0.999), description="adam and adamw: moment decay rates.")
    eps: float = Field(1e-8, gt=0.0, le=1.0, description="Numerical stability term.")
    layer_decay: float = Field(
        1.0, gt=0.0, le=1.0, description="encoder: layer-wise learning-rate decay. The head and the top layer "
                                         "train at lr, each layer below at layer_decay times the one above, the "
                                         "embeddings last; 1.0: lr everywhere.")

    @model_validator(mode="before")
    @classmethod
    def _method_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            name = data.get("name", DEFAULT_OPTIMIZER)
            # A name of the wrong type is left for field validation to report (422), not a TypeError here.
            known = isinstance(name, str)
            if data.get("lr") is None:
                data = {**data, "lr": DEFAULT_LR.get(name, 1e-3) if known else None}
            if data.get("weight_decay") is None:
                data = {**data, "weight_decay": DEFAULT_WEIGHT_DECAY.get(name, 0.0) if known else None}
        return data

    @model_validator(mode="after")
    def _check(self) -> OptimizerSpec:
        if self.name in ("momentum", "nesterov") and self.momentum <= 0.0:
            raise ValueError(f"{self.name} needs momentum > 0")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError("betas must each be in [0, 1)")
        return self


# Per-epoch decay when a spec says `exponential` without a gamma: 0.5 per epoch (the step schedule's default)
# would leave 1/512 of the peak rate by epoch 10 of the default spec.
EXPONENTIAL_GAMMA = 0.9


class SchedulerSpec(_Strict):
    name: Literal["constant", "step", "multistep", "exponential", "cosine", "onecycle", "linear_warmup",
                  "plateau"] = Field("linear_warmup", description="Learning-rate schedule.")
    warmup_ratio: float = Field(0.1, ge=0.0, le=0.5, description="cosine, linear_warmup: share of steps warming up.")
    step_size: int = Field(3, ge=1, le=1_000, description="step: epochs between decays.")
    milestones: tuple[Annotated[int, Field(ge=1, le=1_000)], ...] = Field(
        (), max_length=32, description="multistep: epochs (increasing) after which the rate is multiplied by gamma.")
    gamma: float = Field(0.5, gt=0.0, lt=1.0,
                         description="step, multistep: decay factor; exponential: factor per epoch "
                                     f"({EXPONENTIAL_GAMMA} when omitted).")
    patience: int = Field(1, ge=0, le=100, description="plateau: epochs without improvement before decaying.")
    factor: float = Field(0.5, gt=0.0, lt=1.0, description="plateau: decay factor.")
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0, description="cosine, linear_warmup: final lr / peak lr.")

    @model_validator(mode="before")
    @classmethod
    def _default_gamma(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("name") == "exponential" and data.get("gamma") is None:
            data = {**data, "gamma": EXPONENTIAL_GAMMA}
        return data

    @model_validator(mode="after")
    def _check_milestones(self) -> SchedulerSpec:
        if self.name == "multistep":
            if not self.milestones:
                raise ValueError("multistep needs milestones, e.g. [5, 8]")
            if any(a >= b for a, b in zip(self.milestones, self.milestones[1:])):
                raise ValueError("milestones must be strictly increasing")
        return self


class EarlyStoppingSpec(_Strict):
    metric: Literal["val_macro_f1", "val_accuracy", "val_loss"] = Field(
        "val_macro_f1", description="Validation metric watched; the best epoch by it is the one kept.")
    patience: int = Field(3, ge=0, le=100, description="Epochs in a row without improvement that are tolerated; "
                                                       "the next one stops training (0: the first one does).")
    min_delta: float = Field(0.0, ge=0.0, le=10.0,
                             description="Smallest change of the metric that counts as an improvement.")


class AugmentSpec(_Strict):
    """Token-level noise on training batches only (validation, test and serving see the texts as they are)."""

    deletion: float = Field(0.0, ge=0.0, le=0.5,
                            description="Chance each token is dropped (a text always keeps one).")
    swap: float = Field(0.0, ge=0.0, le=0.5, description="Chance each token swaps places with the next one.")
    mask: float = Field(0.0, ge=0.0, le=0.5, description="Chance each token becomes the unknown token.")

    @model_validator(mode="after")
    def _check_any(self) -> AugmentSpec:
        if self.deletion == self.swap == self.mask == 0.0:
            raise ValueError("augment needs deletion, swap or mask above 0; use null to turn it off")
        return self


# Label names are stored text: the same bounds as a dataset's labels (core.ingest refuses longer ones at upload).
MAX_LABEL_CHARS = 200
LabelName = Annotated[str, Field(min_length=1, max_length=MAX_LABEL_CHARS)]
ClassWeight = Annotated[float, Field(gt=0.0, le=1_000.0)]
ClassWeights = Literal["balanced"] | Annotated[dict[LabelName, ClassWeight], Field(min_length=1, max_length=10_000)]
Probability = Annotated[float, Field(ge=0.0, le=1.0, strict=True)]
# One threshold for every class, or one per named class (classes left out never abstain).
AbstainThreshold = Probability | Annotated[dict[LabelName, Probability], Field(min_length=1, max_length=10_000)]

# `preset: "fast"`: a fastText-like run (Joulin et al. 2016: averaged word + hashed-bigram embeddings, no dropout,
# plain SGD decaying linearly to 0, no clipping), filled in UNDER the user's fields. The loss is a batch mean, so
# lr 10 on 32 examples moves each one about as far as fastText's per-example rate (1.0 decaying, ~0.3 here).
# Blended at 0.85 with TF-IDF it matches fastText's accuracy, which the network alone did not; 6 epochs are as
# good as 10 and fewer lose accuracy (bench/README.md).
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "fast": {
        "model": {"name": "fasttext", "embedding_dim": 64, "ngram_buckets": 100_000, "dropout": 0.0,
                  "tfidf": {"weight": 0.85}},
        "optimizer": {"name": "sgd", "lr": 10.0},
        "scheduler": {"name": "linear_warmup", "warmup_ratio": 0.0},
        "epochs": 6,
        "batch_size": 32,
        "grad_clip": None,
    },
    # `preset: "accurate"`: fine-tune an installed base model the way BERT-style encoders are fine-tuned (Devlin
    # et al. 2019; Mosbach et al. 2021): AdamW with decay 0.01, 10 % linear warm-up then linear decay to 0,
    # clipping at 1.0, a few epochs (early stopping still keeps the best one), texts cut at 128 tokens. The head
    # starts as a linear probe of the frozen model (Kumar et al. 2022, LP-FT): from a random head, 3 epochs at
    # 5e-5 left 77-class BANKING77 far under the frozen encoder + LR. The rate, 1e-4 rather than BERT's 5e-5,
    # was chosen on the five benchmark sets' validation rows: level on three, higher on two (bench/README.md);
    # a small model (MiniLM-L6) takes a higher rate than BERT-base. 4 epochs rather than 3 were chosen the same
    # way: higher on four of the five sets' validation rows, level on the fifth.
    "accurate": {
        "model": {"name": "encoder", "dropout": 0.1, "head_init": "probe"},
        "optimizer": {"name": "adamw", "lr": 1e-4, "weight_decay": 0.01},
        "scheduler": {"name": "linear_warmup", "warmup_ratio": 0.1},
        "tokenizer": {"max_length": 128},
        "epochs": 4,
        "batch_size": 32,
        "grad_clip": 1.0,
    },
}


def _merge_under(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` with `base` filled in where `top` is silent; a section whose `name` differs is not merged."""
    out = dict(base)
    for key, value in top.items():
        below = out.get(key)
        if isinstance(value, dict) and isinstance(below, dict):
            # A preset's model/optimizer/scheduler settings are tuned for its own choice of `name`: a user who
            # picks another name gets that section's plain defaults, not (say) SGD's rate on Adam.
            if "name" in value and value["name"] != below.get("name"):
                out[key] = value
            else:
                out[key] = _merge_under(below, value)
        else:
            out[key] = value
    return out


class TrainingSpec(_Strict):
    """What to train. `{"dataset_id": ...}` alone is a complete, good spec."""

    dataset_id: UUID = Field(description="The uploaded dataset to train on.")
    name: Name | None = Field(None, description="A name for the resulting model.")
    model: ModelSpec = Field(default_factory=ModelSpec)
    tokenizer: TokenizerSpec = Field(default_factory=TokenizerSpec)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    # At most 10, stopped early: room for many-class sets that learn slowly, as good as 12 and faster (bench/README.md).
    epochs: int = Field(10, ge=1, le=200, description="Passes over the training set (an upper bound: early "
                                                          "stopping is on by default).")
    batch_size: int = Field(32, ge=1, le=4_096, description="Examples per optimization step.")
    bucket_by_length: bool = Field(
        True, description="Cut batches from runs of shuffled texts sorted by length, then shuffle the batches: "
                          "less padding, the same number of steps. false: purely random batches.")
    grad_clip: float | None = Field(5.0, gt=0.0, le=1_000.0, description="Clip the gradient norm; null disables.")
    validation_split: float = Field(0.1, gt=0.0, le=0.5, description="Share of the data held out for validation.")
    test_split: float = Field(0.0, ge=0.0, le=0.5,
                              description="Share of the dataset held out (stratified) as a test set; 0 for none.")
    test_dataset_id: UUID | None = Field(None, description="A separately uploaded dataset to evaluate on.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seeds the split, initialisation and shuffling.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto uses CUDA when present.")
    # A budget in steps beside epochs: small sets never reach it; large ones stop before overfitting (bench/README.md).
    max_steps: int | None = Field(
        4_000, ge=1, le=10_000_000,
        description="Stop after this many optimization steps even if epochs remain (the schedule spans the "
                    "shorter of the two); null: epochs alone decide.")
    max_runtime_seconds: int | None = Field(
        None, ge=10, le=30 * 24 * 3600,
        description="Stop the job (failed: time_limit_exceeded) after this long; null means the server's ceiling "
                    "(JOB_MAX_RUNTIME_SECONDS); a value above that ceiling is refused.")
    preset: Literal["default", "fast", "accurate"] = Field(
        "default", description="Defaults to start from; the spec's own fields win. fast: a fastText-like model "
                               "(hashed bigrams, sparse SGD, 6 epochs) blended at 0.85 with the TF-IDF model; "
                               "trains in seconds. accurate: fine-tune an installed base model (model.name "
                               "encoder; AdamW 1e-4, 10 % warm-up then linear decay, 4 epochs, 128 tokens); "
                               "minutes on a CPU.")
    label_smoothing: float = Field(0.0, ge=0.0, le=0.5,
                                   description="Share of each target's probability spread over all classes.")
    class_weights: ClassWeights | None = Field(
        None, description="Loss weight per class: balanced (inverse class frequency in the training split) or "
                          "{label: weight} (labels left out weigh 1); null for equal weights.")
    # On by default: it saves epochs past the best one without changing which epoch is kept (bench/README.md).
    early_stopping: EarlyStoppingSpec | None = Field(
        default_factory=lambda: EarlyStoppingSpec(patience=2),
        description="Stop when the metric stops improving; null trains every epoch. Either way the best epoch (by "
                    "this metric, else validation macro-F1) is the model kept.")
    augment: AugmentSpec | None = Field(None, description="Random token noise on training batches; null for none.")
    abstain_threshold: AbstainThreshold | None = Field(
        None, description="Stored with the model: a prediction whose best score is under this abstains (label null, "
                          "abstained true, scores kept). A number for every class or {label: number} for some; "
                          "null never abstains. PATCH /v1/models/{id} changes it later.")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("preset"), str) and data["preset"] in PRESETS:
            data = _merge_under(PRESETS[data["preset"]], data)
        return data

    @model_validator(mode="after")
    def _one_test_set(self) -> TrainingSpec:
        if self.test_split > 0 and self.test_dataset_id is not None:
            raise ValueError("give test_split or test_dataset_id, not both")
        # Token noise would drop or swap an encoder's [CLS]/[SEP] and mask with our [UNK] id, not its own.
        if self.model.name == "encoder" and self.augment is not None:
            raise ValueError("augment applies to the from-scratch models, not to model name encoder")
        return self


# Defaults for text split into characters (tokenizer.kind char: Chinese, Japanese, Thai...), where a token is a
# character rather than a word. Convolutions over 1-3 characters instead of 3-5 tokens, and the TF-IDF member,
# whose character n-grams are the stronger view there (on both Chinese sets we have, alone it beats the network by
# 2-6 points), weighs 0.7 in the blend: the weight the validation split chose on nlpcc2017_headlines (0.7, 0.75,
# 0.7 over three seeds), then checked on a Chinese set it was not chosen on. Both raised the 3-seed mean on both
# sets, and training is faster (bench/README.md).
CHAR_FILTER_SIZES = (1, 2, 3)
CHAR_TFIDF_WEIGHT = 0.7


def with_tokenizer_kind(spec: TrainingSpec, kind: str) -> TrainingSpec:
    """`spec` with tokenizer.kind `kind` (what `auto` became, or the kind it names) and, for `char`, the character
    defaults of the fields the spec leaves unset: a spec or preset that sets them keeps its values."""
    model = spec.model
    if kind == "char":
        update: dict[str, Any] = {}
        if model.name == "textcnn" and "filter_sizes" not in model.model_fields_set:
            update["filter_sizes"] = CHAR_FILTER_SIZES
        if model.tfidf is not None and "weight" not in model.tfidf.model_fields_set:
            update["tfidf"] = model.tfidf.model_copy(update={"weight": CHAR_TFIDF_WEIGHT})
        model = model.model_copy(update=update)
    return spec.model_copy(update={"tokenizer": spec.tokenizer.model_copy(update={"kind": kind}), "model": model})


# ---------------------------------------------------------------------------------------------------------
# response bodies


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    cancelling = "cancelling"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    pruned = "pruned"  # stopped by its sweep's successive halving (error.message says when and why)


# A job in one of these never changes again; the others are still in flight.
TERMINAL_STATUSES = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled, JobStatus.pruned})
ACTIVE_STATUSES = tuple(s for s in JobStatus if s not in TERMINAL_STATUSES)


class _Read(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class DatasetRead(_Read):
    id: UUID
    name: str
    format: str
    row_count: int
    labels: dict[str, int] = Field(description="Examples per label.")
    sha256: str = Field(description="Hash of the normalised records (text and label).")
    warnings: list[dict[str, Any]]
    scripts: dict[str, float] | None = Field(
        description="Share of the texts' letters per writing system, largest first (e.g. {\"Han\": 0.93, "
                    "\"Latin\": 0.07}); it decides what tokenizer.kind auto becomes. null for datasets uploaded "
                    "before it was recorded.")
    created_at: datetime


class Progress(BaseModel):
    stage: str = "queued"
    epoch: int = 0
    total_epochs: int = 0
    step: int = 0
    total_steps: int = 0
    percent: float = 0.0
    eta_seconds: float | None = None


class EpochRecord(BaseModel):
    epoch: int
    train_loss: float
    train_accuracy: float | None = None  # absent from jobs trained before it was recorded
    val_loss: float
    val_accuracy: float
    val_macro_f1: float
    lr: float
    seconds: float


class JobError(BaseModel):
    code: str
    message: str


class JobRead(_Read):
    id: UUID
    dataset_id: UUID | None
    status: JobStatus
    spec: dict[str, Any]
    progress: Progress
    history: list[EpochRecord] = Field(
        description="Per epoch, the network alone (a TF-IDF blend is fitted after the last epoch).")
    metrics: dict[str, Any] | None = Field(description=(
        "Once the job has a model: val_accuracy, val_macro_f1 and val_loss are the served model's (the exported "
        "model, the blend when model.tfidf is on, at best_epoch), the one figure the dashboard and CLI show; "
        "network_val_* and tfidf_val_* score each half of a blend alone; test_* the test set; and run facts."))
    device: str | None
    model_id: UUID | None
    error: JobError | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class ModelRead(_Read):
    id: UUID
    name: str
    version: int = Field(description="1, 2, ... per model name, in order of registration.")
    job_id: UUID
    dataset_id: UUID | None
    labels: list[str]
    spec: dict[str, Any]
    metrics: dict[str, Any]
    artifacts: dict[str, int] = Field(description="Artifact file name -> size in bytes.")
    aliases: list[str] = []
    abstain_threshold: AbstainThreshold | None = Field(None, description="See TrainingSpec.abstain_threshold.")
    created_at: datetime
    providers: list[str] | None = Field(None, description="The onnxruntime execution providers this server's API "
                                        "processes ask for, best first (the same whether or not a process has "
                                        "loaded the model; a process that cannot start CUDA logs it and uses CPU).")


# ---------------------------------------------------------------------------------------------------------
# request bodies


class Record(_Strict):
    text: str
    label: Annotated[StrictStr, Field(min_length=1)] | StrictInt


class DatasetCreate(_Strict):
    name: Name
    records: list[Record] = Field(min_length=1)


class PredictRequest(_Strict):
    texts: list[str] = Field(min_length=1, description="Texts to classify.")
    top_k: int = Field(1, ge=1, le=100, description="Labels returned per text, best first.")


class ModelUpdate(_Strict):
    abstain_threshold: AbstainThreshold | None = Field(
        description="A number for every class, {label: number} for some, or null to never abstain.")


class LabelScore(BaseModel):
    label: str
    score: float


class Prediction(BaseModel):
    label: str | None = Field(description="The best label; null when the model abstained.")
    score: float = Field(description="The best label's probability (also when abstaining).")
    abstained: bool = Field(description="The best score was under the model's abstain threshold.")
    top_k: list[LabelScore]


class PredictResponse(BaseModel):
    model_id: UUID
    model_name: str
    model_version: int
    alias: str | None = Field(None, description="The alias that chose the model, if one did.")
    predictions: list[Prediction]


class ClassMetrics(BaseModel):
    label: str
    precision: float
    recall: float
    f1: float
    support: int


class Misclassified(BaseModel):
    text: str
    label: str
    predicted: str
    score: float
    label_score: float


class SplitEvaluation(BaseModel):
    examples: int
    accuracy: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    micro_precision: float
    micro_recall: float
    micro_f1: float
    weighted_precision: float
    weighted_recall: float
    weighted_f1: float
    per_class: list[ClassMetrics]
    confusion_matrix: dict[str, Any] = Field(description="labels, and matrix[true][predicted] counts.")
    log_loss: float
    ece: float = Field(description="Expected calibration error (15 equal-width confidence bins).")
    misclassified: list[Misclassified] = Field(description="The most confident mistakes first.")
    unknown_label_examples: int | None = Field(None, description="Test rows whose label the model never saw.")
    scored: Literal["served_model", "before_refit"] | None = Field(
        None, description="validation: whose probabilities these are. served_model: the exported model's. "
                          "before_refit: the blend as selected, before its TF-IDF member was refit on the "
                          "validation rows too (model.tfidf.refit), since the served model has seen them.")


class EvaluationRead(BaseModel):
    model_id: UUID
    validation: SplitEvaluation | None
    test: SplitEvaluation | None


class AliasSet(_Strict):
    model_id: UUID


class AliasRead(_Read):
    name: str
    model_id: UUID
    updated_at: datetime


class Page(BaseModel):
    items: list[Any]
    total: int
    limit: int
    offset: int


# ---------------------------------------------------------------------------------------------------------
# API keys


class Scope(StrEnum):
    """What a key may do. admin may do everything; the others are independent (give a key several)."""

    read = "read"
    train = "train"
    predict = "predict"
    admin = "admin"


class ApiKeyCreate(_Strict):
    name: Name = Field(description="Who or what uses the key.")
    scopes: list[Scope] = Field(min_length=1, max_length=4, description="read, train, predict and/or admin.")


class ApiKeyRead(_Read):
    id: UUID
    name: str
    prefix: str = Field(description="The key's first characters, to recognise it; the secret is never shown again.")
    scopes: list[Scope]
    created_at: datetime
    last_used_at: datetime | None = Field(description="Updated at most once a minute.")
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyRead):
    key: str = Field(description="The secret: send it as `Authorization: Bearer <key>`. Shown only in this reply.")
