"""A bounded, thread-safe cache of loaded models (one onnxruntime session per model per process)."""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections import OrderedDict
from pathlib import Path

from app.config import Settings
from app.metrics import LOADED_MODELS
from app.ml.predictor import MODEL_FILES, OnnxPredictor

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


class PredictorCache:
    """Least-recently-used predictors keyed by model id; loading happens outside the lock's fast path."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.capacity = settings.model_cache_size
        self._items: OrderedDict[uuid.UUID, OnnxPredictor] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[uuid.UUID, threading.Lock] = {}
        # Models that failed to load, with their files' state then: not retried on every request, only once the
        # files change (a corrupt model would otherwise cost a load, and a logged traceback, per request).
        self._failed: dict[uuid.UUID, tuple] = {}

    def _threads(self) -> int:
        # Share the cores between the API's worker processes; spinning threads would fight each other.
        if self.settings.ort_intra_op_threads:
            return self.settings.ort_intra_op_threads
        return max(1, len(os.sched_getaffinity(0)) // self.settings.api_workers)

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
                predictor = OnnxPredictor(folder, intra_op_threads=self._threads())
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

    def loaded(self, model_id: uuid.UUID) -> OnnxPredictor | None:
        """The predictor if this process has it loaded, else None (never loads)."""
        with self._lock:
            return self._items.get(model_id)
