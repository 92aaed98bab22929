"""Fault tests for the servers the service depends on: Redis and PostgreSQL restart under load.

Each test runs the production roles (gunicorn API, Celery worker, reaper) as local processes against a private
redis-server or PostgreSQL cluster (bench/services.py) that it can kill and restart, leaving the machine's own
servers alone.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests

from bench.services import PrivatePostgres, PrivateRedis, Stack
from tests.helpers import upload_tiny, wait_http, wait_job, wait_running

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

# Notice a lost worker within seconds, not the production five minutes.
FAST_REAPER = {"JOB_HEARTBEAT_TIMEOUT": "10", "REAPER_INTERVAL": "1"}


@pytest.fixture
def redis_server(tmp_path: Path):
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def postgres_server():
    server = PrivatePostgres()
    server.start()
    yield server
    server.remove()


@pytest.fixture
def stack_factory(tmp_path: Path):
    stacks: list[Stack] = []

    def make(**kwargs) -> Stack:
        stack = Stack(tmp_path, **kwargs, **FAST_REAPER)
        stacks.append(stack)
        stack.start_all()
        wait_http(f"{stack.base}/readyz", timeout=90)
        return stack

    yield make
    for stack in stacks:
        stack.stop()


def test_a_redis_restart_loses_no_job_and_trains_none_twice(pg_url, redis_server, stack_factory):
    stack = stack_factory(database_url=pg_url, broker_url=redis_server.url)
    dataset = upload_tiny(stack.base)
    ids = [requests.post(f"{stack.base}/v1/jobs", json={"dataset_id": dataset, "epochs": 6, "batch_size": 4,
                                                        "seed": i}, timeout=10).json()["id"] for i in range(3)]
    wait_running(stack.base, ids[0])
    assert requests.get(f"{stack.base}/v1/jobs/{ids[2]}", timeout=10).json()["status"] == "queued"

    redis_server.restart()  # a crash: the queued jobs' messages and the running one's unacked message are gone

    finals = [wait_job(stack.base, job_id, timeout=300) for job_id in ids]
    assert [f["status"] for f in finals] == ["succeeded"] * 3, [(f["status"], f["error"]) for f in finals]
    # pg_url is the session's database, shared with other tests: count the models of this test's jobs.
    models = requests.get(f"{stack.base}/v1/models", params={"limit": 200}, timeout=10).json()["items"]
    assert Counter(m["job_id"] for m in models if m["job_id"] in ids) == Counter(ids)  # none lost, none doubled
    assert all(f["attempts"] <= 2 for f in finals) and finals[2]["attempts"] == 1
    assert "sent 2 queued jobs again" in stack.log("reaper") or "sent 1 queued jobs again" in stack.log("reaper")


def test_a_postgres_restart_gives_503s_then_recovers_by_itself_and_the_job_finishes(redis_url, postgres_server,
                                                                                   stack_factory):
    stack = stack_factory(database_url=postgres_server.url, broker_url=redis_url)
    base = stack.base
    dataset = upload_tiny(base)
    first = requests.post(f"{base}/v1/jobs", json={"dataset_id": dataset, "epochs": 2}, timeout=10).json()
    model_id = wait_job(base, first["id"], timeout=180)["model_id"]
    job = requests.post(f"{base}/v1/jobs", json={"dataset_id": dataset, "epochs": 30, "batch_size": 4,
                                                 "early_stopping": None}, timeout=10).json()
    wait_running(base, job["id"])

    # Clients keep calling while the database goes away and comes back.
    replies: list[tuple[float, str, int | str]] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            for what, call in (("predict", lambda: requests.post(f"{base}/v1/models/{model_id}/predict",
                                                                 json={"texts": ["the striker scored"]}, timeout=10)),
                               ("job", lambda: requests.get(f"{base}/v1/jobs/{job['id']}", timeout=10))):
                try:
                    reply = call()
                    code = reply.status_code
                    if code == 503:
                        assert reply.json()["error"]["code"] == "unavailable"
                except requests.RequestException as exc:
                    code = type(exc).__name__
                replies.append((time.monotonic(), what, code))
            time.sleep(0.05)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    time.sleep(1)
    down_at = time.monotonic()
    postgres_server.stop()
    time.sleep(4)
    up_at = time.monotonic()
    postgres_server.start()
    deadline = time.monotonic() + 60  # recovers by itself: no restart of the API or the worker
    while time.monotonic() < deadline and not [r for r in replies if r[0] > up_at and r[2] == 200]:
        time.sleep(0.2)
    time.sleep(1)
    stop.set()
    thread.join(timeout=15)

    codes = Counter(code for _, _, code in replies)
    during = Counter(code for t, _, code in replies if down_at + 0.5 < t < up_at)
    # Never a 500, never a dropped connection; on failure show what the API logged.
    assert set(codes) <= {200, 503}, (codes, stack.log("api")[-6000:])
    assert during[503] > 0, during  # the outage is reported as such
    assert [r for r in replies if r[0] > up_at and r[2] == 200]
    final = wait_job(base, job["id"], timeout=300)
    assert final["status"] == "succeeded" and len(final["history"]) == 30, final
