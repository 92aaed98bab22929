"""Training jobs: create (enqueue), read with progress and history, list."""

from __future__ import annotations

import logging

from flask import Blueprint, request
from sqlalchemy.exc import IntegrityError

from app.api import idempotency
from app.api.common import json_body, page_args, parse, parse_uuid
from app.extensions import get_session, state
from core.db import jobs
from core.db.tables import TrainingJob
from core.dispatch import start_next_children
from core.errors import ErrorCode, ServiceError, detail
from core.limits import check_spec
from core.spec import JobRead, JobStatus, TrainingSpec

bp = Blueprint("jobs", __name__, url_prefix="/v1")
log = logging.getLogger(__name__)


def job_json(job: TrainingJob) -> dict:
    return JobRead.model_validate(job).model_dump(mode="json")


@bp.post("/jobs")
def create_job():
    key = idempotency.request_key()
    spec = parse(TrainingSpec, json_body())
    request_hash = idempotency.fingerprint(spec.model_dump(mode="json"))
    session = get_session()
    if stored := idempotency.replay(session, "jobs", key, request_hash):
        return stored
    spec = check_spec(session, spec, state().settings)
    job = jobs.create_job(session=session, spec=spec)
    body, location = job_json(job), f"/v1/jobs/{job.id}"
    idempotency.remember(session, "jobs", key, request_hash, body, 202, location)
    try:
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        if idempotency.is_key_race(exc):  # a concurrent retry with the same key won: answer as it did
            return idempotency.replay(session, "jobs", key, request_hash)
        raise
    # Enqueue only after commit, so the worker always finds the row. The task id is the job id.
    try:
        state().send_job(job.id, spec.max_runtime_seconds)
    except Exception:
        log.exception("could not enqueue job %s", job.id)
        idempotency.forget(session, "jobs", key)
        session.delete(job)
        session.commit()
        raise ServiceError(ErrorCode.unavailable, "The job queue is unavailable; nothing was queued. Try again.",
                           503) from None
    log.info("job %s queued on dataset %s", job.id, spec.dataset_id)
    return body, 202, {"Location": location}


@bp.get("/jobs")
def list_jobs():
    limit, offset = page_args()
    status = request.args.get("status")
    if status is not None and status not in JobStatus.__members__:
        raise ServiceError(ErrorCode.validation_error, "Unknown status filter.", 422,
                           [detail(["query", "status"], f"must be one of {', '.join(JobStatus)}", "enum")])
    rows, total = jobs.list_jobs(session=get_session(), status=status, limit=limit, offset=offset)
    return {"items": [job_json(j) for j in rows], "total": total, "limit": limit, "offset": offset}


@bp.get("/jobs/<job_id>")
def get_job(job_id: str):
    job = jobs.get_job(session=get_session(), job_id=parse_uuid(job_id, "job"))
    if job is None:
        raise ServiceError(ErrorCode.not_found, f"No job with id {job_id}.", 404)
    return job_json(job)


@bp.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str):
    """Cancel a queued job at once; a running job goes `cancelling`, then `cancelled` within about a second."""
    uid = parse_uuid(job_id, "job")
    session = get_session()
    if jobs.get_job(session=session, job_id=uid) is None:
        raise ServiceError(ErrorCode.not_found, f"No job with id {job_id}.", 404)
    status = jobs.request_cancel(session=session, job_id=uid)
    session.commit()
    job = jobs.get_job(session=session, job_id=uid)
    session.refresh(job)
    if job.sweep_id is not None and status == JobStatus.cancelled:
        start_next_children(sessionmaker=state().session_factory, send=state().send_job, sweep_id=job.sweep_id)
    if status not in (JobStatus.cancelled, JobStatus.cancelling):
        raise ServiceError(ErrorCode.conflict, f"Job {job_id} already ended ({status}); nothing to cancel.", 409,
                           {"status": status})
    return job_json(job), 202 if status == JobStatus.cancelling else 200
