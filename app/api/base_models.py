"""Base models (pretrained encoders that `encoder` jobs fine-tune): install from a zip (admin), list, read, remove."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from flask import Blueprint, request
from werkzeug.exceptions import RequestEntityTooLarge

from app.extensions import get_session, state
from core.base_models import BaseModelRead, check_name, extract_zip, remove_base_model_files
from core.db import base_models
from core.errors import ErrorCode, ServiceError

bp = Blueprint("base_models", __name__, url_prefix="/v1")
log = logging.getLogger(__name__)


def _too_large(limit_mb: int) -> ServiceError:
    return ServiceError(ErrorCode.payload_too_large,
                        f"A base model upload may be at most {limit_mb} MiB (BASE_MODEL_MAX_UPLOAD_MB).", 413)


@bp.post("/base-models")
def install_base_model():
    settings = state().settings
    limit = settings.base_model_max_upload_mb * 1024 * 1024
    # Weights are far larger than any dataset: this route has its own ceiling instead of MAX_UPLOAD_BYTES.
    request.max_content_length = limit
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(settings.base_model_max_upload_mb)
    if request.mimetype != "multipart/form-data":
        raise ServiceError(ErrorCode.unsupported_media_type, "Upload the model folder as a zip in multipart/form-data "
                           "(field 'file', optional field 'name').", 415)
    try:
        upload = request.files.get("file")  # werkzeug spools a large part to a temporary file, not memory
        name = request.form.get("name") or None
    except RequestEntityTooLarge:  # a chunked body with no Content-Length, cut off at the limit
        raise _too_large(settings.base_model_max_upload_mb) from None
    if upload is None:
        raise ServiceError(ErrorCode.bad_request, "Multipart upload needs a 'file' part (a zip of the folder).", 400)
    if name is not None:
        check_name(name)  # before unpacking anything
    settings.base_models_dir.mkdir(parents=True, exist_ok=True)
    session = get_session()
    # Unpacked on the volume the model will live on, so installing moves the files instead of copying them.
    with tempfile.TemporaryDirectory(prefix=".upload-", dir=settings.base_models_dir) as tmp:
        folder = extract_zip(upload.stream, Path(tmp), max_bytes=limit)
        if name is None:  # the zip's one top-level folder, else the zip's own name
            name = folder.name if folder != Path(tmp) else Path(upload.filename or "").stem
        row = base_models.install_base_model(session=session, settings=settings, src=folder, name=name, move=True)
        body = BaseModelRead.model_validate(row).model_dump(mode="json")
        try:
            session.commit()
        except Exception:  # no folder without its row
            remove_base_model_files(settings, row.name)
            raise
    log.info("base model %s installed: %s, %d parameters", row.name, row.architecture, row.num_parameters)
    return body, 201, {"Location": f"/v1/base-models/{row.name}"}


@bp.get("/base-models")
def list_base_models():
    rows = base_models.list_base_models(session=get_session())
    return {"items": [BaseModelRead.model_validate(r).model_dump(mode="json") for r in rows]}


@bp.get("/base-models/<name>")
def get_base_model(name: str):
    row = base_models.get_base_model(session=get_session(), name=name)
    if row is None:
        raise ServiceError(ErrorCode.not_found, f"No base model named {name[:200]!r}.", 404)
    return BaseModelRead.model_validate(row).model_dump(mode="json")


@bp.delete("/base-models/<name>")
def delete_base_model(name: str):
    session = get_session()
    base_models.delete_base_model(session=session, name=name)
    session.commit()
    remove_base_model_files(state().settings, name)  # after the commit: a failed one leaves the model usable
    log.info("base model %s removed", name)
    return "", 204
