"""Models, aliases and predictions."""

from __future__ import annotations

import re
import time

from flask import Blueprint, request, send_file

from app import bundle, metrics
from app.api.common import json_body, page_args, parse, parse_uuid
from app.extensions import get_session, state
from app.serving import ServedModel, loaded_predictor, move_alias
from core.db import jobs, registry
from core.db.tables import Model
from core.errors import ErrorCode, ServiceError, detail
from core.ingest import SURROGATE
from core.ml.predictor import choose_providers
from core.spec import ALIAS_PATTERN, AliasRead, AliasSet, ModelRead, ModelUpdate, PredictRequest

bp = Blueprint("models", __name__, url_prefix="/v1")


def model_json(model: Model) -> dict:
    # What any API process of this server asks onnxruntime for, loaded or not, so every process answers alike.
    providers = choose_providers()
    return ModelRead.model_validate(model).model_copy(update={"providers": providers}).model_dump(mode="json")


def _model_or_404(model_id: str) -> Model:
    uid = parse_uuid(model_id, "model")
    session = get_session()
    model = registry.get_model(session=session, model_id=uid)
    if model is None:
        job = jobs.get_job(session=session, job_id=uid)
        if job is not None and job.model_id is not None:
            raise ServiceError(ErrorCode.conflict, f"{uid} is a job id, not a model id; its model is {job.model_id}.",
                               409, {"job_status": job.status, "model_id": str(job.model_id)})
        if job is not None:  # a job id: its model is not there yet (or never will be)
            raise ServiceError(ErrorCode.model_not_ready, f"Job {uid} is {job.status}; it has no model yet.", 409,
                               {"job_status": job.status})
        raise ServiceError(ErrorCode.not_found, f"No model with id {model_id}.", 404)
    return model


@bp.get("/models")
def list_models():
    limit, offset = page_args()
    rows, total = registry.list_models(session=get_session(), limit=limit, offset=offset)
    return {"items": [model_json(m) for m in rows], "total": total, "limit": limit, "offset": offset}


@bp.get("/models/<model_id>")
def get_model(model_id: str):
    return model_json(_model_or_404(model_id))


@bp.get("/models/<model_id>/evaluation")
def get_evaluation(model_id: str):
    """Validation and test evaluation of the exported model (metrics, per class, confusion matrix, mistakes)."""
    model = _model_or_404(model_id)
    return {"model_id": str(model.id), **(model.evaluation or {"validation": None, "test": None})}


def _predict(served: ServedModel, alias: str | None = None):
    settings = state().settings
    if not settings.predict_batching:
        return _answer(served, alias, None)
    batcher = state().predictors.batcher(served.id)
    with batcher.arriving() as arrival:  # a leader about to run a batch may wait for this request
        return _answer(served, alias, lambda texts, predictor: batcher.run(
            texts, time.monotonic() + settings.predict_timeout_seconds, predictor.predict_proba, arrival))


def _answer(served: ServedModel, alias: str | None, batched):
    """Validate the request and classify its texts: in one batch with other requests (`batched(texts, predictor)`
    -> probabilities) or alone (None)."""
    body = parse(PredictRequest, json_body())
    settings = state().settings
    if len(body.texts) > settings.max_predict_texts:
        raise ServiceError(ErrorCode.validation_error,
                           f"At most {settings.max_predict_texts} texts per request (MAX_PREDICT_TEXTS).", 422,
                           [detail(["texts"], "too many texts", "too_long")])
    _refuse_texts([i for i, t in enumerate(body.texts) if len(t) > settings.max_text_chars],
                  f"Texts longer than {settings.max_text_chars} characters (MAX_TEXT_CHARS).", "text too long",
                  "too_long")
    # JSON "\ud800" escapes decode to strings the tokenizer (UTF-8) cannot take; uploads refuse them too.
    _refuse_texts([i for i, t in enumerate(body.texts) if SURROGATE.search(t)],
                  "Texts with an unpaired UTF-16 surrogate escape (\\ud800-\\udfff).", "unpaired surrogate",
                  "value_error")
    predictor = loaded_predictor(state().predictors, served)
    # All texts of the request are tokenised together and scored in one onnxruntime call (with other requests'
    # texts when batching).
    proba = predictor.predict_proba(body.texts) if batched is None else batched(body.texts, predictor)
    predictions = predictor.rank(proba, top_k=body.top_k, abstain_threshold=served.abstain_threshold)
    version = str(served.version)
    metrics.PREDICTIONS.labels(served.name, version).inc(len(predictions))
    if abstained := sum(p["abstained"] for p in predictions):
        metrics.ABSTENTIONS.labels(served.name, version).inc(abstained)
    return {"model_id": str(served.id), "model_name": served.name, "model_version": served.version, "alias": alias,
            "predictions": predictions}


def _refuse_texts(indexes: list[int], message: str, msg: str, kind: str) -> None:
    """A 422 naming the first texts (by index) that fail one check, if any do."""
    if indexes:
        raise ServiceError(ErrorCode.validation_error, message, 422,
                           [detail(["texts", i], msg, kind) for i in indexes[:10]])


@bp.post("/models/<model_id>/predict")
def predict_with_model(model_id: str):
    served = state().directory.model(get_session, parse_uuid(model_id, "model"))
    if served is None:
        _model_or_404(model_id)  # a job id (409) or nothing (404)
    return _predict(served)


@bp.post("/predict")
def predict_default():
    alias = request.args.get("alias") or None
    target = state().directory.target(get_session, alias)
    if target is None:
        if alias:
            raise ServiceError(ErrorCode.not_found, f"No alias named {alias!r}.", 404)
        raise ServiceError(ErrorCode.model_not_ready, "No model has been trained yet.", 409)
    return _predict(*target)


@bp.patch("/models/<model_id>")
def update_model(model_id: str):
    """Change a model's serving options (the abstain threshold)."""
    model = _model_or_404(model_id)
    body = parse(ModelUpdate, json_body())
    threshold = body.abstain_threshold
    unknown = sorted(set(threshold) - set(model.labels)) if isinstance(threshold, dict) else []
    if unknown:
        raise ServiceError(ErrorCode.validation_error, f"abstain_threshold names labels the model lacks: "
                           f"{unknown[:10]}", 422,
                           [detail(["abstain_threshold", label], "label not in model", "not_found")
                            for label in unknown[:10]])
    model.abstain_threshold = threshold
    get_session().commit()
    # This process sees the change at once; the others within MODEL_REFRESH_SECONDS.
    state().directory.forget(model_id=model.id)
    return model_json(model)


@bp.get("/models/<model_id>/bundle")
def get_bundle(model_id: str):
    """A zip with everything needed to classify text without this service: model.onnx, tokenizer.json,
    labels.json, model_card.json and README.md."""
    model = _model_or_404(model_id)
    folder = state().settings.models_dir / str(model.id)
    if not (folder / "model.onnx").is_file():
        raise ServiceError(ErrorCode.model_not_ready, "The model's artifacts are not available on this server.", 409)
    archive = bundle.write_bundle(model, folder)
    return send_file(archive, mimetype="application/zip", as_attachment=True,
                     download_name=f"{bundle.safe_name(model.name)}-v{model.version}.zip")


@bp.get("/aliases")
def list_aliases():
    rows = registry.list_aliases(session=get_session())
    return {"items": [AliasRead.model_validate(a).model_dump(mode="json") for a in rows]}


def _check_alias_name(name: str) -> None:
    if not re.match(ALIAS_PATTERN, name):
        raise ServiceError(ErrorCode.validation_error, "Alias names are 1-64 letters, digits, '_', '.' or '-'.", 422,
                           [detail(["path", "name"], "invalid alias name", "pattern")])


@bp.put("/aliases/<name>")
def set_alias(name: str):
    _check_alias_name(name)
    body = parse(AliasSet, json_body())
    session = get_session()
    if registry.get_model(session=session, model_id=body.model_id) is None:
        raise ServiceError(ErrorCode.validation_error, f"No model with id {body.model_id}.", 422,
                           [detail(["model_id"], "model not found", "not_found")])
    alias = move_alias(get_session, state().directory, name, body.model_id)
    return AliasRead.model_validate(alias).model_dump(mode="json")


@bp.delete("/aliases/<name>")
def delete_alias(name: str):
    _check_alias_name(name)
    session = get_session()
    if not registry.delete_alias(session=session, name=name):
        raise ServiceError(ErrorCode.not_found, f"No alias named {name!r}.", 404)
    session.commit()
    state().directory.forget(alias=name)
    return "", 204
