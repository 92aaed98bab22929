"""Sweeps end to end: `textclf serve` with two training processes, driven through the public API only.

A grid trains to completion with at most max_parallel children at once, identical children train once, the
leaderboard agrees with each child's own job and model evaluation, promote serves the best child, and a
cancelled sweep leaves no child running and starts none afterwards.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from tests.helpers import Processes, children, frozen, start_serve, upload_tiny, worker_pid
from worker.ml.train import CANCEL_CHECK_EVERY_S

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ACTIVE = ("queued", "running", "cancelling")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory):
    folder: Path = tmp_path_factory.mktemp("sweeps")
    procs = Processes(folder)
    try:
        base, serve, _ = start_serve(folder, procs, WORKER_CONCURRENCY="2", REAPER_INTERVAL="2")
        yield base, upload_tiny(base), serve.pid
    finally:
        procs.stop()


def watch(base: str, sweep_id: str, timeout: float = 300.0) -> tuple[dict, int]:
    """Poll the sweep until it ends; returns it and the most children seen running at once."""
    deadline, most = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        sweep = requests.get(f"{base}/v1/sweeps/{sweep_id}", timeout=10).json()
        most = max(most, sum(c["status"] in ("running", "cancelling") for c in sweep["children"]
                             if c["duplicate_of"] is None))
        if sweep["status"] not in ("running", "cancelling"):
            return sweep, most
        time.sleep(0.25)
    raise AssertionError(f"sweep {sweep_id} still {sweep['status']} after {timeout}s: {sweep['counts']}")


def test_a_grid_trains_in_parallel_and_its_leaderboard_agrees_with_the_children(service):
    base, dataset, _ = service
    body = {"dataset_id": dataset, "name": "tiny-sweep", "base": {"epochs": 3, "batch_size": 4},
            # adam's default rate is 0.002, so children 2 and 3 are the same run
            "grid": {"optimizer.name": ["sgd", "momentum", "adam"], "optimizer.lr": [None, 0.002]},
            "max_parallel": 2}
    created = requests.post(f"{base}/v1/sweeps", json=body, timeout=30)
    assert created.status_code == 202, created.text
    sweep, most_at_once = watch(base, created.json()["id"])

    assert sweep["status"] == "succeeded", sweep["counts"]
    assert most_at_once == 2  # parallel, and never more than max_parallel
    children = sweep["children"]
    assert len(children) == 6 and children[5]["duplicate_of"] == 4 and children[5]["job_id"] == children[4]["job_id"]
    assert sweep["counts"]["succeeded"] == 5 and len(sweep["leaderboard"]) == 5
    assert [c["rank"] for c in sweep["leaderboard"]] == [1, 2, 3, 4, 5]
    values = [c["val_macro_f1"] for c in sweep["leaderboard"]]
    assert values == sorted(values, reverse=True)
    assert sweep["best"]["index"] == sweep["leaderboard"][0]["index"] and sweep["wall_seconds"] > 0

    for child in sweep["leaderboard"]:
        job = requests.get(f"{base}/v1/jobs/{child['job_id']}", timeout=10).json()
        assert job["spec"]["name"] == "tiny-sweep" and job["model_id"] == child["model_id"]
        for key in ("val_accuracy", "val_macro_f1", "val_loss", "best_epoch", "train_seconds"):
            assert child[key] == job["metrics"][key], key
        evaluation = requests.get(f"{base}/v1/models/{child['model_id']}/evaluation", timeout=10).json()
        # the exported model's validation evaluation agrees with the epoch the leaderboard reports
        assert abs(evaluation["validation"]["accuracy"] - child["val_accuracy"]) < 1e-6
        assert len(next(c for c in children if c["index"] == child["index"])["history"]) == 3

    promoted = requests.post(f"{base}/v1/sweeps/{sweep['id']}/promote", json={"alias": "sweep-best"}, timeout=30)
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["model_id"] == sweep["best"]["model_id"]
    reply = requests.post(f"{base}/v1/predict", params={"alias": "sweep-best"},
                          json={"texts": ["the striker scored a goal"]}, timeout=30)
    assert reply.status_code == 200 and reply.json()["model_id"] == sweep["best"]["model_id"]


def test_cancelling_a_sweep_midway_leaves_no_child_running_and_starts_none(service):
    base, dataset, serve_pid = service
    body = {"dataset_id": dataset, "base": {"epochs": 200, "batch_size": 2, "early_stopping": None},
            "grid": {"seed": list(range(6))}, "max_parallel": 2}
    sweep = requests.post(f"{base}/v1/sweeps", json=body, timeout=30).json()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # mid-way: two children training, four waiting
        current = requests.get(f"{base}/v1/sweeps/{sweep['id']}?history=false", timeout=10).json()
        if current["counts"]["running"] == 2 and all(c["epochs_run"] >= 1 for c in current["children"]
                                                     if c["status"] == "running"):
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"children did not start: {current['counts']}")

    # The two trainers are frozen past their cancel-check interval, so however fast this machine trains they
    # see the cancel at their next step, not after their last epoch.
    with frozen(children(worker_pid(serve_pid)), seconds=CANCEL_CHECK_EVERY_S + 0.5):
        reply = requests.post(f"{base}/v1/sweeps/{sweep['id']}/cancel", timeout=30)
        assert reply.status_code == 202 and reply.json()["status"] in ("cancelling", "cancelled")
    final, _ = watch(base, sweep["id"], timeout=60)
    assert final["status"] == "cancelled"
    assert final["counts"]["cancelled"] == 6 and not any(final["counts"][s] for s in ACTIVE)
    time.sleep(3)  # a dispatch racing the cancel would have started a child by now
    jobs = requests.get(f"{base}/v1/jobs", params={"status": "running"}, timeout=10).json()
    assert jobs["total"] == 0
    assert all(c["epochs_run"] < 200 for c in final["children"])
