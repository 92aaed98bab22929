"""Thin Celery tasks; the work lives in worker.training."""

from __future__ import annotations

import uuid

from sqlalchemy.exc import OperationalError

from core.broker import TRAIN_TASK, send_training_job
from core.logs import job_id_var
from worker.celery_app import SessionLocal, celery, settings
from worker.training import run_training


@celery.task(name=TRAIN_TASK, bind=True, acks_late=True, autoretry_for=(OperationalError,), retry_backoff=True,
             max_retries=5)
def train_model(self, job_id: str) -> str:
    """Train the job `job_id` (the database row is the source of truth; the message carries only the id)."""
    token = job_id_var.set(job_id)  # every log record of this job carries its id
    try:
        return run_training(sessionmaker=SessionLocal, settings=settings, job_id=uuid.UUID(job_id),
                            worker_id=self.request.hostname or "worker", send=send_job)
    finally:
        job_id_var.reset(token)


def send_job(job_id: uuid.UUID, max_runtime: int | None) -> None:
    """Put a training job's message on the broker (a sweep's next child, sent as the previous one ends)."""
    send_training_job(celery, settings, job_id, max_runtime)
