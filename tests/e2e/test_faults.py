"""Fault tests on the running service: a worker killed mid-training loses no job and trains nothing twice."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import requests

from tests.helpers import children, frozen, start_serve, upload_tiny, wait_for_log, wait_job, wait_running, worker_pid
from worker.ml.train import CANCEL_CHECK_EVERY_S

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_sigkill_of_the_training_process_mid_epoch_requeues_and_the_job_succeeds(tmp_path: Path, processes):
    base, serve, settings = start_serve(tmp_path, processes, JOB_HEARTBEAT_TIMEOUT="10", REAPER_INTERVAL="1")
    job = requests.post(f"{base}/v1/jobs", json={"dataset_id": upload_tiny(base), "epochs": 25, "batch_size": 4,
                                                 "early_stopping": None},
                        timeout=10).json()

    # Wait until it trains (an epoch is recorded), freeze the process doing the training (so what we read of
    # the job is where it stands when it dies), then SIGKILL it.
    wait_running(base, job["id"])
    trainers = children(worker_pid(serve.pid))
    assert trainers, "no Celery pool process found"
    for pid in trainers:
        os.kill(pid, signal.SIGSTOP)
    state = requests.get(f"{base}/v1/jobs/{job['id']}", timeout=10).json()
    assert state["attempts"] == 1 and state["status"] == "running", state
    for pid in trainers:
        os.kill(pid, signal.SIGKILL)

    final = wait_job(base, job["id"], timeout=240)
    assert final["status"] == "succeeded", final
    assert final["attempts"] == 2 and [h["epoch"] for h in final["history"]] == list(range(1, 26))
    # The second attempt resumed from the last end-of-epoch checkpoint: at most one epoch was lost.
    assert final["metrics"]["resumed_from_epoch"] >= len(state["history"]), final["metrics"]
    assert "resumed from the checkpoint of epoch" in processes.log("serve")
    models = requests.get(f"{base}/v1/models", timeout=10).json()
    assert [m["job_id"] for m in models["items"]].count(job["id"]) == 1  # one complete model
    assert "re-queued" in processes.log("serve")
    assert not (settings.jobs_dir / job["id"]).exists()  # the checkpoint goes once the job has ended


def test_sigkill_during_onnx_export_registers_nothing_half_written_and_the_job_finishes(tmp_path: Path, processes):
    base, serve, settings = start_serve(tmp_path, processes, JOB_HEARTBEAT_TIMEOUT="10", REAPER_INTERVAL="1")
    job = requests.post(f"{base}/v1/jobs", json={"dataset_id": upload_tiny(base), "epochs": 3, "batch_size": 4,
                                                 "model": {"name": "bigru"}}, timeout=10).json()
    # Poll fast until the job leaves the training loop, then kill the process mid-export.
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        state = requests.get(f"{base}/v1/jobs/{job['id']}", timeout=10).json()
        if state["progress"].get("stage") == "exporting":
            break
        assert state["status"] in ("queued", "running"), state
        time.sleep(0.02)
    else:
        raise AssertionError(f"the job never reached its export: {state}")
    for pid in children(worker_pid(serve.pid)):
        os.kill(pid, signal.SIGKILL)
    assert requests.get(f"{base}/v1/models", timeout=10).json()["total"] == 0

    final = wait_job(base, job["id"], timeout=240)
    assert final["status"] == "succeeded" and final["attempts"] == 2, final
    # Killed after the last epoch's checkpoint: the second attempt trained nothing again, it only exported.
    assert final["metrics"]["resumed_from_epoch"] == 3 and len(final["history"]) == 3
    models = requests.get(f"{base}/v1/models", timeout=10).json()
    assert models["total"] == 1 and models["items"][0]["id"] == final["model_id"]
    # On disk: the one registered model, complete; the killed attempt's half-written export is gone.
    assert [p.name for p in settings.models_dir.iterdir()] == [final["model_id"]]
    assert {"model.onnx", "tokenizer.json", "labels.json"} <= {p.name for p in
                                                               (settings.models_dir / final["model_id"]).iterdir()}
    reply = requests.post(f"{base}/v1/models/{final['model_id']}/predict", json={"texts": ["the striker scored"]},
                          timeout=30)
    assert reply.status_code == 200, reply.text


def test_cancel_a_running_job_through_the_api_and_its_process_exits(tmp_path: Path, processes):
    base, serve, _ = start_serve(tmp_path, processes)
    job = requests.post(f"{base}/v1/jobs", json={"dataset_id": upload_tiny(base), "epochs": 200, "batch_size": 4,
                                                 "early_stopping": None},
                        timeout=10).json()
    wait_running(base, job["id"])
    trainer = children(worker_pid(serve.pid))
    assert len(trainer) == 1
    # Frozen longer than the loop's cancel-check interval, the trainer checks the flag at its very next step:
    # however fast this machine trains, the 200 epochs cannot all run before it sees the cancel.
    with frozen(trainer, seconds=CANCEL_CHECK_EVERY_S + 0.5):
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
    base, serve, settings = start_serve(tmp_path, processes)
    job = requests.post(f"{base}/v1/jobs", json={"dataset_id": upload_tiny(base), "epochs": 200, "batch_size": 4,
                                                 "early_stopping": None, "max_runtime_seconds": 10}, timeout=10).json()
    wait_running(base, job["id"])
    # The clock runs on while the trainer is frozen: the job is past its limit whatever this machine's speed.
    # It is thawed once Celery has sent it the soft time limit's signal (the worker logs that), so the signal
    # is what ends it, not the hard kill 60 s later.
    trainer = children(worker_pid(serve.pid))
    with frozen(trainer):
        wait_for_log(processes, "serve", "Soft time limit (10s) exceeded", timeout=60)
    final = wait_job(base, job["id"], timeout=120)
    assert final["status"] == "failed" and final["error"]["code"] == "time_limit_exceeded", final
    assert final["model_id"] is None and 0 < len(final["history"]) < 200
    assert not list(settings.models_dir.glob(".tmp-*"))  # nothing half-written left behind


def test_the_same_task_message_delivered_three_times_trains_once(tmp_path: Path, processes):
    from core.broker import TRAIN_TASK, make_celery

    base, _, settings = start_serve(tmp_path, processes)
    job = requests.post(f"{base}/v1/jobs", json={"dataset_id": upload_tiny(base), "epochs": 2}, timeout=10).json()
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
