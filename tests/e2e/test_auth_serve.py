"""`textclf serve` with API keys on: the first-start admin key, 401 without it, scopes, and a 429 from Redis."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest
import requests

from tests.helpers import make_settings, start_serve, tiny_dataset_csv

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_serve_with_keys_bootstraps_an_admin_key_and_enforces_scopes_and_limits(tmp_path: Path, processes,
                                                                                 redis_url: str):
    settings = make_settings(tmp_path, AUTH_REQUIRED=True, RATE_LIMIT_ENABLED=True, RATE_LIMIT_STORAGE_URL=redis_url,
                             RATE_LIMIT_TRAIN="3 per minute")
    base, _, settings = start_serve(tmp_path, processes, settings)

    # first start: an admin key in DATA_DIR/admin.key, readable by its owner only, printed once in the log
    key_file = settings.data_dir / "admin.key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    admin = key_file.read_text().strip()
    assert admin.startswith("tc_") and admin in processes.log("serve")
    auth = {"Authorization": f"Bearer {admin}"}

    missing = requests.get(f"{base}/v1/jobs", timeout=10)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert requests.get(f"{base}/healthz", timeout=10).status_code == 200

    # the README walkthrough with the key: upload, train, poll, predict
    upload = requests.post(f"{base}/v1/datasets", files={"file": ("d.csv", tiny_dataset_csv())}, headers=auth,
                           timeout=30)
    assert upload.status_code == 201, upload.text
    job = requests.post(f"{base}/v1/jobs", json={"dataset_id": upload.json()["id"], "max_steps": 3}, headers=auth,
                        timeout=10)
    assert job.status_code == 202, job.text
    deadline = time.monotonic() + 180
    while (state := requests.get(f"{base}/v1/jobs/{job.json()['id']}", headers=auth, timeout=10).json())[
            "status"] not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert state["status"] == "succeeded", state

    # a narrower key made through the admin API: it predicts, and may not train
    made = requests.post(f"{base}/v1/keys", json={"name": "app", "scopes": ["predict"]}, headers=auth, timeout=10)
    assert made.status_code == 201, made.text
    narrow = {"Authorization": f"Bearer {made.json()['key']}"}
    predicted = requests.post(f"{base}/v1/predict", json={"texts": ["the team won"]}, headers=narrow, timeout=30)
    assert predicted.status_code == 200 and predicted.json()["predictions"][0]["label"] in ("sports", "cooking")
    refused = requests.post(f"{base}/v1/jobs", json={"dataset_id": upload.json()["id"]}, headers=narrow, timeout=10)
    assert refused.status_code == 403 and refused.json()["error"]["details"]["required_scope"] == "train"

    # RATE_LIMIT_TRAIN=3/minute in Redis, shared by both gunicorn workers: the admin key used 2, the 4th is a 429
    statuses = [requests.post(f"{base}/v1/jobs", json={"dataset_id": upload.json()["id"], "max_steps": 1},
                              headers=auth, timeout=10) for _ in range(2)]
    assert [r.status_code for r in statuses] == [202, 429], [r.text for r in statuses]
    limited = statuses[1]
    assert limited.json()["error"]["code"] == "rate_limited" and int(limited.headers["Retry-After"]) >= 1
    assert processes.log("serve").count("textclf admin key") == 1  # the banner (and the secret) printed once
