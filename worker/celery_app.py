"""The Celery worker application: `celery -A worker.celery_app worker`."""

from __future__ import annotations

import logging
import os
import socket
import threading

from celery.signals import after_setup_logger, after_setup_task_logger, worker_init, worker_process_init, worker_ready
from sqlalchemy.exc import OperationalError

from core import logs
from core.broker import make_celery
from core.config import get_settings
from core.db import jobs
from core.db.session import make_engine, make_sessionmaker
from core.worker_start import clear_start_failure, require_worker_dependencies

settings = get_settings()
# Before anything imports the training stack: without it, exit at once with what to install (not a traceback
# on every restart).
require_worker_dependencies(settings)
celery = make_celery(settings, include=["worker.tasks"])
engine = make_engine(settings.database_url)
SessionLocal = make_sessionmaker(engine)


@after_setup_logger.connect
@after_setup_task_logger.connect
def _log_format(logger, **_kwargs) -> None:
    # Celery sets up its own handlers; LOG_FORMAT=json makes them write JSON with the job id too.
    if settings.log_format == "json":
        logs.apply_format(logger, "json")


@worker_init.connect
def preload_training_code(**_kwargs) -> None:
    """Import torch and the training and export code once, in the parent, before it forks job processes.

    Every job runs in a freshly forked process (max_tasks_per_child=1), which then starts with these modules
    loaded instead of importing them itself: torch, the training code with the torch._dynamo it imports, and
    onnxscript, which the ONNX exporter builds graphs with, take seconds to import (bench/README.md). Importing
    does not initialise CUDA: torch does that on first use, in the task, so the children
    can still use the GPU (pytorch#40403 is about initialising it before the fork). Merely importing this module
    or worker.training loads no torch.
    """
    import onnxscript  # noqa: F401

    import worker.ml.export  # noqa: F401
    import worker.ml.train  # noqa: F401


@worker_process_init.connect
def _after_fork(**_kwargs) -> None:
    # Connections opened in the parent must not be shared with the forked child (SQLAlchemy's pooling docs).
    engine.dispose(close=False)


# The main worker process says it is alive every this many seconds (the API's /readyz reads it).
WORKER_HEARTBEAT_S = 15.0
log = logging.getLogger(__name__)


@worker_ready.connect
def _start_heartbeat(**_kwargs) -> None:
    clear_start_failure(settings)
    worker_id = f"{socket.gethostname()}:{os.getpid()}"

    def beat() -> None:
        # Its own engine: the pool processes forked later must not share a connection pool with this thread.
        beat_sessions = make_sessionmaker(make_engine(settings.database_url))
        while True:
            try:
                with beat_sessions.begin() as session:
                    jobs.record_worker_heartbeat(session=session, worker_id=worker_id)
            except OperationalError:
                log.warning("worker heartbeat: database unavailable")
            stop.wait(WORKER_HEARTBEAT_S)

    stop = threading.Event()
    threading.Thread(target=beat, name="textclf-heartbeat", daemon=True).start()
