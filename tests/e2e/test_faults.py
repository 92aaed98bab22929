"""Fault tests on the running service: a worker killed mid-training loses no job and trains nothing twice."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import child_env, free_port, make_settings, tiny_dataset_csv, wait_http, wait_job
from tests.e2e.test_embedded import worker_pid

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            if ppid == pid:
                out.append(int(entry.name))
    return out


def test_sigkill_of_the_training_process_mid_epoch_requeues_and_the_job_succeeds(tmp_path: Path, processes):
    settings = make_settings(tmp_path)
    env = {**child_env(settings), "JOB_HEARTBEAT_TIMEOUT": "10", "REAPER_INTERVAL": "1"}
    port = free_port()
    serve = processes.start("serve", [sys.executable, "-m", "app.cli", "serve", "--port", str(port)], env)
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/readyz", timeout=90, procs=processes)
    dataset = requests.post(f"{base}/v1/datasets", files={"file": ("d.csv", tiny_dataset_csv())}, timeout=30).json()
    job = requests.post(f"{base}/v1/jobs", json={"dataset_id": dataset["id"], "epochs": 25, "batch_size": 4},
                        timeout=10).json()

    # Wait until it trains (an epoch is recorded), then SIGKILL the process doing the training.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = requests.get(f"{base}/v1/jobs/{job['id']}", timeout=10).json()
        if state["status"] == "running" and state["history"]:
            break
        time.sleep(0.2)
    assert state["status"] == "running" and state["attempts"] == 1, state
    main = worker_pid(serve.pid)
    trainers = children(main)
    assert trainers, "no Celery pool process found"
    for pid in trainers:
        os.kill(pid, signal.SIGKILL)

    final = wait_job(base, job["id"], timeout=240)
    assert final["status"] == "succeeded", final
    assert final["attempts"] == 2 and len(final["history"]) == 25
    models = requests.get(f"{base}/v1/models", timeout=10).json()
    assert [m["job_id"] for m in models["items"]].count(job["id"]) == 1  # one model: trained to the end once more
    assert "re-queued" in processes.log("serve")


def test_cancel_a_running_job_through_the_api_and_its_process_exits(tmp_path: Path, processes):
    settings = make_settings(tmp_path)
    port = free_port()
    serve = processes.start("serve", [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
                            child_env(settings))
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/readyz", timeout=90, procs=processes)
    dataset = requests.post(f"{base}/v1/datasets", files={"file": ("d.csv", tiny_dataset_csv())}, timeout=30).json()
    job = requests.post(f"{base}/v1/jobs", json={"dataset_id": dataset["id"], "epochs": 200, "batch_size": 4},
                        timeout=10).json()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = requests.get(f"{base}/v1/jobs/{job['id']}", timeout=10).json()
        if state["status"] == "running" and state["history"]:
            break
        time.sleep(0.2)
    trainer = children(worker_pid(serve.pid))
    assert len(trainer) == 1
    reply = requests.post(f"{base}/v1/jobs/{job['id']}/cancel", timeout=10)
    assert reply.status_code == 202 and reply.json()["status"] == "cancelling"
    final = wait_job(base, job["id"], timeout=60)
    assert final["status"] == "cancelled" and final["model_id"] is None and len(final["history"]) < 200
    # One job per process: the process that trained it exits and frees its memory (and GPU, on a GPU worker).
    deadline = time.monotonic() + 30
    while Path(f"/proc/{trainer[0]}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not Path(f"/proc/{trainer[0]}").exists()


def test_a_job_past_its_time_limit_fails_cleanly(tmp_path: Path, processes):
    settings = make_settings(tmp_path)
    port = free_port()
    processes.start("serve", [sys.executable, "-m", "app.cli", "serve", "--port", str(port)], child_env(settings))
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/readyz", timeout=90, procs=processes)
    dataset = requests.post(f"{base}/v1/datasets", files={"file": ("d.csv", tiny_dataset_csv())}, timeout=30).json()
    job = requests.post(f"{base}/v1/jobs", json={"dataset_id": dataset["id"], "epochs": 200, "batch_size": 4,
                                                 "max_runtime_seconds": 10}, timeout=10).json()
    final = wait_job(base, job["id"], timeout=120)
    assert final["status"] == "failed" and final["error"]["code"] == "time_limit_exceeded", final
    assert final["model_id"] is None and 0 < len(final["history"]) < 200
    assert not list(settings.models_dir.glob(".tmp-*"))  # nothing half-written left behind


def test_the_same_task_message_delivered_three_times_trains_once(tmp_path: Path, processes):
    from app.broker import make_celery
    from app.tasks import TRAIN_TASK

    settings = make_settings(tmp_path)
    port = free_port()
    processes.start("serve", [sys.executable, "-m", "app.cli", "serve", "--port", str(port)], child_env(settings))
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/readyz", timeout=90, procs=processes)
    dataset = requests.post(f"{base}/v1/datasets", files={"file": ("d.csv", tiny_dataset_csv())}, timeout=30).json()
    job = requests.post(f"{base}/v1/jobs", json={"dataset_id": dataset["id"], "epochs": 2}, timeout=10).json()
    celery = make_celery(settings)  # the same broker the service uses: two more copies of the message
    try:
        for _ in range(2):
            celery.send_task(TRAIN_TASK, args=[job["id"]])
    finally:
        celery.close()
    final = wait_job(base, job["id"], timeout=120)
    assert final["status"] == "succeeded" and final["attempts"] == 1
    deadline = time.monotonic() + 60  # let the duplicates be consumed
    while processes.log("serve").count("skipping this delivery") < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes.log("serve").count("skipping this delivery") == 2
    models = requests.get(f"{base}/v1/models", timeout=10).json()
    assert models["total"] == 1 and models["items"][0]["job_id"] == job["id"]
