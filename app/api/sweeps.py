"""Sweeps: create (children queued, max_parallel of them sent), read with leaderboard, cancel, promote."""

from __future__ import annotations

import logging
import uuid

from flask import Blueprint, request
from sqlalchemy.exc import IntegrityError

from app.api import idempotency
from app.api.common import json_body, page_args, parse, parse_uuid
from app.extensions import get_session, state
from app.serving import move_alias
from core.db import sweeps
from core.db.tables import Sweep
from core.dispatch import start_next_children
from core.errors import ErrorCode, ServiceError, detail
from core.limits import check_spec
from core.spec import TERMINAL_STATUSES
from core.sweeps import SweepCreate, SweepError, SweepPromote, SweepPromoted, child_specs

bp = Blueprint("sweeps", __name__, url_prefix="/v1")
log = logging.getLogger(__name__)


def _get(sweep_id: str) -> Sweep:
    sweep = sweeps.get_sweep(session=get_session(), sweep_id=parse_uuid(sweep_id, "sweep"))
    if sweep is None:
        raise ServiceError(ErrorCode.not_found, f"No sweep with id {sweep_id}.", 404)
    return sweep


@bp.post("/sweeps")
def create_sweep():
    key = idempotency.request_key()
    body = parse(SweepCreate, json_body())
    settings = state().settings
    if body.size() > settings.max_sweep_children:
        where = "grid" if body.grid is not None else "samples"
        raise ServiceError(ErrorCode.validation_error,
                           f"This sweep has {body.size()} children; this server allows {settings.max_sweep_children} "
                           "(MAX_SWEEP_CHILDREN).", 422,
                           [detail([where], f"{body.size()} children > {settings.max_sweep_children}",
                                   "less_than_equal")])
    try:
        children = child_specs(body)
    except SweepError as exc:
        raise ServiceError(ErrorCode.validation_error, exc.message, 422, exc.details) from None
    session = get_session()
    request_hash = idempotency.fingerprint(body.model_dump(mode="json"))
    if stored := idempotency.replay(session, "sweeps", key, request_hash):
        return stored
    # Every child is checked against the data and the server's ceilings before anything is stored.
    children = [(params, check_spec(session, spec, state().settings, loc=("children", index)))
                for index, (params, spec) in enumerate(children)]
    sweep = sweeps.create_sweep(session=session, request=body, children=children)
    reply = sweeps.sweep_json(sweep, session)
    location = f"/v1/sweeps/{sweep.id}"
    idempotency.remember(session, "sweeps", key, request_hash, reply, 202, location)
    try:
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        if idempotency.is_key_race(exc):
            return idempotency.replay(session, "sweeps", key, request_hash)
        raise
    # The first max_parallel children go to the broker now; each one that ends sends the next. If the broker is
    # down nothing is lost: the children are stored, and the reaper sends them once it is back.
    start_next_children(sessionmaker=state().session_factory, send=state().send_job, sweep_id=sweep.id)
    log.info("sweep %s: %d children (%d distinct) on dataset %s", sweep.id, len(children),
             len({c["job_id"] for c in sweep.children}), body.dataset_id)
    return reply, 202, {"Location": location}


@bp.get("/sweeps")
def list_sweeps():
    limit, offset = page_args()
    session = get_session()
    rows, total = sweeps.list_sweeps(session=session, limit=limit, offset=offset)
    return {"items": [sweeps.sweep_json(s, session, with_history=False) for s in rows], "total": total,
            "limit": limit, "offset": offset}


@bp.get("/sweeps/<sweep_id>")
def get_sweep(sweep_id: str):
    with_history = request.args.get("history", "true").lower() not in ("false", "0", "no")
    return sweeps.sweep_json(_get(sweep_id), get_session(), with_history=with_history)


@bp.post("/sweeps/<sweep_id>/cancel")
def cancel_sweep(sweep_id: str):
    """No more children start; queued ones are cancelled, running ones stop within about a second."""
    sweep = _get(sweep_id)
    session = get_session()
    status = sweeps.sweep_json(sweep, session, with_history=False)["status"]
    if status in TERMINAL_STATUSES:
        raise ServiceError(ErrorCode.conflict, f"Sweep {sweep_id} already ended ({status}); nothing to cancel.", 409,
                           {"status": status})
    sweeps.cancel_sweep(session=session, sweep_id=sweep.id)
    session.commit()
    session.refresh(sweep)
    return sweeps.sweep_json(sweep, session, with_history=False), 202


@bp.post("/sweeps/<sweep_id>/promote")
def promote(sweep_id: str):
    """Point an alias at the best child's model (the leaderboard's first succeeded child)."""
    body = parse(SweepPromote, json_body())
    sweep = _get(sweep_id)
    best = sweeps.sweep_json(sweep, get_session(), with_history=False)["best"]
    if best is None:
        raise ServiceError(ErrorCode.conflict, "No child of this sweep has succeeded yet; nothing to promote.", 409)
    move_alias(get_session, state().directory, body.alias, uuid.UUID(best["model_id"]))
    log.info("sweep %s: alias %s -> model %s (child %d)", sweep.id, body.alias, best["model_id"], best["index"])
    return SweepPromoted(alias=body.alias, model_id=best["model_id"], job_id=best["job_id"], child=best["index"],
                         metric=sweep.metric, value=best[sweep.metric]).model_dump(mode="json")
