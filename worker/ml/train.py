"""Train a text classifier from a TrainingSpec. No database, no Celery: the caller owns both.

Reads top to bottom like nanoGPT's train.py: data, model, optimizer, loop, evaluate.
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch

# torch's optimizers import torch._dynamo on first use, which is slow (bench/README.md). Imported here, the
# cost falls at import time, which the Celery parent pays once for all jobs (worker/celery_app.py).
import torch._dynamo  # noqa: F401
import torch.nn.functional as F
from scipy.special import softmax
from sklearn.metrics import accuracy_score, f1_score
from torch import nn

from core.ml.tokenizer import PAD_ID, UNK_ID, TextEncoder, fit_tokenizer, resolve_kind
from core.spec import AugmentSpec, OptimizerSpec, SchedulerSpec, TfidfSpec, TrainingSpec, with_tokenizer_kind
from worker.ml.checkpoint import CheckpointStore
from worker.ml.model import Blend, build_model
from worker.ml.tfidf import fit_logistic_regression, fit_tfidf

# Least time between step-level on_progress / should_stop calls: the callbacks may touch the database.
PROGRESS_EVERY_S = 2.0
CANCEL_CHECK_EVERY_S = 1.0
# Batch size for validation passes: no gradients are kept, so larger batches cost little memory (a model may
# set its own `eval_batch`: an encoder's attention grows with batch x length^2).
EVAL_BATCH = 512
# An encoder's head_init probe: logistic regression's inverse L2 strength, scikit-learn's default. On BANKING77's
# validation rows it scored as well as 10 and better than 0.1 or 100 (bench/README.md).
PROBE_C = 1.0
# Length bucketing sorts this many batches' worth of shuffled rows at a time: enough that a batch's texts have
# nearly the same length, few enough that every batch still mixes rows from all over the training set.
BUCKET_BATCHES = 50


class TrainingCancelled(Exception):
    """should_stop() asked the run to stop."""


class TrainingDiverged(Exception):
    """The training loss became NaN or infinite, or exploded (see DIVERGENCE_FACTOR)."""


# A run has diverged once its mean training loss is non-finite or above this many times ln(classes): the loss of
# predicting every class equally likely, which is about where a freshly initialised model starts. Nothing that
# learns gets near it (that is a mean probability of e^-69 for the right class, with two classes); optimizers
# blown up by a learning rate of 10 without clipping pass it within their first epoch (bench/README.md), and
# SGD's models would otherwise register at chance accuracy.
DIVERGENCE_FACTOR = 100.0


def check_divergence(loss: float, num_classes: int, where: str) -> None:
    """Raise TrainingDiverged when `loss` (a mean training loss, at `where`) is non-finite or exploded."""
    limit = DIVERGENCE_FACTOR * math.log(max(num_classes, 2))
    if not math.isfinite(loss):
        raise TrainingDiverged(f"the training loss is {loss} {where}")
    if loss > limit:
        raise TrainingDiverged(f"the training loss reached {loss:.4g} {where}, over {DIVERGENCE_FACTOR:g} x "
                               f"ln({num_classes} classes) = {limit:.4g}")


class CudaUnavailable(RuntimeError):
    """The spec asked for CUDA on a machine without it."""


class SpecDataMismatch(ValueError):
    """The spec refers to something the data lacks (e.g. class_weights for a label the dataset has not)."""


@dataclass
class TrainResult:
    """A trained model (CPU, eval mode), its encoder, per-epoch history, summary metrics and provenance."""

    model: nn.Module
    encoder: TextEncoder
    history: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    device: str = "cpu"
    provenance: dict = field(default_factory=dict)
    # The validation rows the model was selected on, in split order: the texts and their class indices (into
    # label_names). The caller checks parity and evaluates on exactly these, never on a split of its own.
    val_texts: list[str] = field(default_factory=list)
    val_y: list[int] = field(default_factory=list)
    # The validation probabilities of the model as selected, where what is served has since seen those rows (the
    # TF-IDF member refit on them): the caller evaluates these instead of the served model's. None: no refit.
    val_proba: np.ndarray | None = None


def resolve_device(requested: str) -> torch.device:
    """auto -> cuda when available else cpu; cuda when unavailable raises CudaUnavailable."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise CudaUnavailable("the spec asks for device=cuda but this worker has no usable CUDA device")
    return torch.device(requested)


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def collect_provenance(spec: TrainingSpec, device: torch.device) -> dict:
    """What a rerun needs to match this one: seed, library versions, threads, and the GPU when on CUDA."""
    out = {
        "seed": spec.seed, "device": str(device), "python": platform.python_version(),
        "torch": torch.__version__, "numpy": np.__version__, "tokenizers": _version("tokenizers"),
        "onnx": _version("onnx"), "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
        "scikit_learn": _version("scikit-learn"),
        # CPU float sums are reproducible run to run only at the same thread count.
        "torch_threads": torch.get_num_threads(),
        "cuda": None, "cudnn": None, "gpu": None,
    }
    if device.type == "cuda":
        out.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                   gpu=torch.cuda.get_device_name(device))
    return out


# -----------------------------------------------------------------------------
# data


def stratified_split(labels: Sequence[int], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx): about `fraction` of each class held out; singleton classes stay in train."""
    labels = np.asarray(labels)
    if len(labels) < 2:
        raise ValueError("need at least 2 examples to hold one out for validation")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        # Keep at least one example of every class in train: a class the model never saw cannot be learned.
        n_val = min(int(round(len(idx) * fraction)), len(idx) - 1)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    train_idx, val_idx = np.concatenate(train), np.concatenate(val)
    if len(val_idx) == 0:
        # Tiny data sets round every class to 0: move one example of the largest class so metrics exist.
        counts = np.bincount(np.searchsorted(np.unique(labels), labels[train_idx]))
        biggest = np.unique(labels)[counts.argmax()]
        pick = rng.choice(np.flatnonzero(labels[train_idx] == biggest))
        val_idx = train_idx[[pick]]
        train_idx = np.delete(train_idx, pick)
    return np.sort(train_idx), np.sort(val_idx)


def _batches(order: torch.Tensor, batch_size: int, *, merge_single: bool) -> list[torch.Tensor]:
    """Split a permutation into batches; optionally fold a trailing batch of one into the previous."""
    batches = list(order.split(batch_size))
    # BatchNorm cannot normalise a batch of one in training mode (zero variance): merge it instead of dropping.
    if merge_single and len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2:] = [torch.cat(batches[-2:])]
    return batches


def epoch_batches(
    order: torch.Tensor, lengths: np.ndarray, batch_size: int, *, merge_single: bool, bucket: bool,
    generator: torch.Generator,
) -> list[torch.Tensor]:
    """One epoch's batches from a random permutation `order` of the training rows.

    With `bucket`, each run of BUCKET_BATCHES batches' worth of rows is sorted by length before it is cut into
    batches, and the batches are then shuffled: a batch is padded to its longest text, and random batches of
    short, varied texts are mostly padding (bench/README.md). The batch count is the same either way.
    """
    if not bucket:
        return _batches(order, batch_size, merge_single=merge_single)
    batches: list[torch.Tensor] = []
    for chunk in order.split(batch_size * BUCKET_BATCHES):
        by_length = np.argsort(lengths[chunk.numpy()], kind="stable")  # ties keep their random order
        batches += _batches(chunk[torch.from_numpy(by_length)], batch_size, merge_single=merge_single)
    return [batches[i] for i in torch.randperm(len(batches), generator=generator)]


def _rows(
    ids: np.ndarray, mask: np.ndarray, lengths: np.ndarray, rows: np.ndarray, min_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """Gather `rows` and trim them to the batch's longest text (padding per batch, at least min_len wide)."""
    width = max(int(lengths[rows].max()), min_len)
    return ids[rows, :width], mask[rows, :width]


def augment_batch(
    ids: np.ndarray, mask: np.ndarray, spec: AugmentSpec, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Random token deletion, neighbour swaps and [UNK] masking of right-padded (ids, mask); padding untouched.

    Returns new arrays of the same shape, still right-padded (deletion shortens rows). Every random draw has a
    fixed shape, so the same rng state and batch always give the same result.
    """
    ids = ids.copy()
    valid = mask.astype(bool)
    rows, width = ids.shape
    positions = np.arange(width)[None, :]
    if spec.deletion > 0:
        keep = valid & (rng.random((rows, width)) >= spec.deletion)
        # A text keeps at least its first token: an emptied text would teach its label from nothing.
        keep[valid.any(axis=1) & ~keep.any(axis=1), 0] = True
        order = np.argsort(~keep, axis=1, kind="stable")  # kept tokens first, in their order
        valid = positions < keep.sum(axis=1, keepdims=True)
        ids = np.where(valid, np.take_along_axis(ids, order, axis=1), PAD_ID)
    if spec.swap > 0:
        start = (rng.random((rows, width)) < spec.swap) & (positions < valid.sum(axis=1, keepdims=True) - 1)
        # Disjoint pairs: a token chosen right after a chosen one stays (numpy buffers the overlapping operands).
        start[:, 1:] &= ~start[:, :-1]
        source = np.broadcast_to(positions, ids.shape).copy()
        source[start] += 1  # position i takes token i + 1 ...
        source[:, 1:][start[:, :-1]] -= 1  # ... and position i + 1 takes token i
        ids = np.take_along_axis(ids, source, axis=1)
    if spec.mask > 0:
        ids = np.where(valid & (rng.random((rows, width)) < spec.mask), UNK_ID, ids)
    return ids, valid.astype(mask.dtype)


def class_weight_vector(
    class_weights: str | dict[str, float] | None, label_names: Sequence[str], y_train: np.ndarray
) -> np.ndarray | None:
    """Per-class loss weights from the spec; None for equal weights. Unknown labels raise SpecDataMismatch."""
    if class_weights is None:
        return None
    if class_weights == "balanced":
        # scikit-learn's "balanced": n / (classes * count), so every class carries the same total weight.
        counts = np.bincount(y_train, minlength=len(label_names)).astype(np.float64)
        return np.where(counts > 0, len(y_train) / (len(label_names) * np.maximum(counts, 1)), 1.0)
    index = {str(name): i for i, name in enumerate(label_names)}
    missing = sorted(set(class_weights) - index.keys())
    if missing:
        raise SpecDataMismatch(
            f"class_weights names labels the dataset does not have: {', '.join(map(repr, missing[:10]))}"
            f"{' ...' if len(missing) > 10 else ''} (labels: {', '.join(map(repr, list(index)[:20]))})")
    weights = np.ones(len(label_names))
    for name, weight in class_weights.items():
        weights[index[name]] = weight
    return weights


def _to_device(x: np.ndarray, m: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Move one batch of (input_ids, attention_mask) to `device`."""
    x, m = torch.from_numpy(x), torch.from_numpy(m)
    if device.type == "cuda":
        # Page-locked host memory lets the copy run asynchronously while the GPU works on the previous step.
        return x.pin_memory().to(device, non_blocking=True), m.pin_memory().to(device, non_blocking=True)
    return x, m


@dataclass
class Encoded:
    """One side of the validation split, tokenised: ids and mask [N, T], real tokens per row [N], classes [N]."""

    ids: np.ndarray
    mask: np.ndarray
    lengths: np.ndarray
    y: np.ndarray

    @classmethod
    def of(cls, encoder: TextEncoder, texts: Sequence[str], y: np.ndarray) -> Encoded:
        ids, mask = encoder.encode(texts)
        return cls(ids=ids, mask=mask, lengths=mask.sum(axis=1), y=y)


@dataclass
class TrainData:
    """What train() trains and validates on. The validation split is made here, once: the loop, the TF-IDF blend
    and (through TrainResult) the caller's parity check and evaluation all use these same rows."""

    encoder: TextEncoder
    train: Encoded
    val: Encoded
    val_texts: list[str]
    class_weights: np.ndarray | None  # per-class loss weights from the spec; None: all equal


def _prepare_data(spec: TrainingSpec, texts: Sequence[str], labels: Sequence[str], *, label_names: list[str],
                  saved: dict | None, base_model_dir: Path | None = None) -> TrainData:
    """Check the labels, hold out the validation split (stratified, seeded), fit the tokenizer on the training
    split (or take the checkpoint's) and encode both sides. Raises SpecDataMismatch for the spec's class weights."""
    class_of = {name: i for i, name in enumerate(label_names)}
    unknown = sorted({str(lab) for lab in labels if lab not in class_of})
    if unknown:
        raise ValueError(f"labels not in label_names: {unknown[:5]}")
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    y = np.array([class_of[lab] for lab in labels], dtype=np.int64)
    train_idx, val_idx = stratified_split(y, spec.validation_split, spec.seed)
    weights = class_weight_vector(spec.class_weights, label_names, y[train_idx])
    train_texts, val_texts = [texts[i] for i in train_idx], [texts[i] for i in val_idx]
    # The vocabulary comes from the training split only, so validation words unseen in training map to [UNK]
    # exactly as they would at serving time.
    if saved is None and spec.model.name == "encoder":  # the base model's own vocabulary
        from worker.ml.encoder import base_text_encoder

        encoder = base_text_encoder(base_model_dir, spec.tokenizer.max_length)
    elif saved is None:
        encoder = TextEncoder(fit_tokenizer(train_texts, spec.tokenizer), spec.tokenizer.max_length)
    else:  # the very vocabulary the checkpointed weights were trained with
        encoder = TextEncoder.from_json(saved["tokenizer"], spec.tokenizer.max_length)
    return TrainData(encoder=encoder, train=Encoded.of(encoder, train_texts, y[train_idx]),
                     val=Encoded.of(encoder, val_texts, y[val_idx]), val_texts=val_texts, class_weights=weights)


# -----------------------------------------------------------------------------
# model


def _autocast_for(device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """The autocast context the forward passes run under on `device`."""
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()

    def autocast() -> contextlib.AbstractContextManager:
        # bf16 keeps fp32's exponent range, so no loss scaling is needed; CPU stays in fp32.
        return torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()

    return autocast


# -----------------------------------------------------------------------------
# optimizer


def build_optimizer(params_model: nn.Module, spec: OptimizerSpec) -> torch.optim.Optimizer:
    """The optimizer named by spec, with weight decay on weight matrices only (not biases or norm scales)."""
    lr, eps = spec.lr, spec.eps
    # Layer-wise decay (encoder only: Howard & Ruder 2018, Clark et al. 2020): the top group trains at lr,
    # each one below at layer_decay times the group above it.
    layered = params_model.layer_groups() if hasattr(params_model, "layer_groups") else [
        list(params_model.parameters())]
    groups = []
    for depth, layer in enumerate(reversed(layered)):
        params = [p for p in layer if p.requires_grad]
        rate = lr * spec.layer_decay ** depth
        # nanoGPT's rule: decaying 1-D tensors (biases, BatchNorm/LayerNorm gains) only pulls them toward 0.
        groups += [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": spec.weight_decay, "lr": rate},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, "lr": rate},
        ]
    groups = [g for g in groups if g["params"]]
    match spec.name:
        case "sgd":
            return torch.optim.SGD(groups, lr=lr, momentum=0.0)
        case "momentum":
            return torch.optim.SGD(groups, lr=lr, momentum=spec.momentum)
        case "nesterov":
            return torch.optim.SGD(groups, lr=lr, momentum=spec.momentum, nesterov=True)
        # fused: one kernel per parameter instead of a dozen elementwise passes, by far the fastest Adam step on
        # our CPU (bench/README.md).
        case "adam":
            return torch.optim.Adam(groups, lr=lr, betas=spec.betas, eps=eps, fused=True)
        case "adamw":
            return torch.optim.AdamW(groups, lr=lr, betas=spec.betas, eps=eps, fused=True)
        case "rmsprop":
            return torch.optim.RMSprop(groups, lr=lr, momentum=spec.momentum, eps=eps)
        case "adagrad":
            return torch.optim.Adagrad(groups, lr=lr, eps=eps)
        case "adadelta":
            return torch.optim.Adadelta(groups, lr=lr, eps=eps)
    raise ValueError(f"unknown optimizer {spec.name!r}")


class Schedule:
    """One interface over per-batch, per-epoch and on-plateau schedulers: the loop calls both hooks."""

    def __init__(self, scheduler, *, per_batch: bool, on_val_loss: bool = False) -> None:
        self.scheduler = scheduler
        self.per_batch = per_batch
        self.on_val_loss = on_val_loss

    def step_batch(self) -> None:
        """Call after every optimizer step."""
        if self.per_batch:
            self.scheduler.step()

    def step_epoch(self, val_loss: float) -> None:
        """Call after every epoch's evaluation."""
        if self.on_val_loss:
            self.scheduler.step(val_loss)
        elif not self.per_batch:
            self.scheduler.step()


def _warmup_then(total_steps: int, warmup_ratio: float, min_ratio: float, decay: str) -> Callable[[int], float]:
    """LambdaLR factor: linear warm-up over warmup_ratio of the steps, then cosine or linear decay to min_ratio."""
    warmup = int(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)  # nanoGPT's warm-up: never exactly 0, reaches ~1 at the end
        progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
        shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if decay == "cosine" else 1.0 - progress
        return min_ratio + (1.0 - min_ratio) * shape

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, spec: SchedulerSpec, *, total_steps: int, steps_per_epoch: int
) -> Schedule:
    """The learning-rate schedule named by spec, behind step_batch() / step_epoch(val_loss)."""
    sched = torch.optim.lr_scheduler
    total_steps = max(total_steps, 1)
    match spec.name:
        case "constant":
            return Schedule(sched.LambdaLR(optimizer, lambda _: 1.0), per_batch=True)
        case "step":
            return Schedule(sched.StepLR(optimizer, step_size=spec.step_size, gamma=spec.gamma), per_batch=False)
        case "multistep":
            return Schedule(sched.MultiStepLR(optimizer, milestones=list(spec.milestones), gamma=spec.gamma),
                            per_batch=False)
        case "exponential":
            return Schedule(sched.ExponentialLR(optimizer, gamma=spec.gamma), per_batch=False)
        case "cosine" | "linear_warmup":
            decay = "cosine" if spec.name == "cosine" else "linear"
            factor = _warmup_then(total_steps, spec.warmup_ratio, spec.min_lr_ratio, decay)
            return Schedule(sched.LambdaLR(optimizer, factor), per_batch=True)
        case "onecycle":
            max_lr = [g["lr"] for g in optimizer.param_groups]
            # OneCycleLR raises if stepped past total_steps and divides by its phase lengths: keep it >= 2.
            return Schedule(sched.OneCycleLR(optimizer, max_lr=max_lr, total_steps=max(total_steps, 2)),
                            per_batch=True)
        case "plateau":
            plateau = sched.ReduceLROnPlateau(optimizer, mode="min", factor=spec.factor, patience=spec.patience)
            return Schedule(plateau, per_batch=False, on_val_loss=True)
    raise ValueError(f"unknown scheduler {spec.name!r}")


def _sparse_embeddings(model: nn.Module, spec: OptimizerSpec) -> list[nn.Embedding]:
    """The embedding tables to train with sparse gradients: all of them under plain SGD or Adagrad, else none.

    Without weight decay, SGD and Adagrad leave the rows a batch did not touch exactly as they are (a zero
    gradient adds nothing to Adagrad's sums either), so sparse gradients give the same updates while skipping
    the zero-fill and update of every row: with fastText's large bigram tables that is most of a step's time.
    Momentum and the Adam family do move untouched rows, so they keep dense gradients.
    """
    if spec.name not in ("sgd", "adagrad") or spec.weight_decay != 0.0:
        return []
    return [m for m in model.modules() if isinstance(m, nn.Embedding)]


def clip_grad_norm(parameters: Iterable[nn.Parameter], max_norm: float) -> None:
    """clip_grad_norm_ that also accepts sparse gradients (torch's raises on them)."""
    params = [p for p in parameters if p.grad is not None]
    if not any(p.grad.is_sparse for p in params):
        nn.utils.clip_grad_norm_(params, max_norm)
        return
    grads = []
    for p in params:
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()  # duplicate indices summed first, so the norm is the real one
            grads.append(p.grad._values())
        else:
            grads.append(p.grad)
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)  # torch's own formula
    for g in grads:
        g.mul_(scale)


# -----------------------------------------------------------------------------
# evaluate


def evaluate_logits(logits: np.ndarray, y: np.ndarray) -> dict:
    """accuracy, macro_f1 (over classes present in y or predictions) and mean cross-entropy."""
    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y)
    pred = logits.argmax(axis=1)
    z = logits - logits.max(axis=1, keepdims=True)
    log_proba = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return {
        "accuracy": float(accuracy_score(y, pred)),
        # zero_division=0: a class never predicted scores 0 quietly instead of warning on every epoch.
        "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
        "loss": float(-log_proba[np.arange(len(y)), y].mean()),
    }


@torch.no_grad()
def _predict_logits(
    model: nn.Module, ids: np.ndarray, mask: np.ndarray, lengths: np.ndarray, min_len: int,
    device: torch.device, autocast: Callable[[], contextlib.AbstractContextManager],
    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    after_batch: Callable[[], None] | None = None,
) -> np.ndarray:
    """Logits for every row, float32 [N, C], in eval mode; or whatever `forward` (e.g. model.features) returns
    per row instead of model(x, m). `after_batch` runs after each batch (cancel checks, progress)."""
    model.eval()
    forward = forward or model
    out = []
    # Shortest texts first, so each batch is padded only to about its own length; results go back in row order.
    by_length = np.argsort(lengths, kind="stable")
    step = getattr(model, "eval_batch", EVAL_BATCH)
    for start in range(0, len(ids), step):
        rows = by_length[start : start + step]
        x, m = _to_device(*_rows(ids, mask, lengths, rows, min_len), device)
        with autocast():
            out.append(forward(x, m).float().cpu())
        if after_batch is not None:
            after_batch()
    logits = torch.cat(out).numpy()
    restored = np.empty_like(logits)
    restored[by_length] = logits
    return restored


@torch.no_grad()
def predict_proba(
    model: nn.Module, encoder: TextEncoder, texts: Sequence[str], device: torch.device | str
) -> np.ndarray:
    """Softmax probabilities, float32 [N, C], in eval mode on `device`, EVAL_BATCH texts per forward pass.

    The model is put back on its own device and in its own train/eval mode afterwards.
    """
    device = torch.device(device)
    home, was_training = next(model.parameters()).device, model.training
    model.eval().to(device)
    try:
        out = [torch.zeros((0, model.head.out_features))]
        texts, step = list(texts), getattr(model, "eval_batch", EVAL_BATCH)
        for start in range(0, len(texts), step):
            x, m = _to_device(*encoder.encode(texts[start : start + step]), device)
            # fp32 on every device: these probabilities are reported, so no autocast rounding.
            out.append(torch.softmax(model(x, m).float(), dim=1).cpu())
    finally:
        model.to(home).train(was_training)
    return torch.cat(out).numpy()


# The blend weights tried when the spec leaves TfidfSpec.weight to the validation split.
BLEND_WEIGHTS = tuple(round(0.05 * i, 2) for i in range(1, 20))


def choose_blend_weight(network_proba: np.ndarray, tfidf_proba: np.ndarray, y: np.ndarray, metric: str) -> float:
    """The weight in BLEND_WEIGHTS whose blend scores best on (network_proba, tfidf_proba, y) by `metric`
    (accuracy, macro_f1 or loss); among equal scores the one nearest 0.5, then the smaller: on a small validation
    split many weights tie, and an even blend is the prior that needs no evidence."""
    def score(w: float) -> float:
        s = evaluate_logits(np.log((1.0 - w) * network_proba + w * tfidf_proba + 1e-30), y)[metric]
        return -s if metric == "loss" else s
    return max(BLEND_WEIGHTS, key=lambda w: (round(score(w), 12), -abs(w - 0.5), -w))


def _stack(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rows of a, then rows of b, right-padded with PAD_ID (0) to the wider of the two."""
    width = max(a.shape[1], b.shape[1])
    return np.concatenate([np.pad(m, ((0, 0), (0, width - m.shape[1]))) for m in (a, b)])


def blend_tfidf(network: nn.Module, spec: TfidfSpec, data: TrainData, *, num_classes: int,
                network_scores: dict, metric: str) -> tuple[nn.Module, dict, dict, np.ndarray | None]:
    """Fit the TF-IDF member on the training split, weigh it against `network` on the validation split (unless
    the spec fixes the weight) and, with spec.refit, fit it again on training and validation rows together:
    what is served. `metric` is the validation score that picked the network's epoch; it picks the weight too.

    Returns the blend (CPU, eval mode); its validation scores before any refit (the refit member has seen the
    validation rows, so only these are an honest estimate); each member's own validation scores, the weight and
    the fits' time, for the metrics; and, where the member was refit, the blend's validation probabilities before
    it, for the caller's evaluation (None otherwise: the served model's own are honest).
    """
    train, val = data.train, data.val
    fit_start = time.monotonic()
    first = fit_tfidf(spec, train.ids, train.mask, train.y, vocab_size=data.encoder.vocab_size,
                      num_classes=num_classes, class_weight=data.class_weights)
    with torch.no_grad():
        tfidf_logits = first.linear(torch.from_numpy(val.ids), torch.from_numpy(val.mask).float()).numpy()
    network_logits = _predict_logits(network, val.ids, val.mask, val.lengths, data.encoder.min_length,
                                     torch.device("cpu"), contextlib.nullcontext)
    network_proba, tfidf_proba = (softmax(np.asarray(z, dtype=np.float64), axis=1)
                                  for z in (network_logits, tfidf_logits))
    weight = spec.weight if spec.weight is not None else choose_blend_weight(network_proba, tfidf_proba, val.y,
                                                                             metric)
    val_proba = (1.0 - weight) * network_proba + weight * tfidf_proba
    scores = evaluate_logits(np.log(val_proba + 1e-30), val.y)
    member = first
    if spec.refit:
        member = fit_tfidf(spec, _stack(train.ids, val.ids), _stack(train.mask, val.mask),
                           np.concatenate([train.y, val.y]), vocab_size=data.encoder.vocab_size,
                           num_classes=num_classes, class_weight=data.class_weights, warm=first)
    alone = evaluate_logits(tfidf_logits, val.y)
    members = {"network_val_accuracy": network_scores["accuracy"], "network_val_macro_f1": network_scores["macro_f1"],
               "tfidf_val_accuracy": alone["accuracy"], "tfidf_val_macro_f1": alone["macro_f1"],
               "tfidf_weight": weight, "tfidf_refit": spec.refit,
               "tfidf_fit_seconds": round(time.monotonic() - fit_start, 3)}
    blend = Blend(network, member.linear, weight).eval()
    return blend, scores, members, (val_proba if spec.refit else None)


# -----------------------------------------------------------------------------
# loop


@dataclass
class LoopState:
    """The training loop's own variables: what a resumed run needs, besides the model, optimizer, scheduler,
    random streams and tokenizer, to continue exactly where its checkpoint left off.

    Saved to the checkpoint and restored from it field by field, under the fields' names (dataclasses.fields),
    so a new loop variable is one new field with a default here and nothing else.
    """

    history: list[dict] = field(default_factory=list)  # one row per finished epoch
    step: int = 0  # optimizer steps taken
    best_value: float | None = None  # the selection metric at the best epoch
    best_state: dict | None = None  # the model's weights at the best epoch, on the CPU
    best_epoch: int = 0
    best: dict = field(default_factory=dict)  # validation scores at the best epoch
    final: dict = field(default_factory=dict)  # validation scores at the last epoch
    epochs_since_best: int = 0
    stopped_early: bool = False
    done: bool = False  # stopped (last epoch, step budget or early stopping): a resumed run trains no more
    elapsed_seconds: float = 0.0  # time trained so far, so a resumed run's clock and ETA continue from it

    def save(self) -> dict[str, Any]:
        """The checkpoint entries for this state: one per field, under the field's name."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def restore(cls, saved: dict[str, Any]) -> LoopState:
        """The state in a checkpoint dict (its other entries, such as the model's weights, are not read)."""
        return cls(**{f.name: saved[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class Selection:
    """Which validation score picks the best epoch (spec.early_stopping.metric, else macro-F1) and when a run
    stops early: "improved" means better than the best so far by more than min_delta."""

    metric: str  # the history's name for it: val_macro_f1, val_accuracy or val_loss
    min_delta: float = 0.0
    patience: int | None = None  # None: no early stopping

    @classmethod
    def of(cls, spec: TrainingSpec) -> Selection:
        stopping = spec.early_stopping
        if stopping is None:
            return cls("val_macro_f1")
        return cls(stopping.metric, stopping.min_delta, stopping.patience)

    @property
    def key(self) -> str:
        return self.metric.removeprefix("val_")  # evaluate_logits' name for it

    def improved(self, scores: dict, state: LoopState) -> bool:
        """Whether this epoch's validation `scores` beat the best epoch in `state`."""
        sign = -1.0 if self.key == "loss" else 1.0  # loss: lower is better
        # Better by more than min_delta, or an exact tie of the metric at a lower validation loss: accuracy and
        # F1 move in steps, and once a small validation set is all right, the earliest such epoch is the
        # least trained one (a toy set kept epoch 1, at 0.5/0.5 scores, for that reason).
        value, best = scores[self.key], state.best_value
        tie = best is not None and value == best and scores["loss"] < state.best["loss"]
        return best is None or sign * (value - best) > self.min_delta or tie


def _rng_state(generator: torch.Generator, augment_rng: np.random.Generator, device: torch.device) -> dict:
    """Every random stream the loop draws from: shuffling, dropout (torch's global CPU/CUDA state), augmentation.
    numpy's bit-generator state holds 128-bit integers, so it travels as JSON text."""
    state = {"shuffle": generator.get_state(), "torch": torch.get_rng_state(),
             "augment": json.dumps(augment_rng.bit_generator.state)}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, generator: torch.Generator, augment_rng: np.random.Generator,
                   device: torch.device) -> None:
    generator.set_state(state["shuffle"])
    torch.set_rng_state(state["torch"])
    augment_rng.bit_generator.state = json.loads(state["augment"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class _Loop:
    """The epochs of one run: the model and what trains it, the data, and the LoopState they advance.

    A checkpoint is the LoopState's entries plus the tokenizer, the random streams and each part with a
    state_dict (`parts`), all under the keys they have always had, so older checkpoints still load.
    """

    def __init__(self, spec: TrainingSpec, data: TrainData, model: nn.Module, optimizer: torch.optim.Optimizer,
                 schedule: Schedule, *, device: torch.device, num_classes: int, total_steps: int, t0: float,
                 on_progress: Callable[[dict], None] | None, should_stop: Callable[[], bool] | None,
                 checkpoint: CheckpointStore | None) -> None:
        self.spec, self.data, self.model, self.optimizer, self.schedule = spec, data, model, optimizer, schedule
        self.device, self.num_classes, self.total_steps, self.t0 = device, num_classes, total_steps, t0
        self.on_progress, self.should_stop, self.checkpoint = on_progress, should_stop, checkpoint
        self.state = LoopState()
        self.selection = Selection.of(spec)
        self.autocast = _autocast_for(device)
        self.generator = torch.Generator().manual_seed(spec.seed)  # shuffling independent of model-init draws
        # Its own stream, so turning augmentation on changes neither the shuffling nor the initialisation.
        self.augment_rng = np.random.default_rng(spec.seed)
        self.y_train = torch.from_numpy(data.train.y)
        weights = data.class_weights
        self.class_weight = None if weights is None else torch.tensor(weights, dtype=torch.float32, device=device)
        self.sparse = _sparse_embeddings(model, spec.optimizer)
        # Adagrad builds sparse tensors from the gradient's own (valid) indices; saying so explicitly skips the
        # per-step invariant checks and torch's warning that they were skipped implicitly.
        self.sparse_checks = (torch.sparse.check_sparse_tensor_invariants(enable=False) if self.sparse
                              else contextlib.nullcontext())
        self.last_progress = self.last_cancel_check = time.monotonic()

    # checkpoint

    def parts(self) -> dict[str, Any]:
        """The objects that save their own state (state_dict / load_state_dict), by checkpoint key."""
        return {"model": self.model, "optimizer": self.optimizer, "scheduler": self.schedule.scheduler}

    def save(self) -> None:
        self.state.elapsed_seconds = time.monotonic() - self.t0
        self.checkpoint.save({
            "tokenizer": self.data.encoder.to_json(),
            **{key: part.state_dict() for key, part in self.parts().items()},
            "rng": _rng_state(self.generator, self.augment_rng, self.device),
            **self.state.save(),
        })

    def restore(self, saved: dict[str, Any]) -> None:
        """Continue from a checkpoint (its tokenizer is already the data's: see _prepare_data)."""
        for key, part in self.parts().items():
            part.load_state_dict(saved[key])
        _set_rng_state(saved["rng"], self.generator, self.augment_rng, self.device)
        self.state = LoopState.restore(saved)
        self.t0 -= self.state.elapsed_seconds

    # linear probe

    @torch.no_grad()
    def probe_head(self) -> None:
        """Start an encoder's new head from the logistic regression fit on the frozen model's pooled features of
        the training rows (LP-FT, Kumar et al. 2022): a random head's large early gradients would otherwise run
        through the pretrained layers while the head is still wrong. The features come in eval mode (no
        dropout, no random draws), so shuffling and everything after is as with a random head."""
        model, train = self.model, self.data.train

        def after_batch() -> None:
            if self.progress_due() and self.on_progress is not None:
                self.on_progress({"stage": "probing", "epoch": 0, "total_epochs": self.spec.epochs, "step": 0,
                                  "total_steps": self.total_steps, "percent": 0.0})

        features = _predict_logits(model, train.ids, train.mask, train.lengths, self.data.encoder.min_length,
                                   self.device, self.autocast, forward=model.features, after_batch=after_batch)
        coef, bias = fit_logistic_regression(features, train.y, num_classes=self.num_classes, c=PROBE_C,
                                             class_weight=self.data.class_weights)
        model.head.weight.copy_(torch.from_numpy(coef).to(model.head.weight))
        model.head.bias.copy_(torch.from_numpy(bias).to(model.head.bias))
        model.train()

    # progress and stopping

    def report(self, epoch: int) -> None:
        if self.on_progress is None:
            return
        step, total_steps = self.state.step, self.total_steps
        elapsed = time.monotonic() - self.t0
        self.on_progress({
            "stage": "training", "epoch": epoch, "total_epochs": self.spec.epochs,
            "step": step, "total_steps": total_steps,
            "percent": round(100.0 * step / total_steps, 2),
            "eta_seconds": round(elapsed / step * (total_steps - step), 1) if step else None,
            "history": list(self.state.history),
        })

    def progress_due(self) -> bool:
        """Check for a stop request at most every CANCEL_CHECK_EVERY_S (raises TrainingCancelled); True at most
        every PROGRESS_EVERY_S, when it is time to report progress."""
        now = time.monotonic()
        if now - self.last_cancel_check >= CANCEL_CHECK_EVERY_S:
            self.last_cancel_check = now
            self.check_stop()
        if now - self.last_progress >= PROGRESS_EVERY_S:
            self.last_progress = now
            return True
        return False

    def check_stop(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise TrainingCancelled("training was cancelled")

    # epochs

    def run(self) -> None:
        """Train until the last epoch, the step budget or early stopping; a restored run continues after its last
        checkpointed epoch, and one that had already stopped goes straight to the end."""
        first_epoch = self.spec.epochs + 1 if self.state.done else len(self.state.history) + 1
        self.last_progress = self.last_cancel_check = time.monotonic()
        self.check_stop()
        for table in self.sparse:
            table.sparse = True
        try:
            for epoch in range(first_epoch, self.spec.epochs + 1):
                started = time.monotonic()
                trained = self.train_epoch(epoch)
                self.end_epoch(epoch, started, trained)
                if self.state.done:
                    break
        finally:
            for table in self.sparse:
                table.sparse = False  # inference and export want the plain embedding op

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the shuffled training rows (or what the step budget leaves of it): the epoch's
        train_loss, train_accuracy and the learning rate of its last step."""
        spec, train = self.spec, self.data.train
        self.model.train()
        # Sum of per-batch losses kept on the device: reading it every step would sync the GPU every step.
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen, lr = 0, self.optimizer.param_groups[0]["lr"]
        order = torch.randperm(len(train.y), generator=self.generator)
        for rows in epoch_batches(order, train.lengths, spec.batch_size, merge_single=spec.model.batch_norm,
                                  bucket=spec.bucket_by_length, generator=self.generator):
            loss, logits, target, lr = self.train_step(rows)
            loss_sum += loss.detach() * len(rows)
            # Accuracy on the (augmented, dropout-on) training batches as trained: cheap, and enough to
            # show over- or under-fitting next to validation accuracy on the learning curves.
            correct += (logits.detach().argmax(dim=-1) == target).sum()
            seen += len(rows)
            self.state.step += 1

            if self.progress_due():
                # the .item() this check needs is the progress report's sync point anyway
                check_divergence(loss_sum.item() / seen, self.num_classes,
                                 f"at step {self.state.step} (epoch {epoch})")
                self.report(epoch)
            if self.state.step >= self.total_steps:
                break
        train_loss = loss_sum.item() / max(seen, 1)
        check_divergence(train_loss, self.num_classes, f"in epoch {epoch}")
        return {"train_loss": train_loss, "train_accuracy": correct.item() / max(seen, 1), "lr": lr}

    def train_step(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        """One optimizer step on training rows `rows`: (loss, logits, target, the learning rate it used)."""
        spec, train, model = self.spec, self.data.train, self.model
        x_np, m_np = _rows(train.ids, train.mask, train.lengths, rows.numpy(), self.data.encoder.min_length)
        if spec.augment is not None:
            x_np, m_np = augment_batch(x_np, m_np, spec.augment, self.augment_rng)
        x, m = _to_device(x_np, m_np, self.device)
        target = self.y_train[rows].to(self.device, non_blocking=True)
        with self.autocast():
            logits = model(x, m)
        loss = F.cross_entropy(logits.float(), target, weight=self.class_weight,
                               label_smoothing=spec.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if spec.grad_clip is not None:
            clip_grad_norm(model.parameters(), spec.grad_clip)
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses, recorded per epoch
        with self.sparse_checks:
            self.optimizer.step()
        if spec.model.max_norm is not None:
            with torch.no_grad():  # Kim (2014): rescale any output weight row longer than max_norm
                model.head.weight.copy_(torch.renorm(model.head.weight, 2, 0, spec.model.max_norm))
        self.schedule.step_batch()
        return loss, logits, target, lr

    def end_epoch(self, epoch: int, started: float, trained: dict[str, float]) -> None:
        """Validate, record the epoch, keep the best weights, decide whether to stop, checkpoint, report."""
        state, val = self.state, self.data.val
        scores = evaluate_logits(_predict_logits(self.model, val.ids, val.mask, val.lengths,
                                                 self.data.encoder.min_length, self.device, self.autocast), val.y)
        if not math.isfinite(scores["loss"]):
            raise TrainingDiverged(f"validation loss is {scores['loss']} in epoch {epoch}")
        self.schedule.step_epoch(scores["loss"])
        state.final = scores
        state.history.append({
            "epoch": epoch, "train_loss": trained["train_loss"], "train_accuracy": trained["train_accuracy"],
            "val_loss": scores["loss"], "val_accuracy": scores["accuracy"], "val_macro_f1": scores["macro_f1"],
            "lr": trained["lr"], "seconds": round(time.monotonic() - started, 3),
        })
        if self.selection.improved(scores, state):
            state.best_value, state.best_epoch, state.epochs_since_best = scores[self.selection.key], epoch, 0
            state.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
            state.best = dict(scores)
        else:
            state.epochs_since_best += 1
        budget_spent = state.step >= self.total_steps
        patience = self.selection.patience
        state.stopped_early = not budget_spent and patience is not None and state.epochs_since_best > patience
        state.done = budget_spent or state.stopped_early or epoch == self.spec.epochs
        if self.checkpoint is not None:
            # Saved before progress is reported, so the history the job shows is never ahead of what a
            # resumed run would restore.
            self.save()
        self.last_progress = time.monotonic()
        self.report(epoch)
        self.check_stop()


# -----------------------------------------------------------------------------
# train


def train(
    spec: TrainingSpec,
    texts: Sequence[str],
    labels: Sequence[str],
    *,
    label_names: list[str],
    device: torch.device,
    on_progress: Callable[[dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpoint: CheckpointStore | None = None,
    base_model_dir: Path | None = None,
) -> TrainResult:
    """Train spec.model on (texts, labels); return the best epoch's model by the selection metric.

    model.name encoder fine-tunes the base model in `base_model_dir` (its tokenizer too).
    The selection metric is spec.early_stopping.metric, else validation macro-F1. Raises SpecDataMismatch when
    the spec names something the data lacks, before any training. With a `checkpoint` store, the state is
    saved after every epoch, and a run that finds a checkpoint there continues from it. The result carries the
    validation rows it was selected on, for the caller's parity check and evaluation.
    """
    t0 = time.monotonic()
    if spec.model.name != "encoder":
        # The API resolves the kind and its defaults when it accepts a job (core/limits.py), so for its specs this
        # changes nothing; a caller that did not (the benchmarks) gets the same, from the same texts.
        spec = with_tokenizer_kind(spec, resolve_kind(spec.tokenizer.kind, texts))
    saved = checkpoint.load() if checkpoint is not None else None
    random.seed(spec.seed)
    np.random.seed(spec.seed)
    torch.manual_seed(spec.seed)

    # data
    data = _prepare_data(spec, texts, labels, label_names=label_names, saved=saved, base_model_dir=base_model_dir)

    # model
    model = build_model(spec.model, vocab_size=data.encoder.vocab_size, num_classes=len(label_names),
                        base_model_dir=base_model_dir).to(device)

    # optimizer
    steps_per_epoch = len(_batches(torch.arange(len(data.train.y)), spec.batch_size,
                                   merge_single=spec.model.batch_norm))
    total_steps = spec.epochs * steps_per_epoch
    if spec.max_steps is not None:
        total_steps = min(total_steps, spec.max_steps)
    optimizer = build_optimizer(model, spec.optimizer)
    schedule = build_scheduler(optimizer, spec.scheduler, total_steps=total_steps, steps_per_epoch=steps_per_epoch)

    # loop
    loop = _Loop(spec, data, model, optimizer, schedule, device=device, num_classes=len(label_names),
                 total_steps=total_steps, t0=t0, on_progress=on_progress, should_stop=should_stop,
                 checkpoint=checkpoint)
    if saved is not None:
        loop.restore(saved)  # the checkpoint has the probed head
    elif spec.model.name == "encoder" and spec.model.head_init == "probe":
        loop.probe_head()
    resumed_from_epoch = len(loop.state.history) if saved is not None else None
    loop.run()
    state = loop.state

    # evaluate
    model.load_state_dict(state.best_state)
    model, best, members, val_proba = model.cpu().eval(), state.best, {}, None
    if spec.model.tfidf is not None:
        # Fit after the loop (a resumed run fits it too): the network's best epoch is picked on its own.
        model, best, members, val_proba = blend_tfidf(
            model, spec.model.tfidf, data, num_classes=len(label_names), network_scores=state.best,
            metric=loop.selection.metric.removeprefix("val_"))
    prov = collect_provenance(spec, device)
    metrics = {
        **best,
        **members,
        "best_epoch": state.best_epoch, "selection_metric": loop.selection.metric,
        "stopped_early": state.stopped_early, "final_accuracy": state.final["accuracy"],
        "final_macro_f1": state.final["macro_f1"], "final_loss": state.final["loss"],
        "train_seconds": round(time.monotonic() - loop.t0, 3),
        "epochs_run": len(state.history), "steps": state.step, "resumed_from_epoch": resumed_from_epoch,
        "train_examples": len(data.train.y), "val_examples": len(data.val.y),
        "provenance": prov,
    }
    return TrainResult(model=model, encoder=data.encoder, history=state.history, metrics=metrics,
                       device=str(device), provenance=prov, val_texts=data.val_texts, val_y=data.val.y.tolist(),
                       val_proba=val_proba)
