"""textclf: train text classifiers on demand and serve them. `create_app` builds the Flask API."""

from __future__ import annotations

from flask import Flask
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings, get_settings
from core.logs import configure_logging

__version__ = "0.1.0"


def create_app(settings: Settings | None = None, *, session_factory: sessionmaker[Session] | None = None) -> Flask:
    """The API. Tests pass their own settings and a connection-bound sessionmaker."""
    # Imported here, as in Flask's tutorial: `textclf` client verbs import this package without loading the
    # views, onnxruntime and Celery.
    from app import auth, errors_http, extensions, middleware, openapi, ratelimit, web
    from app.api import base_models, datasets, health, jobs, keys, models, sweeps

    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_format)
    app = Flask(__name__)
    # Werkzeug answers 413 itself once a body passes this size, before a view reads it.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    app.json.sort_keys = False
    extensions.init_app(app, settings, session_factory=session_factory)
    errors_http.init_app(app)
    middleware.init_app(app)
    if settings.cors_origin_list:
        from flask_cors import CORS

        # Only the API, only the listed origins; the key travels in a header, never in cookies.
        CORS(app, resources={r"/v1/*": {"origins": settings.cors_origin_list}},
             allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID"],
             expose_headers=["X-Request-ID", "Retry-After", "Location"], max_age=600)
    auth.init_app(app, settings)  # before the rate limiter: limits count per authenticated key
    ratelimit.init_app(app, settings)
    for module in (health, datasets, jobs, sweeps, models, base_models, keys, openapi, web):
        app.register_blueprint(module.bp)
    return app
