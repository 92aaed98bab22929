"""The embedded default end to end: `textclf serve` (SQLite, filesystem broker, real Celery worker process)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import requests

from tests.helpers import run_story, start_serve, wait_job, worker_pid

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_textclf_serve_trains_and_predicts(tmp_path: Path, processes):
    base, serve, settings = start_serve(tmp_path, processes)
    run_story(base)
    assert (settings.data_dir / "textclf.db").exists()
    # The tests run with keys off (tests/helpers.py make_settings), which serve must say loudly.
    assert "WARNING: no authentication" in processes.log("serve")
    assert not (settings.data_dir / "admin.key").exists()

    # The worker is supervised: kill it outright and the next job still trains.
    first = worker_pid(serve.pid)
    assert first is not None
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while (second := worker_pid(serve.pid)) in (None, first) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert second not in (None, first), "textclf serve did not restart its worker"
    dataset_id = requests.get(f"{base}/v1/datasets", timeout=10).json()["items"][0]["id"]
    job = requests.post(f"{base}/v1/jobs", json={"dataset_id": dataset_id, "max_steps": 3}, timeout=10).json()
    assert wait_job(base, job["id"], timeout=180)["status"] == "succeeded"
