"""What operators poll: liveness and readiness probes (compose healthchecks) and the Prometheus scrape."""

from __future__ import annotations

import logging

from flask import Blueprint, Response
from sqlalchemy import text

from app import metrics
from app.extensions import get_session, state
from core.db import jobs
from core.worker_start import start_failure

bp = Blueprint("health", __name__)
log = logging.getLogger(__name__)


@bp.get("/healthz")
def healthz():
    """The process answers."""
    return {"status": "ok"}


@bp.get("/readyz")
def readyz():
    """The database and the broker are reachable and a training worker was seen recently (a heartbeat within
    WORKER_SEEN_WITHIN s). When not, `message` says what is wrong: for a missing worker, the reason one that could
    not start left (core.worker_start), or what to check."""
    checks: dict[str, str] = {}
    messages: list[str] = []
    session = get_session()
    try:
        session.execute(text("SELECT 1"))
        checks["database"] = "ok"
        # A worker that stopped consuming (celery#8030) stops beating too: "ready" means jobs will run.
        within = state().settings.worker_seen_within
        if jobs.workers_seen_since(session=session, seconds=within):
            checks["workers"] = "ok"
        else:
            checks["workers"] = "none_seen"
            # A worker that could not start (missing dependencies) left its reason; else say what to look at.
            why = start_failure(state().settings) or (
                f"none sent a heartbeat in the last {within} s: is one running (`textclf worker`, or "
                "`textclf serve` without --no-worker) and able to reach the database? One just started needs "
                "a few seconds")
            messages.append(f"no training worker: {why}")
    except Exception as exc:  # any failure means not ready; the reason goes to the log, not the reply
        log.warning("readiness: database: %s", exc.__class__.__name__)
        checks["database"] = "unavailable"
        messages.append("the database is unreachable (the API's log says why)")
    try:
        with state().celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=2)
        checks["broker"] = "ok"
    except Exception as exc:
        log.warning("readiness: broker: %s", exc.__class__.__name__)
        checks["broker"] = "unavailable"
        messages.append("the broker is unreachable (the API's log says why)")
    ready = all(v == "ok" for v in checks.values())
    reply: dict[str, object] = {"status": "ready" if ready else "unavailable", "checks": checks}
    if messages:
        reply["message"] = "; ".join(messages)
    return reply, 200 if ready else 503


@bp.get("/metrics")
def scrape():
    """Request counts and latencies per route, predictions per model, loaded models, jobs, training time."""
    body, content_type = metrics.render(state().session_factory)
    return Response(body, content_type=content_type)
