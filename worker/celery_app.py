"""The Celery worker application: `celery -A worker.celery_app worker`."""

from __future__ import annotations

from celery.signals import worker_process_init

from app.broker import make_celery
from app.config import get_settings
from app.db.session import make_engine, make_sessionmaker

settings = get_settings()
celery = make_celery(settings, include=["worker.tasks"])
engine = make_engine(settings.database_url)
SessionLocal = make_sessionmaker(engine)


@worker_process_init.connect
def _after_fork(**_kwargs) -> None:
    # Connections opened in the parent must not be shared with the forked child (SQLAlchemy's pooling docs).
    engine.dispose(close=False)
