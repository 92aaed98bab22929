"""API keys over HTTP (admin scope): create (the secret is in this reply only), list, revoke."""

from __future__ import annotations

import logging

from flask import Blueprint

from app.api.common import json_body, page_args, parse, parse_uuid
from app.auth import key_cache
from app.extensions import get_session
from core.db import api_keys
from core.db.tables import ApiKey
from core.errors import ErrorCode, ServiceError
from core.spec import ApiKeyCreate, ApiKeyCreated, ApiKeyRead

bp = Blueprint("keys", __name__, url_prefix="/v1")
log = logging.getLogger(__name__)


def key_json(key: ApiKey) -> dict:
    return ApiKeyRead.model_validate(key).model_dump(mode="json")


@bp.post("/keys")
def create_key():
    body = parse(ApiKeyCreate, json_body())
    session = get_session()
    key, secret = api_keys.create_key(session=session, name=body.name, scopes=[str(s) for s in body.scopes])
    session.commit()
    log.info("API key %s (%s) created with scopes %s", key.prefix, key.name, key.scopes)
    created = ApiKeyCreated.model_validate({**key_json(key), "key": secret})
    return created.model_dump(mode="json"), 201, {"Location": f"/v1/keys/{key.id}"}


@bp.get("/keys")
def list_keys():
    limit, offset = page_args()
    rows, total = api_keys.list_keys(session=get_session(), limit=limit, offset=offset)
    return {"items": [key_json(k) for k in rows], "total": total, "limit": limit, "offset": offset}


@bp.delete("/keys/<key_id>")
def revoke_key(key_id: str):
    session = get_session()
    key = api_keys.revoke_key(session=session, key_id=parse_uuid(key_id, "API key"))
    if key is None:
        raise ServiceError(ErrorCode.not_found, f"No API key with id {key_id}.", 404)
    session.commit()
    key_cache().forget(key.id)  # at once in this process; others within AUTH_CACHE_SECONDS
    log.info("API key %s (%s) revoked", key.prefix, key.name)
    return "", 204
