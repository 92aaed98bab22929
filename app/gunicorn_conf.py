"""gunicorn settings for the API: `gunicorn -c python:app.gunicorn_conf "app:create_app()"`.

Read once by the gunicorn master before it forks the workers: it empties the Prometheus folder (counters of a
previous run would otherwise be added to this one's) and points the workers at it; a worker that exits has its
live gauges dropped.
"""

from __future__ import annotations

import os
import shutil

from app.config import get_settings

_metrics_dir = get_settings().metrics_dir
shutil.rmtree(_metrics_dir, ignore_errors=True)
_metrics_dir.mkdir(parents=True)
# prometheus_client reads this when the workers first import it (after the fork: no --preload).
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_metrics_dir)


def child_exit(_server, worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
