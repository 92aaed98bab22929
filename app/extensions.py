"""Per-process state of the API: settings, database sessions, the Celery client and loaded models."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from functools import cached_property

from celery import Celery
from flask import Flask, current_app, g
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from app.serving import ModelDirectory, PredictorCache
from core.broker import make_celery, send_training_job
from core.config import Settings
from core.db.session import make_engine, make_sessionmaker

log = logging.getLogger(__name__)


@dataclass
class State:
    settings: Settings
    session_factory: sessionmaker[Session]

    @cached_property
    def celery(self) -> Celery:
        return make_celery(self.settings)

    def send_job(self, job_id: uuid.UUID, max_runtime: int | None) -> None:
        """Put a training job's message on the broker; the task id is the job id."""
        send_training_job(self.celery, self.settings, job_id, max_runtime)

    @cached_property
    def predictors(self) -> PredictorCache:
        # Created lazily, so sessions are made in each API worker process after the fork.
        return PredictorCache(self.settings)

    @cached_property
    def directory(self) -> ModelDirectory:
        return ModelDirectory(self.predictors, ttl=self.settings.model_refresh_seconds)


def init_app(app: Flask, settings: Settings, *, session_factory: sessionmaker[Session] | None) -> None:
    if session_factory is None:
        session_factory = make_sessionmaker(make_engine(settings.database_url))
    app.extensions["textclf"] = State(settings=settings, session_factory=session_factory)
    app.teardown_appcontext(_close_session)


def state() -> State:
    return current_app.extensions["textclf"]


def get_session() -> Session:
    """One session per app context; teardown closes it, rolling back whatever was not committed."""
    if "db_session" not in g:
        g.db_session = state().session_factory()
    return g.db_session


def _close_session(_exc: BaseException | None) -> None:
    session = g.pop("db_session", None)
    if session is None:
        return
    try:
        session.close()
    except DBAPIError:
        # The rollback that closing does runs after the response is made; on a connection a database restart
        # just cut it fails, and raising here would turn a finished reply into a bare 500 from the server.
        # Dropping the connection is all that is left to do: the pool opens a fresh one for the next request.
        log.warning("database connection lost while closing a session; discarding it")
        session.invalidate()
