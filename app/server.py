"""The API's HTTP server: Granian runs the Flask app (WSGI) in API_WORKERS processes.

Why Granian and not gunicorn's sync workers: Granian reads each request in Rust (tokio) and hands it to a
Python thread only once its headers are in, so clients that send slowly or stall hold a socket, not a worker;
gunicorn's sync (and threaded) workers were stopped by two such sockets. It is also the faster of the two
for a trivial Flask app on our machines (bench/README.md has the figures).
"""

from __future__ import annotations

import os
import shutil
import sys

from core.config import Settings

# Headers must arrive within this long, or the connection is closed (slowloris).
HEADER_READ_TIMEOUT_MS = 10_000


def prepare_metrics_dir(settings: Settings) -> dict[str, str]:
    """Empty the Prometheus folder (a previous run's counters would be added to this one's) and return the
    environment that points the workers at it; prometheus_client reads it when a worker first imports it."""
    shutil.rmtree(settings.metrics_dir, ignore_errors=True)
    settings.metrics_dir.mkdir(parents=True)
    return {"PROMETHEUS_MULTIPROC_DIR": str(settings.metrics_dir)}


def granian_command(settings: Settings, host: str, port: int) -> list[str]:
    """The Granian command line: the app factory, one app (and onnxruntime sessions) per worker process."""
    return [sys.executable, "-m", "granian", "--interface", "wsgi", "--factory", "app:create_app",
            "--host", host, "--port", str(port), "--workers", str(settings.api_workers),
            "--blocking-threads", str(settings.api_threads),
            "--http", "1", "--no-ws", "--http1-header-read-timeout", str(HEADER_READ_TIMEOUT_MS),
            # A worker that dies is started again (gunicorn's master did the same).
            "--respawn-failed-workers", "--respawn-interval", "1",
            "--log-level", "warning"]


def run(settings: Settings, host: str, port: int) -> None:
    """Replace this process with the Granian server."""
    env = {**os.environ, **prepare_metrics_dir(settings)}
    cmd = granian_command(settings, host, port)
    os.execve(cmd[0], cmd, env)
