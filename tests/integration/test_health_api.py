"""/healthz and /readyz, and the headers every reply carries, through Flask's test client."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.db import jobs as jobs_db
from tests.helpers import Api, running_api, sqlite_settings

pytestmark = pytest.mark.integration


def test_health(tmp_path: Path):
    with running_api(sqlite_settings(tmp_path)) as (api, sessionmaker):
        assert api.get("/healthz").get_json() == {"status": "ok"}
        # No training worker has been seen: the API can store jobs but nothing would run them.
        waiting = api.get("/readyz")
        assert waiting.status_code == 503
        assert waiting.get_json()["checks"] == {"database": "ok", "workers": "none_seen", "broker": "ok"}
        with sessionmaker.begin() as session:
            jobs_db.record_worker_heartbeat(session=session, worker_id="host:1")
            jobs_db.record_worker_heartbeat(session=session, worker_id="host:1")  # an upsert, not a duplicate
        ready = api.get("/readyz")
        assert ready.status_code == 200
        assert ready.get_json()["checks"] == {"database": "ok", "workers": "ok", "broker": "ok"}


def test_every_reply_has_security_headers_and_a_request_id(api: Api):
    for resp in (api.get("/healthz"), api.get("/v1/jobs/nope"), api.post("/v1/jobs", json={})):
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
        assert len(resp.headers["X-Request-ID"]) == 32
        assert "Access-Control-Allow-Origin" not in resp.headers  # CORS is off
    echoed = api.get("/healthz", headers={"X-Request-ID": "trace-42.a"})
    assert echoed.headers["X-Request-ID"] == "trace-42.a"
    replaced = api.get("/healthz", headers={"X-Request-ID": "bad id\x01"})
    assert replaced.headers["X-Request-ID"] != "bad id\x01" and len(replaced.headers["X-Request-ID"]) == 32
