"""A sweep child's part in its sweep: stopped early when clearly behind its siblings, and handing its slot on to
the sweep's next waiting children when it ends."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from core.db import sweeps
from core.db.tables import Sweep, TrainingJob
from core.dispatch import Send, start_next_children
from core.spec import TrainingSpec
from core.sweeps import Pruning, prune_decision

log = logging.getLogger(__name__)


def release_slot(*, sessionmaker: sessionmaker[Session], sweep_id: uuid.UUID | None, send: Send | None) -> None:
    """This child's slot is free: start the sweep's next waiting children. Best effort: the reaper repeats it.
    Does nothing for a job outside a sweep, or without a way to send."""
    if sweep_id is None or send is None:
        return
    start_next_children(sessionmaker=sessionmaker, send=send, sweep_id=sweep_id)


class SweepPruner:
    """Successive halving for one sweep child: after each milestone epoch, compare the child with its siblings
    (core.sweeps.prune_decision) and, if it is clearly behind, ask training to stop."""

    def __init__(self, sm: sessionmaker[Session], job_id: uuid.UUID, sweep_id: uuid.UUID, metric: str,
                 pruning: Pruning, total_epochs: int) -> None:
        self.sm, self.job_id, self.sweep_id, self.metric = sm, job_id, sweep_id, metric
        self.pruning, self.total_epochs = pruning, total_epochs
        self.checked_epochs = 0
        self.reason: str | None = None

    @classmethod
    def for_job(cls, session: Session, job: TrainingJob, spec: TrainingSpec,
                sm: sessionmaker[Session]) -> SweepPruner | None:
        """The pruner for `job`, or None when it is no sweep's child or its sweep does not prune."""
        sweep = session.get(Sweep, job.sweep_id) if job.sweep_id is not None else None
        if sweep is None or not sweep.request.get("pruning"):
            return None
        return cls(sm, job.id, sweep.id, sweep.metric, Pruning.model_validate(sweep.request["pruning"]), spec.epochs)

    def after_epoch(self, history: list[dict[str, Any]]) -> None:
        """Judge the child at a milestone epoch; `reason` says why once it should stop."""
        epoch = len(history)
        # Each epoch is judged once; the last epoch never (stopping a finished run saves nothing).
        if epoch <= self.checked_epochs or epoch >= self.total_epochs or self.reason is not None:
            return
        self.checked_epochs = epoch
        if epoch not in self.pruning.milestones:
            return
        try:
            with self.sm() as session:
                peers = sweeps.sibling_histories(session=session, sweep_id=self.sweep_id, job_id=self.job_id)
        except OperationalError:
            return  # a database blip: keep training rather than decide on nothing
        self.reason = prune_decision(history, peers, epoch=epoch, metric=self.metric, pruning=self.pruning)
        if self.reason:
            log.info("job %s: %s", self.job_id, self.reason)
