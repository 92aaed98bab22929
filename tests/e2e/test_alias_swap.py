"""Moving an alias under load, with the API under Granian as in production (2 worker processes): no request
fails, replies switch to the new model in every process, and /metrics adds up the counters of both workers."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

from app.cli import api_command
from core.db.migrate import upgrade
from core.db.session import make_engine, make_sessionmaker
from tests.helpers import Processes, child_env, free_port, make_settings, upload_tiny, wait_http

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
TEXTS = ["the striker scored twice", "simmer the beans"]


def train(base: str, settings, sessionmaker, dataset_id: str) -> str:
    """Queue a one-epoch job through the API, train it here with the worker's code; the model id."""
    from worker.training import run_training

    job = requests.post(f"{base}/v1/jobs", json={"dataset_id": dataset_id, "epochs": 1, "batch_size": 8,
                                                 "name": "swap"}, timeout=30).json()
    assert run_training(sessionmaker=sessionmaker, settings=settings, job_id=uuid.UUID(job["id"])) == "succeeded"
    return requests.get(f"{base}/v1/jobs/{job['id']}", timeout=10).json()["model_id"]


def wait_until_served(base: str, model_id: str, in_a_row: int = 40, timeout: float = 60.0) -> tuple[float, int]:
    """(when, predicts made) once `in_a_row` predicts on new connections (spread over the API processes) in a
    row came from `model_id`."""
    deadline, streak, calls = time.monotonic() + timeout, 0, 0
    while streak < in_a_row:
        assert time.monotonic() < deadline, f"the alias never settled on {model_id}"
        reply = requests.post(f"{base}/v1/predict?alias=prod", json={"texts": TEXTS}, timeout=10)
        calls += 1
        streak = streak + 1 if reply.json()["model_id"] == model_id else 0
    return time.monotonic(), calls


def test_alias_moves_under_load_with_no_failed_request(tmp_path: Path, processes: Processes):
    settings = make_settings(tmp_path, API_WORKERS=2, MODEL_REFRESH_SECONDS=0.5)
    settings.data_dir.mkdir(parents=True)
    upgrade(settings.database_url)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**child_env(settings), "API_WORKERS": "2", "MODEL_REFRESH_SECONDS": "0.5", "LOG_FORMAT": "json"}
    processes.start("api", api_command("127.0.0.1", port), env)
    wait_http(f"{base}/healthz", procs=processes)

    engine = make_engine(settings.database_url)
    dataset_id = upload_tiny(base)
    first, second = (train(base, settings, make_sessionmaker(engine), dataset_id) for _ in range(2))
    engine.dispose()
    assert requests.put(f"{base}/v1/aliases/prod", json={"model_id": first}, timeout=30).status_code == 200

    replies: list[tuple[float, int, str | None]] = []
    failures: list[str] = []
    stop = threading.Event()

    def client() -> None:
        # A new connection per request (no Session): the kernel spreads connections over both API processes,
        # where four kept-alive ones could all land on one.
        while not stop.is_set():
            try:
                resp = requests.post(f"{base}/v1/predict?alias=prod", json={"texts": TEXTS}, timeout=10)
            except requests.RequestException as exc:
                failures.append(repr(exc))
                continue
            if resp.status_code != 200:
                failures.append(f"{resp.status_code} {resp.text[:200]}")
            else:
                replies.append((time.monotonic(), 200, resp.json()["model_id"]))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        moves = []
        for target in (second, first, second, first, second):
            time.sleep(1.5)
            resp = requests.put(f"{base}/v1/aliases/prod", json={"model_id": target}, timeout=30)
            assert resp.status_code == 200, resp.text
            moves.append((time.monotonic(), target))
        # both processes refreshed and warmed, however long it took
        settled, settle_calls = wait_until_served(base, second)
        deadline = time.monotonic() + 60
        while len([at for at, _, _ in replies if at > settled]) < 20 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)

    assert failures == [], failures[:5]
    assert len(replies) > 50, len(replies)
    # after each move both models answered; once settled, only the last target does, in both processes
    assert {model for _, _, model in replies} == {first, second}
    late = [model for at, _, model in replies if at > settled]
    assert late and set(late) == {second}, set(late)
    for (at, target), (until, _) in zip(moves, moves[1:] + [(settled, None)]):
        assert target in {model for when, _, model in replies if at < when < until}, "a move never took effect"

    # both API workers served: the scrape adds up their counters (whichever worker answers it)
    for _ in range(5):
        assert requests.post(f"{base}/v1/predict?alias=prod", json={"texts": TEXTS}, timeout=10).status_code == 200
    text = requests.get(f"{base}/metrics", timeout=10).text
    predicted = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                    if line.startswith("textclf_predictions_total{"))
    assert predicted == len(TEXTS) * (len(replies) + settle_calls + 5)  # warm-up calls are not predictions
    lines = [json.loads(line) for line in processes.log("api").splitlines() if line.startswith("{")]
    access = [entry for entry in lines if entry["logger"] == "textclf.access"]
    assert {entry["route"] for entry in access} >= {"/v1/predict", "/v1/aliases/<name>", "/metrics"}
    assert all(len(entry["request_id"]) == 32 and entry["duration_ms"] > 0 for entry in access)
    assert len({entry["pid"] for entry in access}) == 2, "both API workers should have served"
