"""Liveness and readiness probes (used by compose healthchecks)."""

from __future__ import annotations

import logging

from flask import Blueprint
from sqlalchemy import text

from app.db import jobs
from app.extensions import get_session, state

bp = Blueprint("health", __name__)
log = logging.getLogger(__name__)


@bp.get("/healthz")
def healthz():
    """The process answers."""
    return {"status": "ok"}


@bp.get("/readyz")
def readyz():
    """The database and the broker are reachable and a training worker was seen recently."""
    checks: dict[str, str] = {}
    session = get_session()
    try:
        session.execute(text("SELECT 1"))
        checks["database"] = "ok"
        # A worker that stopped consuming (celery#8030) stops beating too: "ready" means jobs will run.
        within = state().settings.worker_seen_within
        checks["workers"] = "ok" if jobs.workers_seen_since(session=session, seconds=within) else "none_seen"
    except Exception as exc:  # any failure means not ready; the reason goes to the log, not the reply
        log.warning("readiness: database: %s", exc.__class__.__name__)
        checks["database"] = "unavailable"
    try:
        with state().celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=2)
        checks["broker"] = "ok"
    except Exception as exc:
        log.warning("readiness: broker: %s", exc.__class__.__name__)
        checks["broker"] = "unavailable"
    ready = all(v == "ok" for v in checks.values())
    return {"status": "ready" if ready else "unavailable", "checks": checks}, 200 if ready else 503
