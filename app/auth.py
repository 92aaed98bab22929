"""API key authentication and the scope every route needs, enforced in one before_request hook.

ROUTE_SCOPES is the whole access map: (method, Flask URL rule) -> scope. A route that is neither listed there
nor public needs `admin`, so a new endpoint is closed until someone decides who may call it
(tests/unit/test_auth.py fails for every /v1 route missing from the map).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from flask import Flask, Response, g, jsonify, request
from sqlalchemy.exc import OperationalError

from app.extensions import get_session, state
from core.config import Settings
from core.db import api_keys
from core.errors import ErrorCode, error_body
from core.spec import Scope

log = logging.getLogger(__name__)

ROUTE_SCOPES: dict[tuple[str, str], Scope] = {
    # read: look at anything
    ("GET", "/v1/datasets"): Scope.read,
    ("GET", "/v1/datasets/<dataset_id>"): Scope.read,
    ("GET", "/v1/jobs"): Scope.read,
    ("GET", "/v1/jobs/<job_id>"): Scope.read,
    ("GET", "/v1/models"): Scope.read,
    ("GET", "/v1/models/<model_id>"): Scope.read,
    ("GET", "/v1/models/<model_id>/evaluation"): Scope.read,
    ("GET", "/v1/models/<model_id>/bundle"): Scope.read,
    ("GET", "/v1/aliases"): Scope.read,
    ("GET", "/v1/base-models"): Scope.read,
    ("GET", "/v1/base-models/<name>"): Scope.read,
    ("GET", "/v1/sweeps"): Scope.read,
    ("GET", "/v1/sweeps/<sweep_id>"): Scope.read,
    ("GET", "/metrics"): Scope.read,
    # train: data in, jobs started and stopped
    ("POST", "/v1/datasets"): Scope.train,
    ("DELETE", "/v1/datasets/<dataset_id>"): Scope.train,
    ("POST", "/v1/jobs"): Scope.train,
    ("POST", "/v1/jobs/<job_id>/cancel"): Scope.train,
    ("POST", "/v1/sweeps"): Scope.train,
    ("POST", "/v1/sweeps/<sweep_id>/cancel"): Scope.train,
    # predict
    ("POST", "/v1/models/<model_id>/predict"): Scope.predict,
    ("POST", "/v1/predict"): Scope.predict,
    # admin: what changes what others are served, and the keys themselves
    ("PATCH", "/v1/models/<model_id>"): Scope.admin,  # abstain thresholds change what others are served
    ("PUT", "/v1/aliases/<name>"): Scope.admin,
    ("DELETE", "/v1/aliases/<name>"): Scope.admin,
    ("POST", "/v1/sweeps/<sweep_id>/promote"): Scope.admin,  # moves an alias
    ("POST", "/v1/base-models"): Scope.admin,  # what every encoder job runs: weights from outside
    ("DELETE", "/v1/base-models/<name>"): Scope.admin,
    ("GET", "/v1/keys"): Scope.admin,
    ("POST", "/v1/keys"): Scope.admin,
    ("DELETE", "/v1/keys/<key_id>"): Scope.admin,
}

# Served to anyone: probes, the API description, the documentation and the dashboard's pages (app/web.py: static
# shells holding no data, which then call /v1 with the key their user types in).
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/", "/docs", "/models", "/try", "/sweeps"})
PUBLIC_PREFIXES = ("/docs/", "/static/", "/jobs/", "/sweeps/")

REALM = 'Bearer realm="textclf"'


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def required_scope(method: str, rule: str | None) -> Scope | None:
    """The scope a request needs; None means any valid key (paths that match no route: 404, 405)."""
    if rule is None or method == "OPTIONS":
        return None
    method = "GET" if method == "HEAD" else method
    return ROUTE_SCOPES.get((method, rule), Scope.admin)


def allows(scopes: Iterable[str], needed: Scope | None) -> bool:
    """Whether a key with `scopes` may make a request that needs `needed`."""
    held = set(scopes)
    return needed is None or Scope.admin in held or needed in held


def bearer_token() -> str | None:
    """The key from `Authorization: Bearer <key>`, or None."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _deny(status: int, code: ErrorCode, message: str, challenge: str, details=None) -> Response:
    response = jsonify(error_body(code, message, details))
    response.status_code = status
    response.headers["WWW-Authenticate"] = challenge
    return response


@dataclass(frozen=True)
class Caller:
    """A verified key: what the rest of a request needs of it (the rate limiter counts per id)."""

    id: uuid.UUID
    prefix: str
    scopes: tuple[str, ...]


class KeyCache:
    """Keys verified in the last `ttl_s` seconds, by hash, in this process: a predict then costs no database read
    for the key (about as much as the model call itself). The price: a key revoked from elsewhere (another API
    process, `textclf keys revoke`) keeps working here for at most `ttl_s` seconds; a revoke through this
    process's API takes effect at once. ttl_s = 0 checks the database on every request."""

    MAX_ENTRIES = 10_000  # past this many distinct keys, start over rather than grow without bound

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.clock = clock  # tests move time on with their own clock instead of sleeping
        self._items: dict[str, tuple[float, Caller]] = {}
        self._lock = threading.Lock()

    def get(self, digest: str) -> Caller | None:
        item = self._items.get(digest)
        if item is None or item[0] < self.clock():
            return None
        return item[1]

    def put(self, digest: str, caller: Caller) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            if len(self._items) >= self.MAX_ENTRIES:
                self._items.clear()
            self._items[digest] = (self.clock() + self.ttl_s, caller)

    def forget(self, key_id: uuid.UUID) -> None:
        with self._lock:
            self._items = {d: item for d, item in self._items.items() if item[1].id != key_id}


def key_cache() -> KeyCache:
    """This app's cache (one per process and app)."""
    from flask import current_app

    return current_app.extensions["textclf_key_cache"]


def authenticate() -> Response | None:
    """before_request: let the request through, or answer 401/403 in the JSON error shape."""
    g.api_key = None
    # OPTIONS (a browser's CORS preflight) carries no credentials by design and returns no data.
    if is_public(request.path) or request.method == "OPTIONS" or not state().settings.auth_required:
        return None
    secret = bearer_token()
    if secret is None:
        return _deny(401, ErrorCode.unauthorized, "An API key is required: send 'Authorization: Bearer <key>'.",
                     REALM)
    cache = key_cache()
    digest = api_keys.hash_key(secret)
    caller = cache.get(digest)
    if caller is None:
        session = get_session()
        key = api_keys.find_active_key(session=session, secret=secret)
        if key is None:
            return _deny(401, ErrorCode.unauthorized, "The API key is not valid (unknown or revoked).",
                         f'{REALM}, error="invalid_token"')
        try:
            if api_keys.touch_key(session=session, key=key):
                session.commit()
        except OperationalError as exc:  # last_used_at is a hint: a locked database must not fail the request
            session.rollback()
            log.warning("could not record use of key %s: %s", key.prefix, exc.__class__.__name__)
        caller = Caller(id=key.id, prefix=key.prefix, scopes=tuple(key.scopes))
        cache.put(digest, caller)
    g.api_key = key = caller
    needed = required_scope(request.method, request.url_rule.rule if request.url_rule else None)
    if not allows(key.scopes, needed):
        return _deny(403, ErrorCode.forbidden, f"This API key lacks the '{needed}' scope.",
                     f'{REALM}, error="insufficient_scope", scope="{needed}"',
                     {"required_scope": str(needed), "key_scopes": list(key.scopes)})
    return None


def init_app(app: Flask, settings: Settings) -> None:
    """Register the hook (before the rate limiter's, so limits count per key). Auth off is logged loudly."""
    if not settings.auth_required:
        log.warning("AUTH_REQUIRED is false: every endpoint is open to anyone who can reach this server")
    app.extensions["textclf_key_cache"] = KeyCache(settings.auth_cache_seconds)
    app.before_request(authenticate)
