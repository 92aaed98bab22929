"""Idempotency-Key on POST /v1/datasets and POST /v1/jobs: a retry gets the first reply, never a second object;
keys are per API key."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from tests.helpers import Api, KeyedApi, assert_error, running_api, sqlite_settings, tiny_dataset_csv

pytestmark = pytest.mark.integration


def test_same_key_and_upload_returns_the_first_dataset(any_api: Api):
    before = any_api.total("/v1/datasets")
    first = any_api.post("/v1/datasets", data={"file": (io.BytesIO(tiny_dataset_csv()), "a.csv")},
                         headers={"Idempotency-Key": "upload-1"})
    again = any_api.post("/v1/datasets", data={"file": (io.BytesIO(tiny_dataset_csv()), "a.csv")},
                         headers={"Idempotency-Key": "upload-1"})
    assert first.status_code == again.status_code == 201
    assert again.get_json() == first.get_json() and again.headers["Location"] == first.headers["Location"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert any_api.total("/v1/datasets") == before + 1


def test_same_key_and_spec_queues_one_job(any_api: Api):
    dataset_id = any_api.create_dataset()
    jobs_before, messages_before = any_api.total("/v1/jobs"), any_api.queued_messages()
    spec = {"dataset_id": dataset_id, "epochs": 3}
    first = any_api.post("/v1/jobs", json=spec, headers={"Idempotency-Key": "job-1"})
    again = any_api.post("/v1/jobs", json=spec, headers={"Idempotency-Key": "job-1"})
    assert first.status_code == again.status_code == 202
    assert again.get_json()["id"] == first.get_json()["id"]
    assert any_api.total("/v1/jobs") == jobs_before + 1
    assert len(any_api.queued_messages() - messages_before) == 1
    # Without a key, the same body is a new job.
    assert any_api.post("/v1/jobs", json=spec).get_json()["id"] != first.get_json()["id"]


def test_a_key_reused_with_another_body_is_refused(any_api: Api):
    dataset_id = any_api.create_dataset()
    assert any_api.post("/v1/jobs", json={"dataset_id": dataset_id},
                        headers={"Idempotency-Key": "k"}).status_code == 202
    with any_api.writes_nothing():
        error = assert_error(any_api.post("/v1/jobs", json={"dataset_id": dataset_id, "epochs": 2},
                                          headers={"Idempotency-Key": "k"}), 422, "validation_error",
                             says=("Idempotency-Key",))
    assert error["details"][0]["loc"] == ["header", "Idempotency-Key"]


def test_a_key_is_scoped_to_its_endpoint_and_bad_keys_are_400(api: Api):
    dataset_id = api.create_dataset()
    assert api.post("/v1/jobs", json={"dataset_id": dataset_id},
                    headers={"Idempotency-Key": "shared"}).status_code == 202
    assert api.post("/v1/datasets", json={"name": "n", "records": [{"text": "a", "label": "x"},
                                                                   {"text": "b", "label": "y"}]},
                    headers={"Idempotency-Key": "shared"}).status_code == 201
    with api.writes_nothing():
        assert_error(api.post("/v1/jobs", json={"dataset_id": dataset_id}, headers={"Idempotency-Key": "x" * 256}),
                     400, "bad_request")


def test_keys_are_per_api_key(keyed: KeyedApi):
    admin, other = keyed.make_key("admin", name="admin"), keyed.make_key("train", name="other")

    def upload(key: str):
        return keyed.call("POST", "/v1/datasets", key, data={"file": (io.BytesIO(tiny_dataset_csv()), "a.csv")},
                          headers={"Idempotency-Key": "shared-1"})

    mine = upload(admin)
    assert mine.status_code == 201
    theirs = upload(other)  # the same key from another API key: a new dataset, not the admin's reply
    assert theirs.status_code == 201 and "Idempotent-Replayed" not in theirs.headers
    assert theirs.get_json()["id"] != mine.get_json()["id"]
    assert upload(admin).get_json()["id"] == mine.get_json()["id"]  # each still replays its own

    dataset_id = mine.get_json()["id"]
    job = keyed.call("POST", "/v1/jobs", admin, json={"dataset_id": dataset_id}, headers={"Idempotency-Key": "j"})
    assert job.status_code == 202
    # another body under the same key is no reuse of the admin's key: a job of its own, not a 422
    other_job = keyed.call("POST", "/v1/jobs", other, json={"dataset_id": dataset_id, "epochs": 2},
                           headers={"Idempotency-Key": "j"})
    assert other_job.status_code == 202, other_job.get_data(as_text=True)
    assert other_job.get_json()["id"] != job.get_json()["id"]
    again = keyed.call("POST", "/v1/jobs", other, json={"dataset_id": dataset_id, "epochs": 2},
                       headers={"Idempotency-Key": "j"})
    assert again.headers["Idempotent-Replayed"] == "true" and again.get_json()["id"] == other_job.get_json()["id"]


def test_a_job_the_queue_refused_frees_its_callers_key(tmp_path: Path):
    """Nothing listens on port 1: the job is undone with a 503, and so is the stored reply, so the retry is not
    handed a 202 for a job that no longer exists."""
    settings = sqlite_settings(tmp_path, AUTH_REQUIRED=True, CELERY_BROKER_URL="redis://127.0.0.1:1/0")
    with running_api(settings) as (api, sessionmaker):
        keyed = KeyedApi(api, sessionmaker)
        key = keyed.make_key("train", "read")
        upload = keyed.call("POST", "/v1/datasets", key, data={"file": (io.BytesIO(tiny_dataset_csv()), "a.csv")})
        for _ in range(2):
            assert_error(keyed.call("POST", "/v1/jobs", key, json={"dataset_id": upload.get_json()["id"]},
                                    headers={"Idempotency-Key": "q"}), 503, "unavailable")
        assert keyed.call("GET", "/v1/jobs", key).get_json()["total"] == 0
