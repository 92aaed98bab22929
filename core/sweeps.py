"""Sweeps: many training jobs from one request, to compare optimization methods (pure logic, no database).

A sweep is a base spec plus either a grid (every combination of the listed values) or a random search
(`samples` draws from ranges, log-uniform where asked). Each combination is a child: an ordinary training job.
This module holds the request schema, the expansion into child specs, the successive-halving rule that stops
children that fall clearly behind, and the leaderboard. core/db/sweeps.py stores and dispatches them.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, Field, ValidationError, model_validator

from core.errors import detail, validation_details
from core.spec import ALIAS_PATTERN, EpochRecord, JobError, JobStatus, Name, TrainingSpec, _Strict

SweepMetric = Literal["val_macro_f1", "val_accuracy", "val_loss"]
# Spec fields a sweep may not vary: they say what the sweep is about, not how to train.
FIXED_FIELDS = frozenset({"dataset_id", "test_dataset_id", "name"})
MAX_VALUES_PER_KEY = 100

ParamValue = Any  # JSON: a number, string, bool, null, list or object, checked by TrainingSpec per child


class Range(_Strict):
    """A continuous (or integer) range for random search."""

    low: float = Field(ge=-1e12, le=1e12, allow_inf_nan=False)
    high: float = Field(ge=-1e12, le=1e12, allow_inf_nan=False)
    log: bool = Field(False, description="Draw uniformly in log space (learning rates, weight decay).")
    integer: bool = Field(False, description="Round to whole numbers (epochs, sizes).")

    @model_validator(mode="after")
    def _check(self) -> Range:
        if not self.low < self.high:
            raise ValueError("low must be below high")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


class Pruning(_Strict):
    """Asynchronous successive halving (ASHA, Li et al. 2020): at each milestone epoch a child continues only if
    its best metric so far is in the top `keep_fraction` of every child that has reached that epoch."""

    milestones: tuple[Annotated[int, Field(ge=1, le=1_000)], ...] = Field(
        min_length=1, max_length=16, description="Epochs (increasing) at which children are compared.")
    keep_fraction: float = Field(0.5, gt=0.0, lt=1.0, description="Share of children kept at each milestone.")
    min_peers: int = Field(2, ge=1, le=1_000,
                           description="Children that must have reached a milestone before it stops anyone.")

    @model_validator(mode="after")
    def _increasing(self) -> Pruning:
        if any(a >= b for a, b in zip(self.milestones, self.milestones[1:])):
            raise ValueError("milestones must be strictly increasing")
        return self


class SweepCreate(_Strict):
    """`POST /v1/sweeps`: a base spec and a grid or a random search over spec fields named by dotted paths."""

    dataset_id: UUID = Field(description="The dataset every child trains on.")
    name: Name | None = Field(None, description="Names the sweep; children's models get it too (versions 1, 2, ...).")
    base: dict[str, Any] = Field(default_factory=dict,
                                 description="The training spec every child starts from (without dataset_id).")
    grid: dict[str, Annotated[list[ParamValue], Field(min_length=1, max_length=MAX_VALUES_PER_KEY)]] | None = Field(
        None, description='Every combination: {"optimizer.name": ["sgd", "adam"], "optimizer.lr": [0.1, 0.01]}.')
    space: dict[str, Range | Annotated[list[ParamValue], Field(min_length=1, max_length=MAX_VALUES_PER_KEY)]] | None \
        = Field(None, description='Random search: {"optimizer.lr": {"low": 1e-4, "high": 0.1, "log": true}, '
                                  '"optimizer.name": ["adam", "sgd"]} (a list is a uniform choice).')
    samples: int | None = Field(None, ge=1, le=10_000, description="Random search: how many children to draw.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seeds the random search's draws (not the children's).")
    metric: SweepMetric = Field("val_macro_f1", description="What ranks the children (val_loss: lower is better).")
    max_parallel: int = Field(2, ge=1, le=256, description="Children training at the same time, at most.")
    pruning: Pruning | None = Field(None, description="Stop children clearly behind at milestone epochs; null: off.")

    @model_validator(mode="after")
    def _one_search(self) -> SweepCreate:
        if (self.grid is None) == (self.space is None):
            raise ValueError("give either grid or space (with samples)")
        if self.space is not None and self.samples is None:
            raise ValueError("a random search (space) needs samples")
        if self.grid is not None and self.samples is not None:
            raise ValueError("samples goes with space, not grid")
        if self.grid == {} or self.space == {}:
            raise ValueError("grid and space need at least one key")
        if "dataset_id" in self.base:
            raise ValueError("base must not name dataset_id; the sweep's dataset_id applies to every child")
        return self

    @property
    def search(self) -> str:
        return "grid" if self.grid is not None else "random"

    def size(self) -> int:
        """Children this request asks for (before duplicates are merged)."""
        if self.grid is not None:
            return math.prod(len(values) for values in self.grid.values())
        return self.samples or 0


class SweepPromote(_Strict):
    """`POST /v1/sweeps/{id}/promote`: which alias to point at the best child's model."""

    alias: str = Field(pattern=ALIAS_PATTERN, description="Alias to move (created if new), e.g. prod.")


class SweepError(ValueError):
    """A sweep request that cannot run; `details` use the API's error-detail shape."""

    def __init__(self, message: str, details: list[dict[str, Any]]):
        super().__init__(message)
        self.message, self.details = message, details


def _fields_of(model: type[BaseModel], path: Sequence[str]) -> bool:
    """True when `path` names a field of the spec (or a nested section's field)."""
    fields = model.model_fields
    if not path or path[0] not in fields:
        return False
    if len(path) == 1:
        return True
    annotation = fields[path[0]].annotation
    # Optional sections (early_stopping, augment) are `X | None`: look inside the union.
    candidates = getattr(annotation, "__args__", (annotation,))
    return any(isinstance(c, type) and issubclass(c, BaseModel) and _fields_of(c, path[1:]) for c in candidates)


def check_keys(keys: Iterable[str], where: str) -> None:
    """Every key must be a spec field other than the fixed ones (422 naming each bad key)."""
    bad = []
    for key in keys:
        path = key.split(".")
        if path[0] in FIXED_FIELDS:
            bad.append(detail([where, key], f"{path[0]} is fixed for a whole sweep", "fixed_field"))
        elif not _fields_of(TrainingSpec, path):
            bad.append(detail([where, key], "not a field of the training spec", "unknown_field"))
    if bad:
        raise SweepError(f"{where} names fields a sweep cannot vary: {[d['loc'][1] for d in bad]}", bad)


def set_path(spec: dict[str, Any], key: str, value: Any) -> None:
    """spec["optimizer"]["lr"] = value for key "optimizer.lr", creating sections as needed."""
    *parents, leaf = key.split(".")
    node = spec
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[leaf] = value


def draw(space: dict[str, Range | list[Any]], samples: int, seed: int) -> list[dict[str, Any]]:
    """`samples` parameter sets drawn from `space` (reproducible for a seed; keys in the order given)."""
    rng = random.Random(seed)
    out = []
    for _ in range(samples):
        params: dict[str, Any] = {}
        for key, dist in space.items():
            if isinstance(dist, list):
                params[key] = rng.choice(dist)
                continue
            if dist.log:
                value = math.exp(rng.uniform(math.log(dist.low), math.log(dist.high)))
            else:
                value = rng.uniform(dist.low, dist.high)
            # Integers: round; floats: 4 significant digits, so the leaderboard reads 0.00316 not 0.0031622776.
            params[key] = int(round(value)) if dist.integer else float(f"{value:.4g}")
        out.append(params)
    return out


def combinations(request: SweepCreate) -> list[dict[str, Any]]:
    """The parameter set of every child, in order: the grid's product (last key fastest), or the draws."""
    if request.grid is not None:
        keys = list(request.grid)
        return [dict(zip(keys, values)) for values in itertools.product(*(request.grid[k] for k in keys))]
    return draw(request.space or {}, request.samples or 0, request.seed)


def _describe(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in params.items())


def child_specs(request: SweepCreate) -> list[tuple[dict[str, Any], TrainingSpec]]:
    """[(params, validated spec)] for every child; SweepError (naming the child and its params) for the first
    combination that is not a valid training spec."""
    check_keys((request.grid or request.space or {}).keys(), "grid" if request.grid is not None else "space")
    try:
        TrainingSpec.model_validate({**request.base, "dataset_id": str(request.dataset_id)})
    except ValidationError as exc:
        raise SweepError("base is not a valid training spec.", validation_details(exc, "base")) from None
    out = []
    for index, params in enumerate(combinations(request)):
        spec = json.loads(json.dumps(request.base))  # a deep copy of plain JSON
        for key, value in params.items():
            set_path(spec, key, value)
        spec["dataset_id"] = str(request.dataset_id)
        if request.name is not None and "name" not in spec:
            spec["name"] = request.name
        try:
            out.append((params, TrainingSpec.model_validate(spec)))
        except ValidationError as exc:
            raise SweepError(f"Child {index} ({_describe(params)}) is not a valid training spec.",
                             validation_details(exc, "children", index)) from None
    return out


def spec_hash(spec: TrainingSpec) -> str:
    """What makes two jobs the same training run: the resolved spec (dataset, seed and all) minus the fields
    that only label or serve the result."""
    body = spec.model_dump(mode="json", exclude={"name", "abstain_threshold"})
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------------
# response bodies (the views build plain dicts and pass them through these, so the OpenAPI document is exact)


class SweepChild(BaseModel):
    index: int = Field(description="Place in the sweep (grid order, or draw order).")
    params: dict[str, Any] = Field(description="The values this child took from the grid or space.")
    job_id: UUID
    status: JobStatus
    duplicate_of: int | None = Field(description="The child with the same resolved spec, whose job this shares.")
    reused: bool = Field(description="An earlier identical job (same spec, data and seed) already had a model.")
    progress: dict[str, Any]
    epochs_run: int
    best_epoch: int | None
    val_accuracy: float | None
    val_macro_f1: float | None
    val_loss: float | None
    test_accuracy: float | None
    test_macro_f1: float | None
    train_seconds: float | None
    model_id: UUID | None
    rank: int | None = Field(description="1 is the best on the leaderboard; null without a metric yet.")
    error: JobError | None
    history: list[EpochRecord] | None = None


class SweepRead(BaseModel):
    id: UUID
    name: str | None
    dataset_id: UUID | None
    status: Literal["running", "cancelling", "succeeded", "failed", "cancelled"]
    metric: SweepMetric
    higher_is_better: bool
    max_parallel: int
    search: Literal["grid", "random"]
    grid: dict[str, Any] | None
    space: dict[str, Any] | None
    samples: int | None
    base: dict[str, Any]
    pruning: dict[str, Any] | None
    counts: dict[str, int] = Field(description="Distinct child jobs per status.")
    created_at: datetime
    finished_at: datetime | None
    wall_seconds: float | None = Field(description="First child's start to the last one's end (so far).")
    children: list[SweepChild]
    leaderboard: list[SweepChild] = Field(description="Children with a metric value, best first.")
    best: SweepChild | None = Field(description="The best child that succeeded (it has a model).")


class SweepPromoted(BaseModel):
    alias: str
    model_id: UUID
    job_id: UUID
    child: int
    metric: SweepMetric
    value: float | None


# ---------------------------------------------------------------------------------------------------------
# successive halving


def higher_is_better(metric: str) -> bool:
    return metric != "val_loss"


def best_so_far(history: Sequence[dict[str, Any]], metric: str, epoch: int) -> float | None:
    """The best value of `metric` over the first `epoch` epochs of `history` (None if it has fewer)."""
    values = [row[metric] for row in history[:epoch] if row.get(metric) is not None]
    if len(history) < epoch or not values:
        return None
    return max(values) if higher_is_better(metric) else min(values)


def prune_decision(own: Sequence[dict[str, Any]], peers: Iterable[Sequence[dict[str, Any]]], *, epoch: int,
                   metric: str, pruning: Pruning) -> str | None:
    """Why a child that just finished `epoch` should stop, or None to continue.

    Only milestone epochs decide. The child is compared with every other child that reached the milestone
    (finished, pruned or still running): it continues if it ranks within the top `keep_fraction` of them all
    (ties continue). Early children have few peers, so `min_peers` keeps them from being judged on nothing.
    """
    if epoch not in pruning.milestones:
        return None
    mine = best_so_far(own, metric, epoch)
    theirs = [v for v in (best_so_far(h, metric, epoch) for h in peers) if v is not None]
    if mine is None or len(theirs) < pruning.min_peers:
        return None
    field = sorted([mine, *theirs], reverse=higher_is_better(metric))
    keep = max(1, math.floor(len(field) * pruning.keep_fraction))
    cutoff = field[keep - 1]
    behind = mine < cutoff if higher_is_better(metric) else mine > cutoff
    if not behind:
        return None
    return (f"Stopped at epoch {epoch} by the sweep's successive halving: {metric} {mine:.4f} was outside the top "
            f"{keep} of {len(field)} children at that epoch (cut-off {cutoff:.4f}).")


# ---------------------------------------------------------------------------------------------------------
# leaderboard


def child_row(index: int, params: dict[str, Any], job: Any, *, metric: str, duplicate_of: int | None,
              reused: bool, with_history: bool) -> dict[str, Any]:
    """One child as the API shows it; `job` is its TrainingJob. Finished children report the metrics their job
    recorded (the model's); others their best epoch so far by the sweep's metric."""
    history = list(job.history or [])
    row: dict[str, Any] = {
        "index": index, "params": params, "job_id": str(job.id), "status": job.status,
        "duplicate_of": duplicate_of, "reused": reused, "progress": job.progress or {},
        "epochs_run": len(history), "best_epoch": None,
        "val_accuracy": None, "val_macro_f1": None, "val_loss": None,
        "test_accuracy": None, "test_macro_f1": None, "train_seconds": None,
        "model_id": str(job.model_id) if job.model_id else None, "rank": None, "error": job.error,
    }
    metrics = job.metrics or {}
    if job.model_id is not None and metrics:
        row.update({k: metrics.get(k) for k in ("best_epoch", "val_accuracy", "val_macro_f1", "val_loss",
                                                "test_accuracy", "test_macro_f1", "train_seconds")})
    elif history:
        pick = max if higher_is_better(metric) else min
        best = pick(history, key=lambda r: r[metric])
        row.update(best_epoch=best["epoch"], val_accuracy=best["val_accuracy"], val_macro_f1=best["val_macro_f1"],
                   val_loss=best["val_loss"], train_seconds=round(sum(r.get("seconds", 0.0) for r in history), 3))
    if with_history:
        row["history"] = history
    return row


def rank(children: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Children with a value of `metric`, best first: succeeded ones (they have a model) ahead of partial ones
    (running, pruned, failed, cancelled), each group by the metric. Sets each child's `rank`; duplicates share
    their original's job, so only originals are ranked."""
    scored = [c for c in children if c[metric] is not None and c["duplicate_of"] is None]
    sign = -1.0 if higher_is_better(metric) else 1.0
    scored.sort(key=lambda c: (c["status"] != "succeeded", sign * c[metric], c["index"]))
    for position, child in enumerate(scored, start=1):
        child["rank"] = position
    return scored
