"""Finds jobs whose worker died (heartbeat stopped) and puts them back in the queue: `textclf reaper`."""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from core.broker import send_training_job
from core.config import Settings
from core.db import jobs
from core.dispatch import dispatch_sweeps

log = logging.getLogger(__name__)


class BrokerMemory:
    """Tells when the broker has forgotten its messages: a Redis restarted without persistence, or a failover to
    an empty replica. Then every queued job's message may be gone, and the reaper sends them all again.

    The sign is a key the reaper writes once (SET NX) and reads back on every pass: a broker that lost its data
    lost the key too, and the next SET NX writes a new token. The first pass of a new reaper counts as a loss
    as well, since nobody watched the broker before it. Duplicates are harmless (the claim trains a job once).
    The filesystem transport keeps messages as files, which survive restarts: nothing to watch there.
    """

    KEY = "textclf:broker-incarnation"

    def __init__(self) -> None:
        self.token: bytes | None = None

    def lost(self, celery: Celery) -> bool:
        with celery.connection_for_write() as conn:
            client = getattr(conn.default_channel, "client", None)  # a redis.Redis on the Redis transport
            if client is None or not hasattr(client, "set"):
                return False
            client.set(self.KEY, uuid.uuid4().hex, nx=True)
            token = client.get(self.KEY)
        lost, self.token = token != self.token, token
        return lost


def reap_once(*, sessionmaker: sessionmaker[Session], celery: Celery, settings: Settings,
              broker: BrokerMemory | None = None) -> tuple[int, int]:
    """One pass: re-queue lost jobs (committed before they are sent) and fail the hopeless ones; with `broker`,
    send every queued job's message again once the broker has lost its messages."""
    with sessionmaker.begin() as session:
        requeued, failed = jobs.reap_stale_jobs(session=session, stale_after_s=settings.job_heartbeat_timeout,
                                                max_attempts=settings.job_max_attempts)
    for job_id, max_runtime in requeued:
        _send(celery, settings, job_id, max_runtime)
        log.warning("job %s lost its worker; re-queued", job_id)
    for job_id in failed:
        log.error("job %s lost its worker too often; failed", job_id)
    dispatch_sweeps(sessionmaker=sessionmaker, send=lambda job_id, runtime: _send(celery, settings, job_id, runtime))
    if broker is not None and broker.lost(celery):
        with sessionmaker() as session:
            queued = jobs.queued_jobs(session=session)
        for job_id, max_runtime in queued:
            _send(celery, settings, job_id, max_runtime)
        if queued:
            log.warning("the broker may have lost its messages (restarted empty); sent %d queued jobs again",
                        len(queued))
    return len(requeued), len(failed)


def _send(celery: Celery, settings: Settings, job_id: uuid.UUID, max_runtime: int | None) -> None:
    # A new task id: Celery may still hold a re-queued job's old message as "rejected".
    send_training_job(celery, settings, job_id, max_runtime, fresh_task_id=True)


def run_forever(*, sessionmaker: sessionmaker[Session], celery: Celery, settings: Settings,
                interval_s: float = 30.0, health_file: Path | None = None) -> None:
    """Reap every `interval_s` seconds; a database or broker outage only delays the next pass.

    After each successful pass `health_file` is touched, so a container healthcheck can tell a live reaper
    from a stuck one by the file's age.
    """
    broker = BrokerMemory()
    while True:
        try:
            reap_once(sessionmaker=sessionmaker, celery=celery, settings=settings, broker=broker)
            if health_file is not None:
                health_file.touch()
        except Exception as exc:
            # The reaper must outlive any outage of what it watches: database, broker (redis-py and kombu raise
            # their own connection errors), or the artifact volume. It tries again next pass.
            log.warning("reaper: %s: %s; retrying in %.0fs", exc.__class__.__name__, exc, interval_s)
        time.sleep(interval_s)
