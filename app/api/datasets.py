"""Datasets: upload (file or JSON records), list, read, delete."""

from __future__ import annotations

import logging
from pathlib import Path

from flask import Blueprint, request
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.exc import IntegrityError

from app.api import idempotency
from app.api.common import json_body, page_args, parse, parse_uuid
from app.extensions import get_session, state
from core import ingest
from core.db import datasets, jobs
from core.db.tables import Dataset
from core.errors import ErrorCode, ServiceError, validation_details
from core.spec import DatasetCreate, DatasetRead, Name

bp = Blueprint("datasets", __name__, url_prefix="/v1")
log = logging.getLogger(__name__)

# Raw uploads (curl --data-binary) name their format by content type.
_RAW_TYPES = {"text/csv", "text/tab-separated-values", "application/x-ndjson", "application/jsonl",
              "application/json-lines", "text/plain", "application/octet-stream"}
_NAME = TypeAdapter(Name)  # a form field or query parameter: the same rule as a JSON body's name


def _limits() -> ingest.Limits:
    s = state().settings
    return ingest.Limits(max_rows=s.max_dataset_rows, max_text_chars=s.max_text_chars, max_labels=s.max_labels,
                         max_labels_total_bytes=s.max_labels_total_bytes)


def _read_upload() -> tuple[str, ingest.ParsedDataset]:
    """Parse whichever of the three upload forms the request uses into (name, records)."""
    text_column = request.values.get("text_column", "text")
    label_column = request.values.get("label_column", "label")
    if request.mimetype == "multipart/form-data":
        upload = request.files.get("file")
        if upload is None:
            raise ServiceError(ErrorCode.bad_request, "Multipart upload needs a 'file' part.", 400)
        name = request.form.get("name") or Path(upload.filename or "dataset").stem or "dataset"
        parsed = ingest.parse_upload(upload.read(), filename=upload.filename, content_type=upload.mimetype,
                                     text_column=text_column, label_column=label_column, limits=_limits())
        return name, parsed
    if request.mimetype == "application/json":
        body = parse(DatasetCreate, json_body())
        records = [r.model_dump() for r in body.records]
        return body.name, ingest.parse_records(records, limits=_limits())
    if request.mimetype in _RAW_TYPES:
        name = request.args.get("name") or "dataset"
        parsed = ingest.parse_upload(request.get_data(), filename=request.args.get("filename"),
                                     content_type=request.mimetype, text_column=text_column,
                                     label_column=label_column, limits=_limits())
        return name, parsed
    raise ServiceError(ErrorCode.unsupported_media_type,
                       "Upload a file as multipart/form-data (field 'file'), JSON records, or a raw CSV/TSV/JSONL "
                       "body.", 415)


@bp.post("/datasets")
def create_dataset():
    key = idempotency.request_key()
    name, parsed = _read_upload()
    try:
        _NAME.validate_python(name)
    except ValidationError as exc:
        details = validation_details(exc, "name")
        raise ServiceError(ErrorCode.validation_error, f"name: {details[0]['msg']}.", 422, details) from None
    request_hash = idempotency.fingerprint({"name": name, "sha256": parsed.sha256, "format": parsed.format})
    session = get_session()
    if stored := idempotency.replay(session, "datasets", key, request_hash):
        return stored
    settings = state().settings
    dataset = datasets.add_dataset(session=session, settings=settings, name=name, parsed=parsed)
    body = DatasetRead.model_validate(dataset).model_dump(mode="json")
    location = f"/v1/datasets/{dataset.id}"
    idempotency.remember(session, "datasets", key, request_hash, body, 201, location)
    try:
        session.commit()
    except Exception as exc:  # nothing half-stored: no row without its file, no file without its row
        datasets.records_path(settings, dataset.id).unlink(missing_ok=True)
        session.rollback()
        if isinstance(exc, IntegrityError) and idempotency.is_key_race(exc):
            return idempotency.replay(session, "datasets", key, request_hash)
        raise
    log.info("dataset %s stored: %d rows, %d labels", dataset.id, dataset.row_count, len(dataset.labels))
    return body, 201, {"Location": location}


@bp.get("/datasets")
def list_datasets():
    limit, offset = page_args()
    rows, total = datasets.list_datasets(session=get_session(), limit=limit, offset=offset)
    items = [DatasetRead.model_validate(d).model_dump(mode="json") for d in rows]
    return {"items": items, "total": total, "limit": limit, "offset": offset}


def _dataset_or_404(dataset_id: str, *, lock: bool = False) -> Dataset:
    """The dataset; with `lock`, held exclusively until the request's transaction ends (to delete it)."""
    session, uid = get_session(), parse_uuid(dataset_id, "dataset")
    dataset = (datasets.lock_dataset(session=session, dataset_id=uid, exclusive=True) if lock
               else datasets.get_dataset(session=session, dataset_id=uid))
    if dataset is None:
        raise ServiceError(ErrorCode.not_found, f"No dataset with id {dataset_id}.", 404)
    return dataset


@bp.get("/datasets/<dataset_id>")
def get_dataset(dataset_id: str):
    return DatasetRead.model_validate(_dataset_or_404(dataset_id)).model_dump(mode="json")


@bp.delete("/datasets/<dataset_id>")
def delete_dataset(dataset_id: str):
    # Locked before the in-use check: a job being created on it either committed first (seen here: 409) or
    # waits for this delete and then finds no dataset (core/db/datasets.py lock_dataset).
    dataset = _dataset_or_404(dataset_id, lock=True)
    session = get_session()
    if jobs.dataset_in_use(session=session, dataset_id=dataset.id):
        raise ServiceError(ErrorCode.conflict, "A queued or running job uses this dataset; wait for it or cancel it.",
                           409)
    session.delete(dataset)
    session.commit()
    datasets.records_path(state().settings, dataset.id).unlink(missing_ok=True)
    return "", 204
