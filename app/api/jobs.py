"""Training jobs: create (enqueue), read with progress and history, list."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from flask import Blueprint, request
from sqlalchemy.exc import IntegrityError

from app import ingest
from app.api import idempotency
from app.api.common import json_body, page_args, parse, parse_uuid
from app.config import Settings
from app.db import datasets, jobs
from app.db.datasets import records_path
from app.db.models import TrainingJob
from app.errors import ErrorCode, ServiceError
from app.extensions import get_session, state
from app.reaper import dispatch_sweeps
from app.model_size import MB, DataShape, estimate_training_bytes, spec_params
from app.spec import JobRead, JobStatus, TrainingSpec

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
    check_spec(session, spec)
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


def check_spec(session, spec: TrainingSpec, loc: tuple = ()) -> None:
    """What the schema cannot know: the datasets exist, per-label settings name their labels, and the spec
    stays under this server's ceilings (422 otherwise; `loc` prefixes the error locations)."""
    found = {}
    for field in ("dataset_id", "test_dataset_id"):
        dataset_id = getattr(spec, field)
        if dataset_id is None:
            continue
        # Read once, and locked until the job is stored or refused: a concurrent delete of the dataset waits and
        # then sees the job (409), or went first and leaves nothing to find here (422).
        found[field] = datasets.lock_dataset(session=session, dataset_id=dataset_id)
        if found[field] is None:
            raise ServiceError(ErrorCode.validation_error, f"No dataset with id {dataset_id}.", 422,
                               [{"loc": [*loc, field], "msg": "dataset not found", "type": "not_found"}])
    labels = found["dataset_id"].labels
    try:
        _check_label_keys(spec, labels)
        _check_ceilings(spec, num_classes=len(labels), settings=state().settings)
    except ServiceError as exc:
        if loc and isinstance(exc.details, list):
            exc.details = [{**d, "loc": [*loc, *d["loc"]]} for d in exc.details]
        raise


def _over_ceiling(field: str, message: str, ceiling: int) -> ServiceError:
    return ServiceError(ErrorCode.validation_error, message, 422,
                        [{"loc": [field], "msg": f"must be <= {ceiling}", "type": "less_than_equal"}])


def _check_ceilings(spec: TrainingSpec, *, num_classes: int, settings: Settings) -> None:
    """The server's limits on one job: run time, epochs and model size (422 naming the setting)."""
    if spec.max_runtime_seconds is not None and spec.max_runtime_seconds > settings.job_max_runtime_seconds:
        raise _over_ceiling("max_runtime_seconds", "max_runtime_seconds may be at most "
                            f"{settings.job_max_runtime_seconds} on this server (JOB_MAX_RUNTIME_SECONDS).",
                            settings.job_max_runtime_seconds)
    if spec.epochs > settings.max_epochs:
        raise _over_ceiling("epochs", f"epochs may be at most {settings.max_epochs} on this server (MAX_EPOCHS).",
                            settings.max_epochs)
    params = spec_params(spec, num_classes=num_classes)
    if params > settings.max_model_params:
        raise ServiceError(
            ErrorCode.validation_error,
            f"This model would have up to {params:,} parameters; this server allows {settings.max_model_params:,} "
            "(MAX_MODEL_PARAMS). Lower tokenizer.vocab_size, model.embedding_dim, model.ngram_buckets or the "
            "model's width.", 422,
            [{"loc": ["model"], "msg": f"{params} parameters > {settings.max_model_params}",
              "type": "less_than_equal"}])
    _check_training_memory(spec, num_classes=num_classes, settings=settings)


def _memory_fields(spec: TrainingSpec, part: str) -> list[str]:
    """The spec fields behind one part of the training memory estimate, named in the 422."""
    width = {"textcnn": ["model.num_filters"], "bigru": ["model.hidden_size", "model.num_layers"]}
    return {"activations": ["batch_size", "tokenizer.max_length", "model.embedding_dim",
                            *width.get(spec.model.name, [])],
            "parameters": ["tokenizer.vocab_size", "model.embedding_dim", "model.ngram_buckets", "optimizer.name"],
            "data": ["tokenizer.max_length"], "tfidf": ["model.tfidf"]}[part]


def _check_training_memory(spec: TrainingSpec, *, num_classes: int, settings: Settings) -> None:
    """422 when the job's estimated peak training memory is over TRAINING_MEMORY_LIMIT_MB: past it the worker's
    cap would fail the job with out_of_memory anyway, after it waited its turn."""
    path = records_path(settings, spec.dataset_id)
    try:
        stat = path.stat()
    except FileNotFoundError:
        return  # nothing to train on: the worker fails the job with dataset_missing
    parts = estimate_training_bytes(spec, _data_shape(path, stat.st_mtime_ns, stat.st_size), num_classes=num_classes)
    total_mb, limit = -(-sum(parts.values()) // MB), settings.training_memory_limit_mb
    if total_mb <= limit:
        return
    biggest = max(("activations", "parameters", "data", "tfidf"), key=parts.__getitem__)
    fields = _memory_fields(spec, biggest)
    breakdown = ", ".join(f"{name} {-(-value // MB):,}" for name, value in parts.items())
    raise ServiceError(
        ErrorCode.validation_error,
        f"Training this spec would take about {total_mb:,} MiB ({breakdown}); this server allows {limit:,} MiB "
        f"(TRAINING_MEMORY_LIMIT_MB). Most of it is {biggest}: lower {', '.join(fields)}.", 422,
        [{"loc": f.split("."), "msg": f"estimated training memory {total_mb} MiB > {limit} MiB",
          "type": "less_than_equal"} for f in fields])


@functools.lru_cache(maxsize=64)
def _data_shape(path: Path, mtime_ns: int, size: int) -> DataShape:
    """Rows and longest text of a records file, read once per process and file version (a dataset never
    changes; the key's mtime and size only guard against a reused path)."""
    return DataShape.of(ingest.read_records(path)[0], records_bytes=size)


def _check_label_keys(spec: TrainingSpec, dataset_labels: dict[str, int]) -> None:
    """Per-label settings (class weights, abstain thresholds) must name labels the dataset has: caught here,
    not hours later in the worker."""
    for field in ("class_weights", "abstain_threshold"):
        value = getattr(spec, field)
        unknown = sorted(set(value) - set(dataset_labels)) if isinstance(value, dict) else []
        if unknown:
            raise ServiceError(ErrorCode.validation_error,
                               f"{field} names labels the dataset lacks: {unknown[:10]}", 422,
                               [{"loc": [field, label], "msg": "label not in dataset", "type": "not_found"}
                                for label in unknown[:10]])


@bp.get("/jobs")
def list_jobs():
    limit, offset = page_args()
    status = request.args.get("status")
    if status is not None and status not in JobStatus.__members__:
        raise ServiceError(ErrorCode.validation_error, "Unknown status filter.", 422,
                           [{"loc": ["query", "status"], "msg": f"must be one of {', '.join(JobStatus)}",
                             "type": "enum"}])
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
        _start_next_children(job.sweep_id)
    if status not in (JobStatus.cancelled, JobStatus.cancelling):
        raise ServiceError(ErrorCode.conflict, f"Job {job_id} already ended ({status}); nothing to cancel.", 409,
                           {"status": status})
    return job_json(job), 202 if status == JobStatus.cancelling else 200


def _start_next_children(sweep_id) -> None:
    """A sweep child cancelled before it ran may have held a slot: start the next one (else the reaper will)."""
    try:
        dispatch_sweeps(sessionmaker=state().session_factory, send=state().send_job, sweep_ids=[sweep_id])
    except Exception:
        log.exception("sweep %s: could not start its next children; the reaper will", sweep_id)
