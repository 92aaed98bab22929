"""The error vocabulary of the API and of failed jobs, and the JSON shape every error takes."""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Any

from pydantic import ValidationError


class ErrorCode(StrEnum):
    # request errors
    bad_request = "bad_request"
    invalid_json = "invalid_json"
    validation_error = "validation_error"
    invalid_dataset = "invalid_dataset"
    invalid_base_model = "invalid_base_model"
    unauthorized = "unauthorized"
    forbidden = "forbidden"
    not_found = "not_found"
    method_not_allowed = "method_not_allowed"
    conflict = "conflict"
    model_not_ready = "model_not_ready"
    payload_too_large = "payload_too_large"
    uri_too_long = "uri_too_long"
    headers_too_large = "headers_too_large"
    unsupported_media_type = "unsupported_media_type"
    rate_limited = "rate_limited"
    unavailable = "unavailable"
    internal = "internal"
    # job-only codes, shown in GET /v1/jobs/{id}
    dataset_missing = "dataset_missing"
    base_model_missing = "base_model_missing"
    training_diverged = "training_diverged"
    spec_data_mismatch = "spec_data_mismatch"
    worker_lost = "worker_lost"
    time_limit_exceeded = "time_limit_exceeded"
    out_of_memory = "out_of_memory"
    onnx_parity_failed = "onnx_parity_failed"
    cuda_unavailable = "cuda_unavailable"
    training_error = "training_error"
    pruned = "pruned"  # status pruned: the sweep's successive halving stopped the job


class ServiceError(Exception):
    """An error with a stable code, an HTTP status and a message meant for the user."""

    def __init__(self, code: ErrorCode, message: str, status: int = 400, details: Any = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return error_body(self.code, self.message, self.details)


def error_body(code: ErrorCode | str, message: str, details: Any = None) -> dict[str, Any]:
    """The one JSON shape of every non-2xx reply."""
    return {"error": {"code": str(code), "message": message, "details": details}}


def detail(loc: Sequence[str | int], msg: str, kind: str) -> dict[str, Any]:
    """One entry of a 422's details, in pydantic's shape: where in the request (a path of keys and indexes), what
    is wrong, and a stable kind a client can branch on."""
    return {"loc": list(loc), "msg": msg, "type": kind}


def prefixed(details: list[dict[str, Any]], *prefix: str | int) -> list[dict[str, Any]]:
    """The same details located under `prefix` (a sweep child's, a field's)."""
    return [{**d, "loc": [*prefix, *d["loc"]]} for d in details]


def validation_details(exc: ValidationError, *prefix: str | int) -> list[dict[str, Any]]:
    """pydantic errors without the submitted input (it may be huge) or doc URLs, located under `prefix`."""
    return [detail([*prefix, *e["loc"]], e["msg"], e["type"])
            for e in exc.errors(include_url=False, include_input=False, include_context=False)]
