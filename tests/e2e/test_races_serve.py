"""Bursts of racing requests against `textclf serve`: every reply a 2xx or a 4xx JSON error, nothing half-stored.

tests/integration/test_races.py makes each interleaving happen on purpose, on SQLite and PostgreSQL; this is
the same as clients send it, through the real server and its processes.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.helpers import start_serve, upload_tiny, wait_job

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def fire(base: str, calls: list[tuple[str, str, dict | None]]) -> list[requests.Response]:
    """Send every call at once (released together) and return the replies in order."""
    barrier = threading.Barrier(len(calls))

    def send(call: tuple[str, str, dict | None]) -> requests.Response:
        method, url, body = call
        barrier.wait(timeout=30)
        return requests.request(method, f"{base}{url}", json=body, timeout=60)

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(send, calls))


def assert_clean(reply: requests.Response) -> None:
    assert reply.status_code < 500, reply.text
    if reply.status_code != 204:
        body = reply.json()
        if reply.status_code >= 400:
            assert set(body) == {"error"}, body


def test_racing_job_creation_dataset_deletion_and_alias_creation(tmp_path: Path, processes):
    base, _, _ = start_serve(tmp_path, processes)
    trained = requests.post(f"{base}/v1/jobs", json={"dataset_id": upload_tiny(base), "max_steps": 3}, timeout=10)
    model_id = wait_job(base, trained.json()["id"], timeout=180)["model_id"]

    # a job and a delete of its dataset at once: exactly one of the two wins
    queued = []
    for _ in range(10):
        dataset_id = upload_tiny(base)
        created, deleted = fire(base, [("POST", "/v1/jobs", {"dataset_id": dataset_id, "max_steps": 1}),
                                       ("DELETE", f"/v1/datasets/{dataset_id}", None)])
        assert_clean(created), assert_clean(deleted)
        assert (created.status_code, deleted.status_code) in ((202, 409), (422, 204)), (created.text, deleted.text)
        if created.status_code == 202:
            queued.append(created.json()["id"])
    for job_id in queued:  # no need to train them
        assert requests.post(f"{base}/v1/jobs/{job_id}/cancel", timeout=10).status_code in (200, 202, 409)
    jobs = requests.get(f"{base}/v1/jobs?limit=200", timeout=10).json()["items"]
    assert len(jobs) == 1 + len(queued)
    assert all(job["dataset_id"] is not None for job in jobs), jobs

    # 8 clients creating one new alias at once: all succeed, one alias
    for burst in range(4):
        name = f"new-{burst}"
        replies = fire(base, [("PUT", f"/v1/aliases/{name}", {"model_id": model_id})] * 8)
        for reply in replies:
            assert reply.status_code == 200, reply.text
            assert reply.json()["name"] == name and reply.json()["model_id"] == model_id
    aliases = requests.get(f"{base}/v1/aliases", timeout=10).json()["items"]
    assert sorted(a["name"] for a in aliases) == [f"new-{burst}" for burst in range(4)]
