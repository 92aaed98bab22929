"""The OpenAPI 3.1 document (GET /openapi.json), built from the same pydantic schemas the views validate with."""

from __future__ import annotations

import functools
from typing import Any

from flask import Blueprint
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from app import __version__
from app.auth import is_public
from core.base_models import NAME_PATTERN as BASE_MODEL_NAME_PATTERN
from core.base_models import BaseModelRead
from core.spec import (
    ALIAS_PATTERN,
    AliasRead,
    AliasSet,
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyRead,
    DatasetCreate,
    DatasetRead,
    EvaluationRead,
    JobRead,
    JobStatus,
    ModelRead,
    ModelUpdate,
    PredictRequest,
    PredictResponse,
    TrainingSpec,
)
from core.sweeps import SweepCreate, SweepPromote, SweepPromoted, SweepRead

_MODELS: list[type[BaseModel]] = [TrainingSpec, JobRead, DatasetRead, DatasetCreate, ModelRead, ModelUpdate,
                                  PredictRequest, PredictResponse, AliasSet, AliasRead, EvaluationRead, ApiKeyCreate,
                                  ApiKeyRead, ApiKeyCreated, SweepCreate, SweepRead, SweepPromote, SweepPromoted,
                                  BaseModelRead]
REF = "#/components/schemas/{model}"

bp = Blueprint("openapi", __name__)

_ERROR = {
    "type": "object", "required": ["error"],
    "properties": {"error": {
        "type": "object", "required": ["code", "message"],
        "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "details": {}},
    }},
}


_READINESS = {
    "type": "object", "required": ["status", "checks"],
    "properties": {
        "status": {"type": "string", "enum": ["ready", "unavailable"]},
        "checks": {"type": "object", "properties": {
            "database": {"type": "string", "enum": ["ok", "unavailable"]},
            "broker": {"type": "string", "enum": ["ok", "unavailable"]},
            "workers": {"type": "string", "enum": ["ok", "none_seen"],
                        "description": "Absent when the database is unavailable (heartbeats are stored there)."}}},
        "message": {"type": "string", "description": "Why not ready (503 only)."},
    },
}

# One tag per resource, in the order /docs lists them.
TAGS = [
    {"name": "datasets", "description": "Labelled texts to train on (CSV, TSV or JSONL files, or JSON records)."},
    {"name": "jobs", "description": "Training jobs: start one from a spec, follow its progress, cancel it."},
    {"name": "sweeps", "description": "One spec trained several ways (grid or random search), ranked by a metric."},
    {"name": "models", "description": "Trained models: metrics, evaluation, abstain threshold, a portable bundle."},
    {"name": "aliases", "description": "Names that point at a model (`default` serves /v1/predict)."},
    {"name": "base-models", "description": "Pretrained encoders (Hugging Face folders, safetensors weights) that "
                                           "`encoder` jobs fine-tune; installed and removed by admins."},
    {"name": "predict", "description": "Classify texts with a model, an alias or the default model."},
    {"name": "keys", "description": "API keys and their scopes (admin)."},
    {"name": "health", "description": "Liveness and readiness probes (no key needed)."},
    {"name": "metrics", "description": "Prometheus metrics."},
]


def _tag(path: str) -> str:
    """The resource an operation belongs to: its first path segment under /v1, but predicting is its own."""
    if path.endswith("/predict"):
        return "predict"
    if path in ("/healthz", "/readyz"):
        return "health"
    return path.removeprefix("/v1").split("/")[1]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): {"description": "Error", **_json(_ref("Error"))} for s in statuses}


def _page(item: str) -> dict[str, Any]:
    return {"type": "object", "properties": {"items": {"type": "array", "items": _ref(item)},
                                             "total": {"type": "integer"}, "limit": {"type": "integer"},
                                             "offset": {"type": "integer"}}}


def _path_id(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}


_IDEMPOTENCY = {"name": "Idempotency-Key", "in": "header", "required": False,
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                "description": "Retries with the same key and body get the first reply."}

_PAGING = [{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200}},
           {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": 10**9}}]


def component_schemas() -> dict[str, Any]:
    """JSON schemas of every body, keyed by model name."""
    _, top = models_json_schema([(m, "serialization" if m.__name__.endswith(("Read", "Response")) else "validation")
                                 for m in _MODELS], ref_template=REF)
    schemas = dict(top.get("$defs", {}))
    schemas["Error"] = _ERROR
    return schemas


def _add_security_and_tags(paths: dict[str, Any]) -> None:
    """Public paths need no key; every other operation may answer 401, 403 and 429. Each is tagged by resource."""
    for path, item in paths.items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            operation["tags"] = [_tag(path)]
            if is_public(path):
                operation["security"] = []
            else:
                operation["responses"].update(_errors(401, 403, 429))


def build_openapi() -> dict[str, Any]:
    """The whole document served at /openapi.json."""
    upload_schema = {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary"}, "name": {"type": "string"},
        "text_column": {"type": "string"}, "label_column": {"type": "string"}}}
    paths = {
        "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "alive"}}}},
        "/readyz": {"get": {"summary": "Readiness: database, broker and a training worker", "description": (
            "Ready (200) when the database answers, the broker accepts a connection and a training worker sent a "
            "heartbeat (every 15 s) within `WORKER_SEEN_WITHIN` seconds, so a queued job will run. Else 503: "
            "`checks` gives each result, and `message` says what is wrong; for no worker, the reason a worker "
            "that could not start left (say, its training dependencies missing, with the command that installs "
            "them), or what to check."),
            "responses": {"200": {"description": "ready", **_json(_READINESS)},
                          "503": {"description": "not ready", **_json(_READINESS)}}}},
        "/metrics": {"get": {"summary": "Prometheus metrics (text exposition format)", "responses": {
            "200": {"description": "Metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/v1/datasets": {
            "post": {"summary": "Upload a labelled dataset", "parameters": [_IDEMPOTENCY],
                     "requestBody": {"required": True, "content": {
                         "multipart/form-data": {"schema": upload_schema},
                         "application/json": {"schema": _ref("DatasetCreate")},
                         "text/csv": {"schema": {"type": "string"}}}},
                "responses": {"201": {"description": "Stored", **_json(_ref("DatasetRead"))},
                              **_errors(400, 413, 415, 422)}},
            "get": {"summary": "List datasets", "parameters": _PAGING,
                    "responses": {"200": {"description": "A page", **_json(_page("DatasetRead"))}, **_errors(422)}},
        },
        "/v1/datasets/{dataset_id}": {
            "parameters": [_path_id("dataset_id")],
            "get": {"summary": "A dataset", "responses": {"200": {"description": "Found", **_json(_ref("DatasetRead"))},
                                                         **_errors(404)}},
            "delete": {"summary": "Delete a dataset", "responses": {"204": {"description": "Deleted"},
                                                                    **_errors(404, 409)}},
        },
        "/v1/jobs": {
            "post": {"summary": "Start training", "parameters": [_IDEMPOTENCY],
                     "requestBody": {"required": True, **_json(_ref("TrainingSpec"))},
                     "responses": {"202": {"description": "Queued", **_json(_ref("JobRead"))},
                                   **_errors(400, 415, 422, 503)}},
            "get": {"summary": "List jobs", "parameters": [*_PAGING, {"name": "status", "in": "query", "schema": {
                "type": "string", "enum": [status.value for status in JobStatus]}}],
                "responses": {"200": {"description": "A page", **_json(_page("JobRead"))}, **_errors(422)}},
        },
        "/v1/jobs/{job_id}": {"parameters": [_path_id("job_id")], "get": {
            "summary": "A job with progress, history and metrics",
            "responses": {"200": {"description": "Found", **_json(_ref("JobRead"))}, **_errors(404)}}},
        "/v1/jobs/{job_id}/cancel": {"parameters": [_path_id("job_id")], "post": {
            "summary": "Cancel a job (queued: at once; running: within about a second)",
            "responses": {"200": {"description": "Cancelled", **_json(_ref("JobRead"))},
                          "202": {"description": "Cancelling", **_json(_ref("JobRead"))}, **_errors(404, 409)}}},
        "/v1/sweeps": {
            "post": {"summary": "Start a sweep: one job per grid combination or random draw, max_parallel at a time",
                     "parameters": [_IDEMPOTENCY], "requestBody": {"required": True, **_json(_ref("SweepCreate"))},
                     "responses": {"202": {"description": "Queued", **_json(_ref("SweepRead"))},
                                   **_errors(400, 415, 422)}},
            "get": {"summary": "List sweeps (without per-epoch histories)", "parameters": _PAGING,
                    "responses": {"200": {"description": "A page", **_json(_page("SweepRead"))}, **_errors(422)}},
        },
        "/v1/sweeps/{sweep_id}": {"parameters": [_path_id("sweep_id")], "get": {
            "summary": "A sweep: status, leaderboard, best child and every child's per-epoch history",
            "parameters": [{"name": "history", "in": "query", "schema": {"type": "boolean"},
                            "description": "false leaves the per-epoch histories out."}],
            "responses": {"200": {"description": "Found", **_json(_ref("SweepRead"))}, **_errors(404)}}},
        "/v1/sweeps/{sweep_id}/cancel": {"parameters": [_path_id("sweep_id")], "post": {
            "summary": "Cancel every child not finished; no further child starts",
            "responses": {"202": {"description": "Cancelling", **_json(_ref("SweepRead"))}, **_errors(404, 409)}}},
        "/v1/sweeps/{sweep_id}/promote": {"parameters": [_path_id("sweep_id")], "post": {
            "summary": "Point an alias at the best child's model",
            "requestBody": {"required": True, **_json(_ref("SweepPromote"))},
            "responses": {"200": {"description": "Promoted", **_json(_ref("SweepPromoted"))},
                          **_errors(400, 404, 409, 415, 422)}}},
        "/v1/models": {"get": {"summary": "List models", "parameters": _PAGING, "responses": {
            "200": {"description": "A page", **_json(_page("ModelRead"))}, **_errors(422)}}},
        "/v1/models/{model_id}": {
            "parameters": [_path_id("model_id")],
            "get": {"summary": "A model", "responses": {"200": {"description": "Found", **_json(_ref("ModelRead"))},
                                                        **_errors(404, 409)}},
            "patch": {"summary": "Change a model's abstain threshold",
                      "requestBody": {"required": True, **_json(_ref("ModelUpdate"))},
                      "responses": {"200": {"description": "Changed", **_json(_ref("ModelRead"))},
                                    **_errors(400, 404, 409, 415, 422)}},
        },
        "/v1/models/{model_id}/bundle": {"parameters": [_path_id("model_id")], "get": {
            "summary": "A zip with model.onnx, tokenizer.json, labels.json, model_card.json and README.md",
            "responses": {"200": {"description": "The bundle", "content": {
                "application/zip": {"schema": {"type": "string", "format": "binary"}}}},
                          **_errors(404, 409)}}},
        "/v1/models/{model_id}/evaluation": {"parameters": [_path_id("model_id")], "get": {
            "summary": "Validation and test evaluation of a model",
            "responses": {"200": {"description": "Evaluation", **_json(_ref("EvaluationRead"))},
                          **_errors(404, 409)}}},
        "/v1/models/{model_id}/predict": {"parameters": [_path_id("model_id")], "post": {
            "summary": "Classify texts with this model",
            "requestBody": {"required": True, **_json(_ref("PredictRequest"))},
            "responses": {"200": {"description": "Labels", **_json(_ref("PredictResponse"))},
                          **_errors(400, 404, 409, 415, 422)}}},
        "/v1/predict": {"post": {
            "summary": "Classify texts with the default model (or ?alias=)",
            "parameters": [{"name": "alias", "in": "query", "schema": {"type": "string"}}],
            "requestBody": {"required": True, **_json(_ref("PredictRequest"))},
            "responses": {"200": {"description": "Labels", **_json(_ref("PredictResponse"))},
                          **_errors(400, 404, 409, 415, 422)}}},
        "/v1/aliases": {"get": {"summary": "List aliases", "responses": {"200": {"description": "Aliases"}}}},
        "/v1/aliases/{name}": {
            "parameters": [{"name": "name", "in": "path", "required": True,
                            "schema": {"type": "string", "pattern": ALIAS_PATTERN}}],
            "put": {"summary": "Point an alias at a model (loaded and warmed before the alias moves)",
                    "requestBody": {"required": True, **_json(_ref("AliasSet"))},
                    "responses": {"200": {"description": "Set", **_json(_ref("AliasRead"))},
                                  **_errors(400, 409, 415, 422)}},
            "delete": {"summary": "Remove an alias", "responses": {"204": {"description": "Removed"},
                                                                   **_errors(404, 422)}},
        },
        "/v1/base-models": {
            "post": {"summary": "Install a base model (admin): a zip of its Hugging Face folder (config.json, "
                                "model.safetensors, tokenizer.json), at the root or in one top-level folder",
                     "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                         "type": "object", "required": ["file"], "properties": {
                             "file": {"type": "string", "format": "binary"},
                             "name": {"type": "string", "pattern": BASE_MODEL_NAME_PATTERN,
                                      "description": "Default: the zip's top-level folder, else the zip's name."}}}}}},
                     "responses": {"201": {"description": "Installed", **_json(_ref("BaseModelRead"))},
                                   **_errors(400, 409, 413, 415, 422)}},
            "get": {"summary": "List installed base models, oldest first", "responses": {
                "200": {"description": "All of them", **_json({
                    "type": "object", "properties": {"items": {"type": "array", "items": _ref("BaseModelRead")}}})}}},
        },
        "/v1/base-models/{name}": {
            "parameters": [{"name": "name", "in": "path", "required": True,
                            "schema": {"type": "string", "pattern": BASE_MODEL_NAME_PATTERN}}],
            "get": {"summary": "A base model", "responses": {
                "200": {"description": "Found", **_json(_ref("BaseModelRead"))}, **_errors(404)}},
            "delete": {"summary": "Remove a base model and its files (admin)", "responses": {
                "204": {"description": "Removed"}, **_errors(404, 409)}},
        },
        "/v1/keys": {
            "post": {"summary": "Create an API key (admin); its secret is in this reply only",
                     "requestBody": {"required": True, **_json(_ref("ApiKeyCreate"))},
                     "responses": {"201": {"description": "Created", **_json(_ref("ApiKeyCreated"))},
                                   **_errors(400, 415, 422)}},
            "get": {"summary": "List API keys (admin); secrets are never shown", "parameters": _PAGING,
                    "responses": {"200": {"description": "A page", **_json(_page("ApiKeyRead"))}, **_errors(422)}},
        },
        "/v1/keys/{key_id}": {"parameters": [_path_id("key_id")], "delete": {
            "summary": "Revoke an API key (admin)",
            "responses": {"204": {"description": "Revoked"}, **_errors(404)}}},
    }
    _add_security_and_tags(paths)
    return {
        "openapi": "3.1.0",
        "tags": TAGS,
        "security": [{"bearer": []}],
        "info": {"title": "textclf", "version": __version__,
                 "description": "Train text classifiers on demand and serve them."},
        "paths": paths,
        "components": {"schemas": component_schemas(), "securitySchemes": {"bearer": {
            "type": "http", "scheme": "bearer",
            "description": "An API key (`textclf keys create`); scopes: read, train, predict, admin."}}},
    }


@functools.cache
def _document() -> dict:
    return build_openapi()


@bp.get("/openapi.json")
def openapi_json():
    return _document()
