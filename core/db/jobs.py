"""Training-job data functions. They add and flush; the caller owns the transaction."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from core.db.base import utcnow
from core.db.tables import TrainingJob, WorkerHeartbeat
from core.spec import ACTIVE_STATUSES, JobStatus, TrainingSpec
from core.sweeps import spec_hash


def create_job(*, session: Session, spec: TrainingSpec) -> TrainingJob:
    """A queued job for `spec` (the dataset must exist: the caller checked)."""
    job = TrainingJob(
        dataset_id=spec.dataset_id,
        test_dataset_id=spec.test_dataset_id,
        status=JobStatus.queued,
        spec=spec.model_dump(mode="json"),
        progress={"stage": "queued", "total_epochs": spec.epochs},
        history=[],
        attempts=0,
        spec_hash=spec_hash(spec),
    )
    session.add(job)
    session.flush()
    return job


def get_job(*, session: Session, job_id: uuid.UUID) -> TrainingJob | None:
    return session.get(TrainingJob, job_id)


def list_jobs(*, session: Session, status: str | None, limit: int, offset: int) -> tuple[list[TrainingJob], int]:
    """A page of jobs, newest first, and the total matching count."""
    query = select(TrainingJob)
    if status:
        query = query.where(TrainingJob.status == status)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(
        query.order_by(TrainingJob.created_at.desc(), TrainingJob.id).limit(limit).offset(offset)).all()
    return list(rows), total


def dataset_in_use(*, session: Session, dataset_id: uuid.UUID) -> bool:
    """True while a queued or running job reads the dataset (to train or to test on)."""
    query = select(TrainingJob.id).where(
        or_(TrainingJob.dataset_id == dataset_id, TrainingJob.test_dataset_id == dataset_id),
        TrainingJob.status.in_(ACTIVE_STATUSES)).limit(1)
    return session.scalar(query) is not None


def claim_job(*, session: Session, job_id: uuid.UUID, worker_id: str) -> bool:
    """Move a queued job to running. False when another delivery already took it (or it ended)."""
    now = utcnow()
    spec = session.scalar(select(TrainingJob.spec).where(TrainingJob.id == job_id)) or {}
    result = session.execute(
        update(TrainingJob)
        .where(TrainingJob.id == job_id, TrainingJob.status == JobStatus.queued)
        .values(status=JobStatus.running, attempts=TrainingJob.attempts + 1, worker_id=worker_id,
                started_at=now, heartbeat_at=now,
                # total_epochs from the start, so pollers never show "epoch 0/0" while the data loads
                progress={"stage": "starting", "total_epochs": spec.get("epochs", 0)},
                error_code=None, error_message=None)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def _owned(job_id: uuid.UUID, worker_id: str | None):
    """WHERE clause: the job is active and, when `worker_id` is given, still held by that claim. A worker that
    was presumed dead (its job re-queued and claimed again) then writes nothing, so it cannot overwrite the new
    attempt's progress or register a second model."""
    clause = [TrainingJob.id == job_id, TrainingJob.status.in_((JobStatus.running, JobStatus.cancelling))]
    if worker_id is not None:
        clause.append(TrainingJob.worker_id == worker_id)
    return clause


def touch_job(*, session: Session, job_id: uuid.UUID, worker_id: str) -> bool:
    """The running job's heartbeat; False once the job is no longer this worker's (ended or re-queued)."""
    result = session.execute(update(TrainingJob).where(*_owned(job_id, worker_id)).values(heartbeat_at=utcnow())
                             .execution_options(synchronize_session=False))
    return result.rowcount == 1


def update_progress(*, session: Session, job_id: uuid.UUID, progress: dict[str, Any],
                    history: list[dict[str, Any]] | None = None, device: str | None = None,
                    worker_id: str | None = None) -> str | None:
    """Record progress on a running job; returns the job's status (the worker checks it for cancellation)."""
    values: dict[str, Any] = {"progress": progress, "heartbeat_at": utcnow()}
    if history is not None:
        values["history"] = history
    if device is not None:
        values["device"] = device
    session.execute(
        update(TrainingJob)
        .where(*_owned(job_id, worker_id))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return get_status(session=session, job_id=job_id)


def request_cancel(*, session: Session, job_id: uuid.UUID) -> str | None:
    """Cancel a queued job at once, or ask a running one to stop; returns the job's status afterwards."""
    now = utcnow()
    session.execute(
        update(TrainingJob)
        .where(TrainingJob.id == job_id, TrainingJob.status == JobStatus.queued)
        .values(status=JobStatus.cancelled, finished_at=now, progress={"stage": "cancelled"})
        .execution_options(synchronize_session=False)
    )
    # The worker checks for `cancelling` about once a second and stops within one training step.
    session.execute(
        update(TrainingJob)
        .where(TrainingJob.id == job_id, TrainingJob.status == JobStatus.running)
        .values(status=JobStatus.cancelling)
        .execution_options(synchronize_session=False)
    )
    return session.scalar(select(TrainingJob.status).where(TrainingJob.id == job_id))


def reap_stale_jobs(*, session: Session, stale_after_s: float,
                    max_attempts: int) -> tuple[list[tuple[uuid.UUID, int | None]], list[uuid.UUID]]:
    """Running jobs whose heartbeat stopped (worker killed, machine lost): re-queue them, or fail those that
    used up their attempts. Returns ([(id, max_runtime_seconds)] requeued, [id] failed); the caller sends the
    requeued ones to the broker."""
    cutoff = utcnow() - timedelta(seconds=stale_after_s)
    stale = list(session.scalars(
        select(TrainingJob).where(TrainingJob.status.in_((JobStatus.running, JobStatus.cancelling)),
                                  TrainingJob.heartbeat_at < cutoff).with_for_update(skip_locked=True)))
    requeued, failed = [], []
    for job in stale:
        if job.status == JobStatus.cancelling:  # the user wanted it stopped; it is
            job.status, job.finished_at, job.progress = JobStatus.cancelled, utcnow(), {"stage": "cancelled"}
        elif job.attempts >= max_attempts:
            job.status, job.finished_at = JobStatus.failed, utcnow()
            job.error_code = "worker_lost"
            job.error_message = (f"The worker stopped responding {job.attempts} times (killed, out of memory, or "
                                 f"its machine was lost); giving up.")
            job.progress = {"stage": "failed"}
            failed.append(job.id)
        else:
            job.status, job.worker_id, job.progress = JobStatus.queued, None, {"stage": "queued", "requeued": True}
            requeued.append((job.id, job.spec.get("max_runtime_seconds")))
    session.flush()
    return requeued, failed


def queued_jobs(*, session: Session) -> list[tuple[uuid.UUID, int | None]]:
    """[(id, max_runtime_seconds)] of every queued job that was sent, oldest first (to send their messages again).
    A sweep's children still waiting for a slot were never sent; their sweep's dispatch sends them."""
    rows = session.execute(select(TrainingJob.id, TrainingJob.spec)
                           .where(TrainingJob.status == JobStatus.queued,
                                  or_(TrainingJob.sweep_id.is_(None), TrainingJob.sent_at.is_not(None)))
                           .order_by(TrainingJob.created_at))
    return [(job_id, spec.get("max_runtime_seconds")) for job_id, spec in rows]


def get_status(*, session: Session, job_id: uuid.UUID) -> str | None:
    return session.scalar(select(TrainingJob.status).where(TrainingJob.id == job_id))


def finish_job(*, session: Session, job_id: uuid.UUID, status: JobStatus, metrics: dict[str, Any] | None = None,
               model_id: uuid.UUID | None = None, error_code: str | None = None,
               error_message: str | None = None, progress: dict[str, Any] | None = None,
               history: list[dict[str, Any]] | None = None, worker_id: str | None = None) -> bool:
    """Move a running (or cancelling) job to a terminal status; False if it was no longer active (or, with
    `worker_id`, no longer that worker's)."""
    values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "heartbeat_at": utcnow()}
    if metrics is not None:
        values["metrics"] = metrics
    if model_id is not None:
        values["model_id"] = model_id
    if error_code is not None:
        values.update(error_code=error_code, error_message=error_message)
    if progress is not None:
        values["progress"] = progress
    if history is not None:
        values["history"] = history
    result = session.execute(
        update(TrainingJob)
        .where(*_owned(job_id, worker_id))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1



def record_worker_heartbeat(*, session: Session, worker_id: str) -> None:
    """Note that `worker_id` is alive now."""
    now = utcnow()
    updated = session.execute(update(WorkerHeartbeat).where(WorkerHeartbeat.worker_id == worker_id)
                              .values(seen_at=now).execution_options(synchronize_session=False))
    if updated.rowcount == 0:
        session.add(WorkerHeartbeat(worker_id=worker_id, seen_at=now))
    session.flush()


def workers_seen_since(*, session: Session, seconds: float) -> int:
    """How many workers sent a heartbeat in the last `seconds`."""
    cutoff = utcnow() - timedelta(seconds=seconds)
    return session.scalar(select(func.count()).select_from(WorkerHeartbeat)
                          .where(WorkerHeartbeat.seen_at >= cutoff)) or 0
