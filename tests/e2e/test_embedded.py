"""The embedded default end to end: `textclf serve` (SQLite, filesystem broker, real Celery worker process)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import start_serve, tiny_dataset_csv, wait_job, worker_pid

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def run_story(base: str) -> None:
    """The acceptance story: upload, train, poll, predict — and the error shape for a bad request."""
    up = requests.post(f"{base}/v1/datasets", files={"file": ("sports_vs_cooking.csv", tiny_dataset_csv())},
                       data={"name": "tiny"}, timeout=30)
    assert up.status_code == 201, up.text
    dataset = up.json()
    assert dataset["row_count"] == 72 and dataset["labels"] == {"cooking": 36, "sports": 36}

    bad = requests.post(f"{base}/v1/jobs", json={"dataset_id": dataset["id"], "epochs": 0}, timeout=10)
    assert bad.status_code == 422
    assert bad.json()["error"]["code"] == "validation_error"
    assert bad.json()["error"]["details"][0]["loc"] == ["epochs"]

    created = requests.post(f"{base}/v1/jobs", json={"dataset_id": dataset["id"], "epochs": 2, "batch_size": 8,
                                                     "optimizer": {"name": "adam", "lr": 0.01}}, timeout=10)
    assert created.status_code == 202, created.text
    assert created.headers["Location"] == f"/v1/jobs/{created.json()['id']}"
    job = wait_job(base, created.json()["id"], timeout=300)
    assert job["status"] == "succeeded", job
    assert len(job["history"]) == 2 and job["device"] == "cpu" and job["attempts"] == 1
    assert job["progress"]["percent"] == 100.0
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_macro_f1", "lr",
            "seconds"} <= set(job["history"][0])

    model = requests.get(f"{base}/v1/models/{job['model_id']}", timeout=10).json()
    assert model["labels"] == ["cooking", "sports"]
    assert model["artifacts"]["model.onnx"] > 0 and "tokenizer.json" in model["artifacts"]
    assert model["metrics"]["onnx_parity"]["argmax_agreement"] == 1.0

    evaluation = requests.get(f"{base}/v1/models/{model['id']}/evaluation", timeout=10).json()
    assert evaluation["validation"]["examples"] > 0 and evaluation["test"] is None
    assert evaluation["validation"]["confusion_matrix"]["labels"] == ["cooking", "sports"]

    texts = ["the team scored a goal", "stir the soup and season with salt"]
    pred = requests.post(f"{base}/v1/models/{model['id']}/predict", json={"texts": texts, "top_k": 2}, timeout=30)
    assert pred.status_code == 200, pred.text
    body = pred.json()
    assert body["model_id"] == model["id"]
    assert [p["label"] for p in body["predictions"]] == ["sports", "cooking"]
    assert len(body["predictions"][0]["top_k"]) == 2
    assert abs(sum(s["score"] for s in body["predictions"][0]["top_k"]) - 1.0) < 1e-4

    default = requests.post(f"{base}/v1/predict", json={"texts": ["a late goal won the final"]}, timeout=30)
    assert default.status_code == 200 and default.json()["model_id"] == model["id"]

    empty = requests.post(f"{base}/v1/predict", json={"texts": []}, timeout=10)
    assert empty.status_code == 422 and empty.json()["error"]["code"] == "validation_error"


def test_textclf_serve_trains_and_predicts(tmp_path: Path, processes):
    base, serve, settings = start_serve(tmp_path, processes)
    run_story(base)
    assert (settings.data_dir / "textclf.db").exists()
    # The tests run with keys off (tests/conftest.py), which serve must say loudly.
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
