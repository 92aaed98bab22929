"""Sweep data functions: create the children, hand out parallel slots, cancel. They add and flush; the caller
owns the transaction and sends the returned jobs to the broker after committing."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from core.db import jobs
from core.db.base import utcnow
from core.db.tables import Sweep, TrainingJob
from core.spec import ACTIVE_STATUSES, JobStatus, TrainingSpec
from core.sweeps import SweepCreate, SweepRead, child_row, rank, spec_hash

# A job whose message a worker may be holding: it occupies one of its sweep's parallel slots.
_IN_FLIGHT = or_(TrainingJob.status.in_((JobStatus.running, JobStatus.cancelling)),
                 and_(TrainingJob.status == JobStatus.queued, TrainingJob.sent_at.is_not(None)))

Send = tuple[uuid.UUID, int | None]  # (job id, max_runtime_seconds): what the broker message needs


def create_sweep(*, session: Session, request: SweepCreate,
                 children: list[tuple[dict[str, Any], TrainingSpec]]) -> Sweep:
    """The sweep and one queued job per distinct child spec (none sent yet: see dispatch).

    A child whose spec equals an earlier child's shares its job (`duplicate_of`); one equal to a job that
    already succeeded on this data reuses that job and its model (`reused`).
    """
    sweep = Sweep(name=request.name, dataset_id=request.dataset_id, request=request.model_dump(mode="json"),
                  metric=request.metric, max_parallel=request.max_parallel, children=[])
    session.add(sweep)
    session.flush()
    rows: list[dict[str, Any]] = []
    first_by_hash: dict[str, int] = {}
    for index, (params, spec) in enumerate(children):
        digest = spec_hash(spec)
        if digest in first_by_hash:
            original = rows[first_by_hash[digest]]
            rows.append({"params": params, "job_id": original["job_id"], "duplicate_of": first_by_hash[digest],
                         "reused": original["reused"]})
            continue
        first_by_hash[digest] = index
        earlier = session.scalar(select(TrainingJob.id).where(TrainingJob.spec_hash == digest,
                                                              TrainingJob.status == JobStatus.succeeded)
                                 .order_by(TrainingJob.finished_at.desc()).limit(1))
        if earlier is not None:
            rows.append({"params": params, "job_id": str(earlier), "duplicate_of": None, "reused": True})
            continue
        job = jobs.create_job(session=session, spec=spec)
        job.sweep_id, job.sweep_index = sweep.id, index
        rows.append({"params": params, "job_id": str(job.id), "duplicate_of": None, "reused": False})
    sweep.children = rows
    session.flush()
    return sweep


def get_sweep(*, session: Session, sweep_id: uuid.UUID) -> Sweep | None:
    return session.get(Sweep, sweep_id)


def list_sweeps(*, session: Session, limit: int, offset: int) -> tuple[list[Sweep], int]:
    total = session.scalar(select(func.count()).select_from(Sweep)) or 0
    rows = session.scalars(select(Sweep).order_by(Sweep.created_at.desc(), Sweep.id).limit(limit).offset(offset))
    return list(rows), total


def claim_free_slots(*, session: Session, sweep_id: uuid.UUID) -> list[Send]:
    """Mark as sent as many of the sweep's unsent queued children as its free slots allow, oldest first, and
    return them for the caller to send once committed. Safe to call from anywhere at any time (the API after
    creating, a worker after each child ends, the reaper as a backstop): the sweep row's lock makes concurrent
    callers take turns, so together they never exceed max_parallel."""
    locked = session.execute(update(Sweep).where(Sweep.id == sweep_id, Sweep.cancelled_at.is_(None))
                             .values(dispatched_at=utcnow()).execution_options(synchronize_session=False))
    if locked.rowcount != 1:
        return []  # cancelled (or gone): nothing more starts
    max_parallel = session.scalar(select(Sweep.max_parallel).where(Sweep.id == sweep_id)) or 1
    busy = session.scalar(select(func.count()).select_from(TrainingJob)
                          .where(TrainingJob.sweep_id == sweep_id, _IN_FLIGHT)) or 0
    free = max_parallel - busy
    if free <= 0:
        return []
    waiting = session.execute(
        select(TrainingJob.id, TrainingJob.spec)
        .where(TrainingJob.sweep_id == sweep_id, TrainingJob.status == JobStatus.queued,
               TrainingJob.sent_at.is_(None))
        .order_by(TrainingJob.sweep_index).limit(free)).all()
    if not waiting:
        return []
    now = utcnow()
    session.execute(update(TrainingJob).where(TrainingJob.id.in_([job_id for job_id, _ in waiting]))
                    .values(sent_at=now).execution_options(synchronize_session=False))
    return [(job_id, spec.get("max_runtime_seconds")) for job_id, spec in waiting]


def release_slots(*, session: Session, job_ids: list[uuid.UUID]) -> None:
    """Children whose message could not be sent go back to waiting, so a later claim sends them."""
    session.execute(update(TrainingJob).where(TrainingJob.id.in_(job_ids), TrainingJob.status == JobStatus.queued)
                    .values(sent_at=None).execution_options(synchronize_session=False))


def sweeps_waiting(*, session: Session) -> list[uuid.UUID]:
    """Sweeps (not cancelled) with children not yet sent: the reaper dispatches them in case a signal was lost."""
    rows = session.scalars(select(TrainingJob.sweep_id).distinct()
                           .join(Sweep, Sweep.id == TrainingJob.sweep_id)
                           .where(TrainingJob.status == JobStatus.queued, TrainingJob.sent_at.is_(None),
                                  Sweep.cancelled_at.is_(None)))
    return list(rows)


def cancel_sweep(*, session: Session, sweep_id: uuid.UUID) -> None:
    """No child starts any more; queued children are cancelled at once, running ones asked to stop."""
    session.execute(update(Sweep).where(Sweep.id == sweep_id, Sweep.cancelled_at.is_(None))
                    .values(cancelled_at=utcnow()).execution_options(synchronize_session=False))
    active = session.scalars(select(TrainingJob.id).where(TrainingJob.sweep_id == sweep_id,
                                                          TrainingJob.status.in_(ACTIVE_STATUSES)))
    for job_id in list(active):
        jobs.request_cancel(session=session, job_id=job_id)
    session.flush()


def sibling_histories(*, session: Session, sweep_id: uuid.UUID, job_id: uuid.UUID) -> list[list[dict[str, Any]]]:
    """The per-epoch histories of the sweep's other children (for successive halving)."""
    rows = session.scalars(select(TrainingJob.history).where(TrainingJob.sweep_id == sweep_id,
                                                             TrainingJob.id != job_id))
    return [list(history or []) for history in rows]


def sweep_json(sweep: Sweep, session: Session, *, with_history: bool = True) -> dict[str, Any]:
    """The sweep as the API shows it: status and counts from its children, each child's row, the leaderboard."""
    job_ids = {uuid.UUID(c["job_id"]) for c in sweep.children}
    by_id = {job.id: job for job in session.scalars(select(TrainingJob).where(TrainingJob.id.in_(job_ids)))}
    children = []
    for index, entry in enumerate(sweep.children):
        job = by_id.get(uuid.UUID(entry["job_id"]))
        if job is None:  # a reused job cannot be deleted while its model exists; guard anyway
            continue
        children.append(child_row(index, entry["params"], job, metric=sweep.metric,
                                  duplicate_of=entry.get("duplicate_of"), reused=bool(entry.get("reused")),
                                  with_history=with_history))
    board = rank(children, sweep.metric)
    originals = [c for c in children if c["duplicate_of"] is None]
    counts = {status.value: sum(c["status"] == status for c in originals) for status in JobStatus}
    active = counts["queued"] + counts["running"] + counts["cancelling"]
    if active:
        status = "cancelling" if sweep.cancelled_at is not None else "running"
    elif sweep.cancelled_at is not None:
        status = "cancelled"
    else:
        status = "succeeded" if counts["succeeded"] else "failed"
    own = [by_id[uuid.UUID(c["job_id"])] for c in originals if not c["reused"]]
    started = [j.started_at for j in own if j.started_at is not None]
    ended = [j.finished_at for j in own if j.finished_at is not None]
    finished_at: datetime | None = max(ended) if not active and ended else None
    wall = None
    if started:
        wall = round(((finished_at or utcnow()) - min(started)).total_seconds(), 3)
    leader_rows = [{k: v for k, v in c.items() if k != "history"} for c in board]
    best = next((c for c in leader_rows if c["status"] == JobStatus.succeeded), None)
    request = sweep.request
    body = {
        "id": str(sweep.id), "name": sweep.name,
        "dataset_id": str(sweep.dataset_id) if sweep.dataset_id else None,
        "status": status, "metric": sweep.metric, "higher_is_better": sweep.metric != "val_loss",
        "max_parallel": sweep.max_parallel, "search": "grid" if request.get("grid") is not None else "random",
        "grid": request.get("grid"), "space": request.get("space"), "samples": request.get("samples"),
        "base": request.get("base", {}), "pruning": request.get("pruning"),
        "counts": counts, "created_at": sweep.created_at,
        "finished_at": finished_at, "wall_seconds": wall,
        "children": children, "leaderboard": leader_rows, "best": best,
    }
    return SweepRead.model_validate(body).model_dump(mode="json", exclude_none=False)
