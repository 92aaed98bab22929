"""Prometheus scrape endpoint."""

from __future__ import annotations

from flask import Blueprint, Response

from app import metrics
from app.extensions import state

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def scrape():
    """Request counts and latencies per route, predictions per model, loaded models, jobs, training time."""
    body, content_type = metrics.render(state().session_factory)
    return Response(body, content_type=content_type)
