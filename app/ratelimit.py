"""Per-key rate limits (Flask-Limiter): one budget per key for each class of request.

The class follows the scope a route needs (app/auth.py): predict routes share RATE_LIMIT_PREDICT, train routes
RATE_LIMIT_TRAIN, everything else RATE_LIMIT_DEFAULT. Requests are counted per API key, or per client address
when keys are off. Counters live in RATE_LIMIT_STORAGE_URL: memory:// counts in each API process (the embedded
default), redis://... shares them across processes and hosts (production).
"""

from __future__ import annotations

import time

from flask import Flask, g, jsonify, request
from flask_limiter import Limit, Limiter, RateLimitExceeded
from flask_limiter.util import get_remote_address

from app import auth
from app.extensions import state
from core.config import Settings
from core.errors import ErrorCode, error_body
from core.spec import Scope


def bucket() -> str:
    """The budget this request draws on: predict, train or default."""
    needed = auth.required_scope(request.method, request.url_rule.rule if request.url_rule else None)
    return str(needed) if needed in (Scope.predict, Scope.train) else "default"


def _limit_string() -> str:
    settings = state().settings
    return {"predict": settings.rate_limit_predict, "train": settings.rate_limit_train}.get(
        bucket(), settings.rate_limit_default)


def client_key() -> str:
    """Who is counted: the API key (set by app.auth before this runs), else the client's address."""
    key = g.get("api_key")
    return f"key:{key.id}" if key is not None else f"addr:{get_remote_address()}"


def init_app(app: Flask, settings: Settings) -> None:
    if not settings.rate_limit_enabled:
        return
    limiter = Limiter(
        client_key,
        # shared=True: every route of a class draws on one budget, named by the scope callable.
        default_limits=[Limit(_limit_string, scope=lambda _endpoint: bucket(), shared=True)],
        storage_uri=settings.rate_limit_storage_url,
        strategy="fixed-window",
        # If Redis is unreachable, count in this process's memory rather than fail requests.
        in_memory_fallback_enabled=True,
        swallow_errors=True,
    )
    limiter.request_filter(lambda: auth.is_public(request.path))
    limiter.init_app(app)

    @app.errorhandler(RateLimitExceeded)
    def _rate_limited(exc: RateLimitExceeded):
        current = limiter.current_limit
        retry_after = max(1, int(current.reset_at - time.time())) if current else 1
        response = jsonify(error_body(ErrorCode.rate_limited,
                                      f"Rate limit exceeded ({exc.description}); retry in {retry_after} s.",
                                      {"limit": exc.description, "retry_after": retry_after}))
        response.status_code = 429
        response.headers["Retry-After"] = str(retry_after)
        return response
