"""Starting sweep children: a sweep runs at most `max_parallel` children at once, so its waiting children are
sent to the broker as slots free up. The worker calls this as each child ends, the API when a child is cancelled
or a sweep created, and the reaper on every pass.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from core.db import sweeps

log = logging.getLogger(__name__)

Send = Callable[[uuid.UUID, int | None], None]


def dispatch_sweeps(*, sessionmaker: sessionmaker[Session], send: Send,
                    sweep_ids: list[uuid.UUID] | None = None) -> int:
    """Start the children that fit in their sweep's free slots: of `sweep_ids`, or of every sweep with children
    waiting. Workers do this as each child ends; the reaper repeats it each pass, so a slot freed by a child that
    was cancelled before it started, or a signal lost with a killed worker, only waits one pass. A child whose
    message cannot be sent goes back to waiting. Returns how many were sent."""
    sent = 0
    if sweep_ids is None:
        with sessionmaker() as session:
            sweep_ids = sweeps.sweeps_waiting(session=session)
    for sweep_id in sweep_ids:
        with sessionmaker.begin() as session:
            to_send = sweeps.claim_free_slots(session=session, sweep_id=sweep_id)
        for index, (job_id, max_runtime) in enumerate(to_send):
            try:
                send(job_id, max_runtime)
            except Exception:
                with sessionmaker.begin() as session:
                    sweeps.release_slots(session=session, job_ids=[j for j, _ in to_send[index:]])
                raise
            sent += 1
            log.info("sweep %s: child job %s started", sweep_id, job_id)
    return sent


def start_next_children(*, sessionmaker: sessionmaker[Session], send: Send, sweep_id: uuid.UUID) -> None:
    """After a child of `sweep_id` ended or was cancelled, start the next ones; a failure is logged, not raised
    (the reaper will start them on its next pass)."""
    try:
        dispatch_sweeps(sessionmaker=sessionmaker, send=send, sweep_ids=[sweep_id])
    except Exception:
        log.exception("sweep %s: could not start its next children; the reaper will", sweep_id)
