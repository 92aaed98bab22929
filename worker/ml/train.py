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
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version

import numpy as np
import torch

# torch's optimizers import torch._dynamo on first use (1.5 s). Imported here, that cost falls at import time,
# which the Celery parent pays once for all jobs (worker/celery_app.py), not inside a job's train().
import torch._dynamo  # noqa: F401
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score
from torch import nn

from core.ml.tokenizer import PAD_ID, UNK_ID, TextEncoder, fit_tokenizer
from core.spec import AugmentSpec, OptimizerSpec, SchedulerSpec, TrainingSpec
from worker.ml.checkpoint import CheckpointStore
from worker.ml.model import Blend, build_model
from worker.ml.tfidf import fit_tfidf

# Least time between step-level on_progress / should_stop calls: the callbacks may touch the database.
PROGRESS_EVERY_S = 2.0
CANCEL_CHECK_EVERY_S = 1.0
# Batch size for validation passes: no gradients are kept, so larger batches cost little memory.
EVAL_BATCH = 512
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
# blown up by a learning rate of 10 without clipping reached 1e7 in their first epoch, and SGD's models would
# otherwise register at chance accuracy.
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
    short, varied texts are mostly padding (3.4x the real tokens on SST-2 GLUE's phrases, 2x on TREC). The
    batch count is the same either way.
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


# -----------------------------------------------------------------------------
# optimizer


def build_optimizer(params_model: nn.Module, spec: OptimizerSpec) -> torch.optim.Optimizer:
    """The optimizer named by spec, with weight decay on weight matrices only (not biases or norm scales)."""
    params = [p for p in params_model.parameters() if p.requires_grad]
    # nanoGPT's rule: decaying 1-D tensors (biases, BatchNorm gains) only pulls them toward 0 for no gain.
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": spec.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    lr, eps = spec.lr, spec.eps
    match spec.name:
        case "sgd":
            return torch.optim.SGD(groups, lr=lr, momentum=0.0)
        case "momentum":
            return torch.optim.SGD(groups, lr=lr, momentum=spec.momentum)
        case "nesterov":
            return torch.optim.SGD(groups, lr=lr, momentum=spec.momentum, nesterov=True)
        # fused: one kernel per parameter instead of a dozen elementwise passes. On our 2-core CPU the Adam step
        # over a 13k x 128 embedding took 8.3 ms single-tensor, 3.1 ms foreach and 0.9 ms fused, a fifth of
        # each SST-2 epoch's time before.
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
) -> np.ndarray:
    """Logits for every row, float32 [N, C], in eval mode."""
    model.eval()
    out = []
    # Shortest texts first, so each batch is padded only to about its own length; results go back in row order.
    by_length = np.argsort(lengths, kind="stable")
    for start in range(0, len(ids), EVAL_BATCH):
        rows = by_length[start : start + EVAL_BATCH]
        x, m = _to_device(*_rows(ids, mask, lengths, rows, min_len), device)
        with autocast():
            out.append(model(x, m).float().cpu())
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
        texts = list(texts)
        for start in range(0, len(texts), EVAL_BATCH):
            x, m = _to_device(*encoder.encode(texts[start : start + EVAL_BATCH]), device)
            # fp32 on every device: these probabilities are reported, so no autocast rounding.
            out.append(torch.softmax(model(x, m).float(), dim=1).cpu())
    finally:
        model.to(home).train(was_training)
    return torch.cat(out).numpy()


# -----------------------------------------------------------------------------
# loop


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
) -> TrainResult:
    """Train spec.model on (texts, labels); return the best epoch's model by the selection metric.

    The selection metric is spec.early_stopping.metric, else validation macro-F1. Raises SpecDataMismatch when
    the spec names something the data lacks, before any training. With a `checkpoint` store, the state is
    saved after every epoch, and a run that finds a checkpoint there continues from it.
    """
    t0 = time.monotonic()
    resumed = checkpoint.load() if checkpoint is not None else None
    random.seed(spec.seed)
    np.random.seed(spec.seed)
    torch.manual_seed(spec.seed)

    # data
    class_of = {name: i for i, name in enumerate(label_names)}
    unknown = sorted({str(lab) for lab in labels if lab not in class_of})
    if unknown:
        raise ValueError(f"labels not in label_names: {unknown[:5]}")
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    y = np.array([class_of[lab] for lab in labels], dtype=np.int64)
    train_idx, val_idx = stratified_split(y, spec.validation_split, spec.seed)
    weights = class_weight_vector(spec.class_weights, label_names, y[train_idx])
    train_texts = [texts[i] for i in train_idx]
    # The vocabulary comes from the training split only, so validation words unseen in training map to [UNK]
    # exactly as they would at serving time.
    if resumed is None:
        encoder = TextEncoder(fit_tokenizer(train_texts, spec.tokenizer), spec.tokenizer.max_length)
    else:  # the very vocabulary the checkpointed weights were trained with
        encoder = TextEncoder.from_json(resumed["tokenizer"], spec.tokenizer.max_length)
    tr_ids, tr_mask = encoder.encode(train_texts)
    va_ids, va_mask = encoder.encode([texts[i] for i in val_idx])
    tr_len, va_len = tr_mask.sum(axis=1), va_mask.sum(axis=1)
    y_train, y_val = torch.from_numpy(y[train_idx]), y[val_idx]
    min_len = encoder.min_length
    # Its own stream, so turning augmentation on changes neither the shuffling nor the initialisation.
    augment_rng = np.random.default_rng(spec.seed)

    # model
    model = build_model(spec.model, vocab_size=encoder.vocab_size, num_classes=len(label_names)).to(device)
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()

    def autocast() -> contextlib.AbstractContextManager:
        # bf16 keeps fp32's exponent range, so no loss scaling is needed; CPU stays in fp32.
        return torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()

    # optimizer
    merge_single = spec.model.batch_norm
    steps_per_epoch = len(_batches(torch.arange(len(train_idx)), spec.batch_size, merge_single=merge_single))
    total_steps = spec.epochs * steps_per_epoch
    if spec.max_steps is not None:
        total_steps = min(total_steps, spec.max_steps)
    optimizer = build_optimizer(model, spec.optimizer)
    schedule = build_scheduler(optimizer, spec.scheduler, total_steps=total_steps, steps_per_epoch=steps_per_epoch)
    generator = torch.Generator().manual_seed(spec.seed)  # shuffling independent of model-init draws
    class_weight = None if weights is None else torch.tensor(weights, dtype=torch.float32, device=device)
    sparse = _sparse_embeddings(model, spec.optimizer)
    # Adagrad builds sparse tensors from the gradient's own (valid) indices; saying so explicitly skips the
    # per-step invariant checks and torch's warning that they were skipped implicitly.
    sparse_checks = (torch.sparse.check_sparse_tensor_invariants(enable=False) if sparse
                     else contextlib.nullcontext())

    # selection and early stopping: "improved" means better than the best so far by more than min_delta
    stopping = spec.early_stopping
    select = stopping.metric if stopping is not None else "val_macro_f1"
    key = select.removeprefix("val_")  # evaluate_logits' name for it
    sign = -1.0 if key == "loss" else 1.0  # loss: lower is better
    min_delta = stopping.min_delta if stopping is not None else 0.0

    # loop
    history: list[dict] = []
    best_value, best_state, best_epoch, best, final = None, None, 0, {}, {}
    epochs_since_best, stopped_early = 0, False
    step = 0
    first_epoch = 1
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        schedule.scheduler.load_state_dict(resumed["scheduler"])
        _set_rng_state(resumed["rng"], generator, augment_rng, device)
        history, step = list(resumed["history"]), int(resumed["step"])
        best_value, best_state, best_epoch = resumed["best_value"], resumed["best_state"], int(resumed["best_epoch"])
        best, final = dict(resumed["best"]), dict(resumed["final"])
        epochs_since_best, stopped_early = int(resumed["epochs_since_best"]), bool(resumed["stopped_early"])
        # A run that had already stopped (last epoch, step budget, early stopping) goes straight to the end.
        first_epoch = spec.epochs + 1 if resumed["done"] else len(history) + 1
        t0 -= float(resumed["elapsed_seconds"])
    resumed_from_epoch = len(history) if resumed is not None else None
    last_progress = last_cancel_check = time.monotonic()

    def progress(epoch: int) -> None:
        if on_progress is None:
            return
        elapsed = time.monotonic() - t0
        on_progress({
            "stage": "training", "epoch": epoch, "total_epochs": spec.epochs,
            "step": step, "total_steps": total_steps,
            "percent": round(100.0 * step / total_steps, 2),
            "eta_seconds": round(elapsed / step * (total_steps - step), 1) if step else None,
            "history": list(history),
        })

    def check_stop() -> None:
        if should_stop is not None and should_stop():
            raise TrainingCancelled("training was cancelled")

    check_stop()
    for table in sparse:
        table.sparse = True
    try:
        for epoch in range(first_epoch, spec.epochs + 1):
            epoch_start = time.monotonic()
            model.train()
            # Sum of per-batch losses kept on the device: reading it every step would sync the GPU every step.
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            seen = 0
            order = torch.randperm(len(train_idx), generator=generator)
            for rows in epoch_batches(order, tr_len, spec.batch_size, merge_single=merge_single,
                                      bucket=spec.bucket_by_length, generator=generator):
                x_np, m_np = _rows(tr_ids, tr_mask, tr_len, rows.numpy(), min_len)
                if spec.augment is not None:
                    x_np, m_np = augment_batch(x_np, m_np, spec.augment, augment_rng)
                x, m = _to_device(x_np, m_np, device)
                target = y_train[rows].to(device, non_blocking=True)
                with autocast():
                    logits = model(x, m)
                loss = F.cross_entropy(logits.float(), target, weight=class_weight,
                                       label_smoothing=spec.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if spec.grad_clip is not None:
                    clip_grad_norm(model.parameters(), spec.grad_clip)
                lr = optimizer.param_groups[0]["lr"]  # the rate this step uses, recorded per epoch below
                with sparse_checks:
                    optimizer.step()
                if spec.model.max_norm is not None:
                    with torch.no_grad():  # Kim (2014): rescale any output weight row longer than max_norm
                        model.head.weight.copy_(torch.renorm(model.head.weight, 2, 0, spec.model.max_norm))
                schedule.step_batch()
                loss_sum += loss.detach() * len(rows)
                # Accuracy on the (augmented, dropout-on) training batches as trained: cheap, and enough to
                # show over- or under-fitting next to validation accuracy on the learning curves.
                correct += (logits.detach().argmax(dim=-1) == target).sum()
                seen += len(rows)
                step += 1

                now = time.monotonic()
                if now - last_cancel_check >= CANCEL_CHECK_EVERY_S:
                    last_cancel_check = now
                    check_stop()
                if now - last_progress >= PROGRESS_EVERY_S:
                    last_progress = now
                    # the .item() this check needs is the progress report's sync point anyway
                    check_divergence(loss_sum.item() / seen, len(label_names), f"at step {step} (epoch {epoch})")
                    progress(epoch)
                if step >= total_steps:
                    break

            train_loss = loss_sum.item() / max(seen, 1)
            check_divergence(train_loss, len(label_names), f"in epoch {epoch}")

            # evaluate
            val_logits = _predict_logits(model, va_ids, va_mask, va_len, min_len, device, autocast)
            final = evaluate_logits(val_logits, y_val)
            if not math.isfinite(final["loss"]):
                raise TrainingDiverged(f"validation loss is {final['loss']} in epoch {epoch}")
            schedule.step_epoch(final["loss"])
            history.append({
                "epoch": epoch, "train_loss": train_loss, "train_accuracy": correct.item() / max(seen, 1),
                "val_loss": final["loss"],
                "val_accuracy": final["accuracy"], "val_macro_f1": final["macro_f1"],
                "lr": lr, "seconds": round(time.monotonic() - epoch_start, 3),
            })
            # Better by more than min_delta, or an exact tie of the metric at a lower validation loss: accuracy and
            # F1 move in steps, and once a small validation set is all right, the earliest such epoch is the
            # least trained one (a toy set kept epoch 1, at 0.5/0.5 scores, for that reason).
            tie = best_value is not None and final[key] == best_value and final["loss"] < best["loss"]
            if best_value is None or sign * (final[key] - best_value) > min_delta or tie:
                best_value, best_epoch, epochs_since_best = final[key], epoch, 0
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                best = dict(final)
            else:
                epochs_since_best += 1
            budget_spent = step >= total_steps
            stopped_early = not budget_spent and stopping is not None and epochs_since_best > stopping.patience
            done = budget_spent or stopped_early or epoch == spec.epochs
            if checkpoint is not None:
                # Saved before progress is reported, so the history the job shows is never ahead of what a
                # resumed run would restore.
                checkpoint.save({
                    "tokenizer": encoder.to_json(), "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), "scheduler": schedule.scheduler.state_dict(),
                    "rng": _rng_state(generator, augment_rng, device), "history": history, "step": step,
                    "best_value": best_value, "best_state": best_state, "best_epoch": best_epoch, "best": best,
                    "final": final, "epochs_since_best": epochs_since_best, "stopped_early": stopped_early,
                    "done": done, "elapsed_seconds": time.monotonic() - t0,
                })
            last_progress = time.monotonic()
            progress(epoch)
            check_stop()
            if done:
                break
    finally:
        for table in sparse:
            table.sparse = False  # inference and export want the plain embedding op

    model.load_state_dict(best_state)
    model = model.cpu().eval()
    members = {}
    if spec.model.tfidf is not None:
        # Fit after the loop (a resumed run fits it too): the network's best epoch is picked on its own.
        fit_start = time.monotonic()
        linear = fit_tfidf(spec.model.tfidf, tr_ids, tr_mask, y[train_idx], vocab_size=encoder.vocab_size,
                           num_classes=len(label_names), class_weight=weights)
        fit_seconds = round(time.monotonic() - fit_start, 3)
        with torch.no_grad():
            alone = evaluate_logits(linear(torch.from_numpy(va_ids), torch.from_numpy(va_mask).float()).numpy(),
                                    y_val)
        members = {"network_val_accuracy": best["accuracy"], "network_val_macro_f1": best["macro_f1"],
                   "tfidf_val_accuracy": alone["accuracy"], "tfidf_val_macro_f1": alone["macro_f1"],
                   "tfidf_fit_seconds": fit_seconds}
        model = Blend(model, linear, spec.model.tfidf.weight).eval()
        # What is exported and served is the blend, so its validation scores are the model's.
        best = evaluate_logits(_predict_logits(model, va_ids, va_mask, va_len, min_len, torch.device("cpu"),
                                               contextlib.nullcontext), y_val)
    prov = collect_provenance(spec, device)
    metrics = {
        **best,
        **members,
        "best_epoch": best_epoch, "selection_metric": select, "stopped_early": stopped_early,
        "final_accuracy": final["accuracy"], "final_macro_f1": final["macro_f1"], "final_loss": final["loss"],
        "train_seconds": round(time.monotonic() - t0, 3),
        "epochs_run": len(history), "steps": step, "resumed_from_epoch": resumed_from_epoch,
        "train_examples": len(train_idx), "val_examples": len(val_idx),
        "provenance": prov,
    }
    return TrainResult(model=model, encoder=encoder, history=history, metrics=metrics, device=str(device),
                       provenance=prov)
