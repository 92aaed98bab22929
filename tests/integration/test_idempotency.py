"""Idempotency-Key on POST /v1/datasets and POST /v1/jobs: a retry gets the first reply, never a second object."""

from __future__ import annotations

import io

import pytest

from tests.conftest import tiny_dataset_csv
from tests.integration.test_api import Api, any_api, api, assert_error  # noqa: F401 (fixtures)

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
    assert any_api.post("/v1/jobs", json={"dataset_id": dataset_id}, headers={"Idempotency-Key": "k"}).status_code == 202
    with any_api.writes_nothing():
        error = assert_error(any_api.post("/v1/jobs", json={"dataset_id": dataset_id, "epochs": 2},
                                          headers={"Idempotency-Key": "k"}), 422, "validation_error",
                             says=("Idempotency-Key",))
    assert error["details"][0]["loc"] == ["header", "Idempotency-Key"]


def test_a_key_is_scoped_to_its_endpoint_and_bad_keys_are_400(api: Api):
    dataset_id = api.create_dataset()
    assert api.post("/v1/jobs", json={"dataset_id": dataset_id}, headers={"Idempotency-Key": "shared"}).status_code == 202
    assert api.post("/v1/datasets", json={"name": "n", "records": [{"text": "a", "label": "x"},
                                                                   {"text": "b", "label": "y"}]},
                    headers={"Idempotency-Key": "shared"}).status_code == 201
    with api.writes_nothing():
        assert_error(api.post("/v1/jobs", json={"dataset_id": dataset_id}, headers={"Idempotency-Key": "x" * 256}),
                     400, "bad_request")
