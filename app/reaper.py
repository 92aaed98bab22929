"""Finds jobs whose worker died (heartbeat stopped) and puts them back in the queue: `textclf reaper`."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from celery import Celery
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import jobs
from app.tasks import TRAIN_TASK

log = logging.getLogger(__name__)


def reap_once(*, sessionmaker: sessionmaker[Session], celery: Celery, settings: Settings) -> tuple[int, int]:
    """One pass: re-queue lost jobs (committed before they are sent) and fail the hopeless ones."""
    with sessionmaker.begin() as session:
        requeued, failed = jobs.reap_stale_jobs(session=session, stale_after_s=settings.job_heartbeat_timeout,
                                                max_attempts=settings.job_max_attempts)
    for job_id, max_runtime in requeued:
        # A new task id: Celery may still hold the old message as "rejected"; the claim makes duplicates harmless.
        soft, hard = settings.time_limits(max_runtime)
        celery.send_task(TRAIN_TASK, args=[str(job_id)], soft_time_limit=soft, time_limit=hard)
        log.warning("job %s lost its worker; re-queued", job_id)
    for job_id in failed:
        log.error("job %s lost its worker too often; failed", job_id)
    return len(requeued), len(failed)


def run_forever(*, sessionmaker: sessionmaker[Session], celery: Celery, settings: Settings,
                interval_s: float = 30.0, health_file: Path | None = None) -> None:
    """Reap every `interval_s` seconds; a database or broker outage only delays the next pass.

    After each successful pass `health_file` is touched, so a container healthcheck can tell a live reaper
    from a stuck one by the file's age.
    """
    while True:
        try:
            reap_once(sessionmaker=sessionmaker, celery=celery, settings=settings)
            if health_file is not None:
                health_file.touch()
        except (OperationalError, OSError) as exc:
            log.warning("reaper: %s; retrying in %.0fs", exc.__class__.__name__, interval_s)
        time.sleep(interval_s)
