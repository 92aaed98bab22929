"""API keys, scopes, rate limits and job ceilings through Flask's test client, on SQLite and PostgreSQL.

These tests turn AUTH_REQUIRED (and, where they test limits, RATE_LIMIT_ENABLED) on; every other test runs
with both off (tests/helpers.py make_settings). The `keyed` fixture is in tests/integration/conftest.py.
"""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from app import create_app
from app.cli import main
from app.cli.keys import bootstrap_admin_key
from core.config import get_settings
from core.db import api_keys
from tests.helpers import KeyedApi, assert_error, db_settings, locs, make_settings, running_api, sqlite_settings

pytestmark = pytest.mark.integration

RECORDS = {"name": "n", "records": [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}]}


# ---------------------------------------------------------------------------------------------------------
# 401


def test_missing_or_malformed_credentials_are_401_with_a_bearer_challenge(keyed: KeyedApi):
    for headers in ({}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer "},
                    {"Authorization": "tc_nothing"}):
        resp = keyed.api.get("/v1/jobs", headers=headers)
        assert_error(resp, 401, "unauthorized", says=("Authorization: Bearer",))
        assert resp.headers["WWW-Authenticate"] == 'Bearer realm="textclf"'


def test_unknown_key_is_401_invalid_token(keyed: KeyedApi):
    resp = keyed.call("GET", "/v1/jobs", "tc_00000000_" + "x" * 43)
    assert_error(resp, 401, "unauthorized", says=("not valid",))
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]


def test_public_paths_need_no_key(keyed: KeyedApi):
    assert keyed.api.get("/healthz").status_code == 200
    assert keyed.api.get("/openapi.json").status_code == 200
    assert keyed.api.get("/readyz").status_code in (200, 503)  # no worker here; but not 401


def test_unknown_paths_need_a_key_of_any_scope_then_404(keyed: KeyedApi):
    assert_error(keyed.call("GET", "/v1/nothing-here", None), 401, "unauthorized")
    assert_error(keyed.call("GET", "/v1/nothing-here", keyed.make_key("predict")), 404, "not_found")
    assert_error(keyed.call("DELETE", "/v1/jobs", keyed.make_key("predict")), 405, "method_not_allowed")


# ---------------------------------------------------------------------------------------------------------
# 403 and 2xx by scope

# (method, url, body) -> the status each scope gets; 409/422 mean "let through, then the view answered".
MATRIX = [
    ("GET", "/v1/jobs", None, {"read": 200, "train": 403, "predict": 403, "admin": 200}),
    ("GET", "/v1/models", None, {"read": 200, "train": 403, "predict": 403, "admin": 200}),
    ("GET", "/v1/aliases", None, {"read": 200, "train": 403, "predict": 403, "admin": 200}),
    ("POST", "/v1/datasets", RECORDS, {"read": 403, "train": 201, "predict": 403, "admin": 201}),
    ("POST", "/v1/jobs", {"dataset_id": str(uuid.uuid4())}, {"read": 403, "train": 422, "predict": 403, "admin": 422}),
    ("POST", "/v1/predict", {"texts": ["hi"]}, {"read": 403, "train": 403, "predict": 409, "admin": 409}),
    ("PUT", "/v1/aliases/prod", {"model_id": str(uuid.uuid4())},
     {"read": 403, "train": 403, "predict": 403, "admin": 422}),
    ("GET", "/v1/keys", None, {"read": 403, "train": 403, "predict": 403, "admin": 200}),
]


@pytest.mark.parametrize(("method", "url", "body", "expected"), MATRIX, ids=[f"{m} {u}" for m, u, _, _ in MATRIX])
def test_each_scope_reaches_its_routes_and_no_others(keyed: KeyedApi, method, url, body, expected):
    for scope, status in expected.items():
        resp = keyed.call(method, url, keyed.make_key(scope), json=body)
        assert resp.status_code == status, (scope, resp.get_data(as_text=True))
        if status == 403:
            error = assert_error(resp, 403, "forbidden")
            needed = error["details"]["required_scope"]
            assert needed != scope and f"'{needed}'" in error["message"]
            assert f'scope="{needed}"' in resp.headers["WWW-Authenticate"]


def test_a_key_with_several_scopes_has_each(keyed: KeyedApi):
    key = keyed.make_key("read", "predict")
    assert keyed.call("GET", "/v1/jobs", key).status_code == 200
    assert keyed.call("POST", "/v1/predict", key, json={"texts": ["x"]}).status_code == 409
    assert keyed.call("POST", "/v1/datasets", key, json=RECORDS).status_code == 403


# ---------------------------------------------------------------------------------------------------------
# the keys API


def test_keys_api_creates_lists_and_revokes(keyed: KeyedApi):
    admin = keyed.make_key("admin")
    created = keyed.call("POST", "/v1/keys", admin, json={"name": "ci", "scopes": ["read", "predict", "read"]})
    assert created.status_code == 201, created.get_data(as_text=True)
    body = created.get_json()
    secret = body["key"]
    assert secret.startswith(body["prefix"] + "_") and body["scopes"] == ["predict", "read"]
    assert created.headers["Location"] == f"/v1/keys/{body['id']}"
    assert keyed.call("GET", "/v1/jobs", secret).status_code == 200

    listing = keyed.call("GET", "/v1/keys", admin)
    text = listing.get_data(as_text=True)
    assert secret not in text and api_keys.hash_key(secret) not in text  # neither secret nor hash is ever served
    item = next(k for k in listing.get_json()["items"] if k["id"] == body["id"])
    assert item["prefix"] == body["prefix"] and item["revoked_at"] is None and item["last_used_at"] is not None

    assert keyed.call("DELETE", f"/v1/keys/{body['id']}", admin).status_code == 204
    assert_error(keyed.call("GET", "/v1/jobs", secret), 401, "unauthorized")
    assert keyed.call("DELETE", f"/v1/keys/{body['id']}", admin).status_code == 204  # revoking twice is fine
    revoked = next(k for k in keyed.call("GET", "/v1/keys", admin).get_json()["items"] if k["id"] == body["id"])
    assert revoked["revoked_at"] is not None


def test_keys_api_refuses_bad_input(keyed: KeyedApi):
    admin = keyed.make_key("admin")
    error = assert_error(keyed.call("POST", "/v1/keys", admin, json={"name": "x", "scopes": ["root"]}), 422,
                         "validation_error")
    assert locs(error) == [["scopes", 0]]
    assert_error(keyed.call("POST", "/v1/keys", admin, json={"name": "x", "scopes": []}), 422, "validation_error")
    assert_error(keyed.call("DELETE", f"/v1/keys/{uuid.uuid4()}", admin), 404, "not_found")
    assert_error(keyed.call("POST", "/v1/keys", keyed.make_key("read", "train", "predict"),
                            json={"name": "x", "scopes": ["admin"]}), 403, "forbidden")


def test_last_used_at_is_written_at_most_once_a_minute(keyed: KeyedApi):
    key = keyed.make_key("read")
    with keyed.sessionmaker() as session:
        row = api_keys.find_active_key(session=session, secret=key)
        assert row.last_used_at is None
        assert api_keys.touch_key(session=session, key=row)
        first = row.last_used_at
        assert not api_keys.touch_key(session=session, key=row, now=first + timedelta(seconds=59))
        assert api_keys.touch_key(session=session, key=row, now=first + timedelta(seconds=61))
        session.commit()
    with keyed.sessionmaker() as session:
        assert api_keys.get_key(session=session, key_id=row.id).last_used_at == first + timedelta(seconds=61)


# ---------------------------------------------------------------------------------------------------------
# the keys CLI and the first-start admin key


@pytest.fixture(params=["sqlite", "postgresql"])
def cli_env(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch) -> Iterator[dict]:
    # No key cache: the CLI revokes from outside the API process, and the test expects the 401 at once.
    settings = db_settings(request, tmp_path, AUTH_REQUIRED=True, AUTH_CACHE_SECONDS=0)
    env = {"TEXTCLF_DATA_DIR": str(settings.data_dir), "DATABASE_URL": settings.database_url,
           "AUTH_REQUIRED": "true"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()  # the CLI reads the environment through the cached get_settings()
    with running_api(settings) as (api, sessionmaker):
        yield {"api": KeyedApi(api, sessionmaker)}
    get_settings.cache_clear()


def test_keys_cli_create_list_revoke(cli_env: dict):
    keyed: KeyedApi = cli_env["api"]
    runner = CliRunner()
    made = runner.invoke(main, ["keys", "create", "--name", "ci bot", "--scope", "read", "--scope", "predict"])
    assert made.exit_code == 0, made.output
    secret = made.stdout.strip()  # only the secret goes to stdout, so `KEY=$(textclf keys create ...)` works
    assert secret.startswith("tc_") and "\n" not in secret
    assert keyed.call("GET", "/v1/jobs", secret).status_code == 200
    assert keyed.call("POST", "/v1/jobs", secret, json={}).status_code == 403

    listing = runner.invoke(main, ["keys", "list"])
    assert listing.exit_code == 0 and "ci bot" in listing.output and secret[:11] in listing.output
    assert secret not in listing.output
    with keyed.sessionmaker() as session:
        key_id = api_keys.find_active_key(session=session, secret=secret).id

    revoked = runner.invoke(main, ["keys", "revoke", str(key_id)])
    assert revoked.exit_code == 0, revoked.output
    assert keyed.call("GET", "/v1/jobs", secret).status_code == 401
    missing = runner.invoke(main, ["keys", "revoke", str(uuid.uuid4())])
    assert missing.exit_code == 1 and "no API key" in missing.output
    bad = runner.invoke(main, ["keys", "create", "--name", "x", "--scope", "root"])
    assert bad.exit_code == 2
    assert runner.invoke(main, ["keys", "create", "--name", "x"]).exit_code == 2  # a scope is required
    spoofed = runner.invoke(main, ["keys", "create", "--name", "ci\u202ebot", "--scope", "read"])
    assert spoofed.exit_code == 2 and "U+202E" in spoofed.output  # names follow the API's rule


def test_first_start_makes_one_admin_key_in_a_private_file(tmp_path: Path):
    settings = sqlite_settings(tmp_path, AUTH_REQUIRED=True)
    path = bootstrap_admin_key(settings)
    assert path == settings.data_dir / "admin.key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    secret = path.read_text().strip()
    assert bootstrap_admin_key(settings) is None  # keys exist now: nothing new, file untouched
    assert path.read_text().strip() == secret
    with running_api(settings) as (api, sessionmaker):
        keyed = KeyedApi(api, sessionmaker)
        assert keyed.call("GET", "/v1/keys", secret).status_code == 200
        assert keyed.call("POST", "/v1/datasets", secret, json=RECORDS).status_code == 201


# ---------------------------------------------------------------------------------------------------------
# rate limits


def test_rate_limit_counts_per_key_and_per_class_then_429(tmp_path: Path):
    settings = sqlite_settings(tmp_path, AUTH_REQUIRED=True, RATE_LIMIT_ENABLED=True,
                               RATE_LIMIT_DEFAULT="3 per minute", RATE_LIMIT_PREDICT="2 per minute")
    with running_api(settings) as (api, sessionmaker):
        keyed = KeyedApi(api, sessionmaker)
        first, second = keyed.make_key("read", "predict"), keyed.make_key("read")
        assert [keyed.call("GET", "/v1/jobs", first).status_code for _ in range(3)] == [200] * 3
        resp = keyed.call("GET", "/v1/models", first)  # another read route: the same budget
        error = assert_error(resp, 429, "rate_limited", says=("3 per 1 minute",))
        assert 1 <= int(resp.headers["Retry-After"]) <= 60 and error["details"]["retry_after"] >= 1
        assert keyed.call("GET", "/v1/jobs", second).status_code == 200  # another key: its own budget
        # predictions draw on their own budget
        assert [keyed.call("POST", "/v1/predict", first, json={"texts": ["x"]}).status_code
                for _ in range(3)] == [409, 409, 429]
        # probes are never limited
        assert all(api.get("/healthz").status_code == 200 for _ in range(10))


def test_without_keys_the_limit_is_per_client_address(tmp_path: Path):
    settings = sqlite_settings(tmp_path, RATE_LIMIT_ENABLED=True, RATE_LIMIT_DEFAULT="2 per minute")
    with running_api(settings) as (api, _):
        assert [api.get("/v1/jobs").status_code for _ in range(3)] == [200, 200, 429]
        assert api.get("/v1/jobs", environ_base={"REMOTE_ADDR": "10.0.0.9"}).status_code == 200


def test_redis_storage_shares_the_count_between_api_processes(tmp_path: Path, redis_url: str):
    """Production shape: two apps (two gunicorn workers) on one Redis share one budget per key."""
    settings = sqlite_settings(tmp_path, AUTH_REQUIRED=True, RATE_LIMIT_ENABLED=True,
                               RATE_LIMIT_STORAGE_URL=redis_url, RATE_LIMIT_DEFAULT="3 per minute")
    with running_api(settings) as (api, sessionmaker):
        key = KeyedApi(api, sessionmaker).make_key("read")
        other = create_app(settings, session_factory=sessionmaker).test_client()
        headers = {"Authorization": f"Bearer {key}"}
        statuses = [(api.client if i % 2 else other).get("/v1/jobs", headers=headers).status_code for i in range(4)]
        assert statuses == [200, 200, 200, 429]


def test_unreachable_redis_falls_back_to_counting_in_memory(tmp_path: Path):
    """Rate limiting must not take the API down with it: no 5xx, and the limit still holds per process."""
    settings = sqlite_settings(tmp_path, RATE_LIMIT_ENABLED=True, RATE_LIMIT_DEFAULT="2 per minute",
                               RATE_LIMIT_STORAGE_URL="redis://127.0.0.1:1/0")  # nothing listens on port 1
    with running_api(settings) as (api, _):
        assert [api.get("/v1/jobs").status_code for _ in range(3)] == [200, 200, 429]


def test_rate_limit_settings_are_checked_at_start(tmp_path: Path):
    with pytest.raises(ValueError, match="not a rate limit"):
        make_settings(tmp_path, RATE_LIMIT_TRAIN="lots")


# ---------------------------------------------------------------------------------------------------------
# ceilings on a job


def test_epochs_and_model_size_above_the_servers_ceilings_are_422(tmp_path: Path):
    with running_api(sqlite_settings(tmp_path, MAX_EPOCHS=5, MAX_MODEL_PARAMS=1_000_000)) as (api, _):
        dataset_id = api.create_dataset()
        with api.writes_nothing():
            error = assert_error(api.post("/v1/jobs", json={"dataset_id": dataset_id, "epochs": 6}), 422,
                                 "validation_error", says=("MAX_EPOCHS", "5"))
            assert locs(error) == [["epochs"]]
            # default textcnn: 30,000 x 128 embedding alone is 3.84 M parameters
            error = assert_error(api.post("/v1/jobs", json={"dataset_id": dataset_id, "epochs": 1}), 422,
                                 "validation_error",
                                 says=("MAX_MODEL_PARAMS", "1,000,000"))
            assert locs(error) == [["model"]]
        small = {"dataset_id": dataset_id, "epochs": 5, "tokenizer": {"vocab_size": 5000}}
        assert api.post("/v1/jobs", json=small).status_code == 202


# ---------------------------------------------------------------------------------------------------------
# CORS: off by default, on for the origins CORS_ORIGINS lists


@pytest.mark.parametrize("keyed", ["sqlite"], indirect=True)
def test_cors_is_off_by_default(keyed: KeyedApi):
    key = keyed.make_key("read")
    resp = keyed.call("GET", "/v1/jobs", key, headers={"Origin": "https://app.example.com"})
    assert resp.status_code == 200 and "Access-Control-Allow-Origin" not in resp.headers


def test_cors_answers_listed_origins_only_and_the_preflight_needs_no_key(tmp_path: Path):
    settings = sqlite_settings(tmp_path, AUTH_REQUIRED=True, CORS_ORIGINS="https://app.example.com, http://x.test")
    with running_api(settings) as (api, sessionmaker):
        keyed = KeyedApi(api, sessionmaker)
        key = keyed.make_key("read")
        preflight = api.open("OPTIONS", "/v1/jobs", headers={
            "Origin": "https://app.example.com", "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "Authorization"})
        assert preflight.status_code == 200
        assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
        assert "authorization" in preflight.headers["Access-Control-Allow-Headers"].lower()
        assert not preflight.get_data()  # a preflight returns no data
        ok = keyed.call("GET", "/v1/jobs", key, headers={"Origin": "http://x.test"})
        assert ok.status_code == 200 and ok.headers["Access-Control-Allow-Origin"] == "http://x.test"
        other = keyed.call("GET", "/v1/jobs", key, headers={"Origin": "https://evil.test"})
        assert "Access-Control-Allow-Origin" not in other.headers
        # The key is still needed for the request itself, whatever the origin.
        assert_error(keyed.call("GET", "/v1/jobs", None, headers={"Origin": "http://x.test"}), 401, "unauthorized")


# ---------------------------------------------------------------------------------------------------------
# the per-process key cache (AUTH_CACHE_SECONDS)


def test_a_verified_key_is_not_read_from_the_database_again_within_the_cache_time(tmp_path: Path, monkeypatch):
    with running_api(sqlite_settings(tmp_path, AUTH_REQUIRED=True, AUTH_CACHE_SECONDS=60)) as (api, sm):
        keyed = KeyedApi(api, sm)
        key = keyed.make_key("read")
        assert keyed.call("GET", "/v1/jobs", key).status_code == 200

        def no_database(**_):
            raise AssertionError("the key was read from the database again")

        monkeypatch.setattr(api_keys, "find_active_key", no_database)
        for _ in range(3):
            assert keyed.call("GET", "/v1/jobs", key).status_code == 200
        assert_error(keyed.call("POST", "/v1/jobs", key, json={}), 403, "forbidden")  # scopes come from the cache


def test_a_key_revoked_elsewhere_stops_working_once_the_cache_time_has_passed(tmp_path: Path):
    from app.auth import key_cache

    with running_api(sqlite_settings(tmp_path, AUTH_REQUIRED=True, AUTH_CACHE_SECONDS=30)) as (api, sm):
        with api.client.application.app_context():
            cache = key_cache()
        now = [1000.0]
        cache.clock = lambda: now[0]  # the cache's time moves only when the test says so
        keyed = KeyedApi(api, sm)
        key = keyed.make_key("read")
        assert keyed.call("GET", "/v1/jobs", key).status_code == 200
        with sm.begin() as session:  # as `textclf keys revoke` or another API process would
            api_keys.revoke_key(session=session, key_id=api_keys.find_active_key(session=session, secret=key).id)
        now[0] += 29.9
        assert keyed.call("GET", "/v1/jobs", key).status_code == 200  # still trusted by this process, briefly
        now[0] += 0.2
        assert_error(keyed.call("GET", "/v1/jobs", key), 401, "unauthorized")
