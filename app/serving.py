"""Serving in one API process: the loaded models, the facts a prediction needs about each, and where each alias
points.

`PredictorCache` holds a bounded number of onnxruntime sessions (one per model per process). `ModelDirectory`
caches model facts and aliases for MODEL_REFRESH_SECONDS so a prediction costs no database round trip. When an
alias (or the default model) moves to a model this process has not loaded, the old model keeps answering while a
thread loads and warms the new session; the switch happens only once it is ready, so moving an alias fails no
request in any API worker.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app.batching import Batcher
from app.metrics import LOADED_MODELS
from core.config import Settings
from core.db import registry
from core.db.tables import Model, ModelAlias
from core.errors import ErrorCode, ServiceError
from core.ml.predictor import MODEL_FILES, OnnxPredictor

log = logging.getLogger(__name__)


class ModelUnavailable(Exception):
    """The model's files are missing or cannot be loaded on this server (the reason is logged once)."""


def _files_state(folder: Path) -> tuple:
    """What a model's files look like now (mtime, size; None where missing): a repair changes it."""
    out = []
    for name in MODEL_FILES:
        try:
            stat = (folder / name).stat()
            out.append((stat.st_mtime_ns, stat.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


def onnx_threads(settings: Settings) -> int:
    """onnxruntime intra-op threads per model in one API process: ORT_INTRA_OP_THREADS, else the cores shared
    between the API's worker processes (spinning threads would fight each other)."""
    if settings.ort_intra_op_threads:
        return settings.ort_intra_op_threads
    return max(1, len(os.sched_getaffinity(0)) // settings.api_workers)


class PredictorCache:
    """Least-recently-used predictors keyed by model id; loading happens outside the lock's fast path."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.capacity = settings.model_cache_size
        self._items: OrderedDict[uuid.UUID, OnnxPredictor] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[uuid.UUID, threading.Lock] = {}
        # One per model ever predicted with here: a few fields each, and requests in flight hold their own.
        self._batchers: dict[uuid.UUID, Batcher] = {}
        # Models that failed to load, with their files' state then: not retried on every request, only once the
        # files change (a corrupt model would otherwise cost a load, and a logged traceback, per request).
        self._failed: dict[uuid.UUID, tuple] = {}

    def get(self, model_id: uuid.UUID) -> OnnxPredictor:
        """The predictor for `model_id`, loaded and warmed on first use. Raises ModelUnavailable."""
        with self._lock:
            predictor = self._items.get(model_id)
            if predictor is not None:
                self._items.move_to_end(model_id)
                return predictor
            load_lock = self._loading.setdefault(model_id, threading.Lock())
        with load_lock:  # one load per model even when many requests arrive at once
            with self._lock:
                if model_id in self._items:
                    return self._items[model_id]
            folder = self.settings.models_dir / str(model_id)
            files = _files_state(folder)
            if self._failed.get(model_id) == files:
                raise ModelUnavailable(model_id)
            try:
                predictor = OnnxPredictor(folder, intra_op_threads=onnx_threads(self.settings))
                predictor.warm_up()
            except Exception as exc:  # missing, truncated or garbage files: onnxruntime and tokenizers raise many
                log.error("cannot load model %s from %s: %s", model_id, folder, exc, exc_info=True)
                with self._lock:
                    self._failed[model_id] = files
                    self._loading.pop(model_id, None)
                raise ModelUnavailable(model_id) from exc
            with self._lock:
                self._failed.pop(model_id, None)
                self._items[model_id] = predictor
                self._items.move_to_end(model_id)
                while len(self._items) > self.capacity:
                    self._items.popitem(last=False)
                self._loading.pop(model_id, None)
                LOADED_MODELS.set(len(self._items))
            return predictor

    def batcher(self, model_id: uuid.UUID) -> Batcher:
        """The model's dynamic batcher in this process (app/batching.py), made on first use."""
        with self._lock:
            batcher = self._batchers.get(model_id)
            if batcher is None:
                settings = self.settings
                batcher = self._batchers[model_id] = Batcher(
                    str(model_id), max_batch_texts=settings.predict_max_batch_texts,
                    max_wait_s=settings.predict_max_wait_ms / 1000, max_queue=settings.predict_max_queue)
            return batcher

    def loaded(self, model_id: uuid.UUID) -> OnnxPredictor | None:
        """The predictor if this process has it loaded, else None (never loads)."""
        with self._lock:
            return self._items.get(model_id)


@dataclass(frozen=True)
class ServedModel:
    """A model's identity and serving options, detached from the database session."""

    id: uuid.UUID
    name: str
    version: int
    abstain_threshold: float | dict[str, float] | None

    @classmethod
    def of(cls, model: Model) -> ServedModel:
        return cls(model.id, model.name, model.version, model.abstain_threshold)


@dataclass
class _Entry:
    model: ServedModel | None
    checked: float
    alias: str | None = None  # of a target: the alias that chose the model (None: the newest-model fallback)


class ModelDirectory:
    """Per-process, short-lived answers to "which model is this alias?" and "what are this model's options?"."""

    def __init__(self, predictors: PredictorCache, ttl: float):
        self.predictors = predictors
        self.ttl = ttl
        self._models: dict[uuid.UUID, _Entry] = {}
        self._targets: dict[str | None, _Entry] = {}
        self._warming: set[uuid.UUID] = set()
        self._lock = threading.Lock()

    def model(self, session: Callable[[], Session], model_id: uuid.UUID) -> ServedModel | None:
        """The model with this id, or None if there is none. `session` is called only on a cache miss."""
        now = time.monotonic()
        entry = self._models.get(model_id)
        if entry is not None and now - entry.checked < self.ttl:
            return entry.model
        row = registry.get_model(session=session(), model_id=model_id)
        served = ServedModel.of(row) if row is not None else None
        self._models[model_id] = _Entry(served, now)
        return served

    def target(self, session: Callable[[], Session], alias: str | None) -> tuple[ServedModel, str | None] | None:
        """The model an alias names (None: the default model) and the alias that chose it (None when the newest
        model serves for want of a `default` alias), or None if the alias does not exist. `session` is called only
        when the cached answer is older than the refresh interval."""
        now = time.monotonic()
        entry = self._targets.get(alias)
        if entry is not None and now - entry.checked < self.ttl:
            return entry.model, entry.alias
        db = session()
        row = registry.resolve_alias(session=db, name=alias) if alias else registry.default_model(session=db)
        if row is None:
            self._targets.pop(alias, None)
            return None
        # default_model follows the `default` alias whenever it exists, so the model carries it iff it chose it.
        chosen = alias or (registry.DEFAULT_ALIAS if registry.DEFAULT_ALIAS in row.aliases else None)
        served = ServedModel.of(row)
        self._models[served.id] = _Entry(served, now)
        current = entry.model if entry is not None else None
        if current is None or current.id == served.id or self.predictors.loaded(served.id) is not None:
            self._targets[alias] = _Entry(served, now, chosen)
            return served, chosen
        # Moved to a model not loaded here: keep serving the current one until the new one is warm.
        entry.checked = now
        self._warm_then_switch(alias, served, chosen)
        return current, entry.alias

    def _warm_then_switch(self, alias: str | None, served: ServedModel, chosen: str | None) -> None:
        with self._lock:
            if served.id in self._warming:
                return
            self._warming.add(served.id)

        def load() -> None:
            try:
                self.predictors.get(served.id)  # loads and warms the session
                self._targets[alias] = _Entry(served, time.monotonic(), chosen)
                log.info("alias %s now serves model %s (%s v%d)", alias or "(default)", served.id, served.name,
                         served.version)
            except ModelUnavailable:  # logged once by the cache; the old model keeps serving, refreshes try again
                pass
            finally:
                with self._lock:
                    self._warming.discard(served.id)

        threading.Thread(target=load, name=f"load-{served.id}", daemon=True).start()

    def forget(self, *, model_id: uuid.UUID | None = None, alias: Any = ...) -> None:
        """Drop cached answers this process just changed (a PATCH, an alias move), so it sees them at once."""
        if model_id is not None:
            self._models.pop(model_id, None)
        if alias is not ...:
            self._targets.pop(alias, None)
            self._targets.pop(None, None)  # the default model may follow the `default` alias


def loaded_predictor(predictors: PredictorCache, served: ServedModel) -> OnnxPredictor:
    """The loaded (and warmed) predictor of a model, or a 409 when its artifacts are missing or cannot be loaded
    on this server (PredictorCache logs why, once)."""
    try:
        return predictors.get(served.id)
    except ModelUnavailable:
        raise ServiceError(ErrorCode.model_not_ready, "The model's artifacts are missing or cannot be loaded on "
                           "this server.", 409) from None


def move_alias(session: Callable[[], Session], directory: ModelDirectory, name: str,
               model_id: uuid.UUID) -> ModelAlias:
    """Point alias `name` at an existing model and commit. The model is loaded and warmed here before the alias
    moves, so a model that cannot load is never served; the other API processes warm it up before they switch
    (ModelDirectory)."""
    loaded_predictor(directory.predictors, directory.model(session, model_id))
    alias = registry.set_alias(session=session(), name=name, model_id=model_id)
    session().commit()
    directory.forget(alias=name)
    return alias
