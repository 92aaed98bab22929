"""What one API process serves: the facts a prediction needs about each model, and where each alias points.

Both are cached for MODEL_REFRESH_SECONDS so a prediction costs no database round trip. When an alias (or the
default model) moves to a model this process has not loaded, the old model keeps answering while a thread
loads and warms the new session; the switch happens only once it is ready, so moving an alias fails no request
in any gunicorn worker.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from app.db import registry
from app.db.models import Model
from app.predictors import ModelUnavailable, PredictorCache

log = logging.getLogger(__name__)


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
