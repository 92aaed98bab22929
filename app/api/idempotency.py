"""Idempotency-Key for POSTs that create things: a retried request gets the first reply, not a second object.
Keys are per API key: one caller's key never replays another caller's reply."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from flask import g, request
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.db.tables import IdempotencyKey
from core.errors import ErrorCode, ServiceError, detail

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255


def request_key() -> str | None:
    """The request's Idempotency-Key header, validated."""
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise ServiceError(ErrorCode.bad_request, f"{HEADER} must be 1 to {MAX_KEY_LENGTH} printable characters.",
                           400)
    return key


def fingerprint(payload: Any) -> str:
    """A hash of what the request asks for (parsed, so a multipart boundary does not change it)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _owner() -> str:
    """Whose Idempotency-Keys the request's are: its API key's id, or "" with auth off (one caller, as before)."""
    caller = g.get("api_key")
    return str(caller.id) if caller is not None else ""


def replay(session: Session, endpoint: str, key: str | None, request_hash: str):
    """This caller's stored reply for this key, or None; a key reused with another body is a 422."""
    if key is None:
        return None
    row = session.get(IdempotencyKey, (endpoint, _owner(), key))
    if row is None:
        return None
    if row.request_hash != request_hash:
        raise ServiceError(ErrorCode.validation_error,
                           f"This {HEADER} was already used with a different request body.", 422,
                           [detail(["header", HEADER], "key reused with another body", "conflict")])
    headers = {"Location": row.location} if row.location else {}
    return row.response, row.status_code, {**headers, "Idempotent-Replayed": "true"}


def remember(session: Session, endpoint: str, key: str | None, request_hash: str, response: dict[str, Any],
             status_code: int, location: str | None) -> None:
    """Store the reply in the caller's transaction, so it commits with the object it describes."""
    if key is not None:
        session.add(IdempotencyKey(endpoint=endpoint, owner=_owner(), key=key, request_hash=request_hash,
                                   response=response, status_code=status_code, location=location))


def forget(session: Session, endpoint: str, key: str | None) -> None:
    """Drop this caller's stored reply (its object was undone), so a retry with the key is a new request."""
    if key is not None:
        session.execute(delete(IdempotencyKey).where(IdempotencyKey.endpoint == endpoint,
                                                     IdempotencyKey.owner == _owner(), IdempotencyKey.key == key))


def is_key_race(exc: IntegrityError) -> bool:
    """True when a concurrent request with the same key committed first."""
    return "idempotency_keys" in str(exc.orig) or "pk_idempotency_keys" in str(exc.orig)
