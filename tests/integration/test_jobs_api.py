"""POST/GET /v1/jobs through Flask's test client, on SQLite and (for the bad-input cases) PostgreSQL.

No worker runs: POST /v1/jobs only drops a message in the filesystem broker's folder, which the tests count.
Every refused request must answer in the one error shape, say what is wrong, and leave nothing behind.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.helpers import HUGE_SPEC, LONG_TEXTS_CSV, Api, assert_error, locs, running_api, sqlite_settings

pytestmark = pytest.mark.integration


# ---------------------------------------------------------------------------------------------------------
# specs that are refused


BAD_SPECS = {
    "unknown_field": ({"epochz": 3}, ["epochz"], "extra_forbidden"),
    "unknown_nested_field": ({"optimizer": {"name": "adam", "momentun": 0.9}}, ["optimizer", "momentun"],
                             "extra_forbidden"),
    "epochs_zero": ({"epochs": 0}, ["epochs"], "greater_than_equal"),
    "epochs_too_many": ({"epochs": 201}, ["epochs"], "less_than_equal"),
    "nesterov_no_momentum": ({"optimizer": {"name": "nesterov", "momentum": 0.0}}, ["optimizer"], "value_error"),
    "unknown_optimizer": ({"optimizer": {"name": "lbfgs"}}, ["optimizer", "name"], "literal_error"),
    "epochs_not_int": ({"epochs": "many"}, ["epochs"], "int_parsing"),
    "tfidf_weight_one": ({"model": {"tfidf": {"weight": 1.0}}}, ["model", "tfidf", "weight"], "less_than"),
    "tfidf_unknown_field": ({"model": {"tfidf": {"alpha": 1}}}, ["model", "tfidf", "alpha"], "extra_forbidden"),
}


@pytest.mark.parametrize("case", BAD_SPECS, ids=list(BAD_SPECS))
def test_bad_spec_is_422_naming_the_field(any_api: Api, case: str):
    dataset_id = any_api.create_dataset()
    fields, loc, kind = BAD_SPECS[case]
    with any_api.writes_nothing():
        error = assert_error(any_api.post("/v1/jobs", json={"dataset_id": dataset_id, **fields}), 422,
                             "validation_error")
    assert loc in locs(error), error
    assert kind in [d["type"] for d in error["details"]], error
    assert all(d["msg"] for d in error["details"])


def test_nesterov_without_momentum_says_why(api: Api):
    dataset_id = api.create_dataset()
    resp = api.post("/v1/jobs", json={"dataset_id": dataset_id, "optimizer": {"name": "nesterov", "momentum": 0}})
    error = assert_error(resp, 422, "validation_error")
    assert "nesterov needs momentum > 0" in error["details"][0]["msg"]


def test_job_on_unknown_dataset_is_422(any_api: Api):
    missing = str(uuid.uuid4())
    with any_api.writes_nothing():
        error = assert_error(any_api.post("/v1/jobs", json={"dataset_id": missing}), 422, "validation_error",
                             says=(missing,))
    assert locs(error) == [["dataset_id"]]
    with any_api.writes_nothing():
        error = assert_error(any_api.post("/v1/jobs", json={"dataset_id": "nope"}), 422, "validation_error")
        assert locs(error) == [["dataset_id"]]
        error = assert_error(any_api.post("/v1/jobs", json={}), 422, "validation_error")
        assert locs(error) == [["dataset_id"]] and error["details"][0]["type"] == "missing"


def test_job_on_unknown_test_dataset_is_422(any_api: Api):
    dataset_id, missing = any_api.create_dataset(), str(uuid.uuid4())
    with any_api.writes_nothing():
        error = assert_error(any_api.post("/v1/jobs", json={"dataset_id": dataset_id, "test_dataset_id": missing}),
                             422, "validation_error", says=(missing,))
    assert locs(error) == [["test_dataset_id"]]
    with any_api.writes_nothing():
        error = assert_error(any_api.post("/v1/jobs", json={"dataset_id": dataset_id, "test_dataset_id": dataset_id,
                                                            "test_split": 0.2}), 422, "validation_error")
    assert "not both" in error["details"][0]["msg"]


def test_job_body_must_be_a_json_object(any_api: Api):
    dataset_id = any_api.create_dataset()
    with any_api.writes_nothing():
        error = assert_error(any_api.post("/v1/jobs", json=[{"dataset_id": dataset_id}]), 422, "validation_error",
                             says=("JSON object",))
        assert locs(error) == [[]]
        assert_error(any_api.post("/v1/jobs", data=json.dumps({"dataset_id": dataset_id}), content_type="text/plain"),
                     415, "unsupported_media_type", says=("application/json",))
        assert_error(any_api.post("/v1/jobs"), 415, "unsupported_media_type")
        assert_error(any_api.post("/v1/jobs", data=b"{", content_type="application/json"), 400, "invalid_json")


def test_class_weights_for_labels_the_dataset_lacks_are_422(any_api: Api):
    dataset_id = any_api.create_dataset()
    with any_api.writes_nothing():
        error = assert_error(any_api.post("/v1/jobs", json={"dataset_id": dataset_id,
                                                            "class_weights": {"sports": 2.0, "weather": 3.0}}),
                             422, "validation_error", says=("weather",))
    assert locs(error) == [["class_weights", "weather"]]
    ok = any_api.post("/v1/jobs", json={"dataset_id": dataset_id, "class_weights": {"sports": 2.0}})
    assert ok.status_code == 202


# ---------------------------------------------------------------------------------------------------------
# jobs queued, read, listed and cancelled


def test_create_job_queues_one_message_and_resolves_the_spec(any_api: Api):
    dataset_id = any_api.create_dataset()
    jobs_before, messages_before = any_api.total("/v1/jobs"), any_api.queued_messages()
    resp = any_api.post("/v1/jobs", json={"dataset_id": dataset_id, "epochs": 2,
                                          "optimizer": {"name": "sgd"}})
    assert resp.status_code == 202, resp.get_data(as_text=True)
    job = resp.get_json()
    assert resp.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["dataset_id"] == dataset_id and job["attempts"] == 0
    assert job["model_id"] is None and job["error"] is None and job["history"] == []
    assert job["spec"]["optimizer"]["lr"] == 0.1  # sgd's default filled in
    assert job["spec"]["epochs"] == 2 and job["spec"]["batch_size"] == 32 and job["spec"]["model"]["name"] == "textcnn"
    assert job["progress"]["stage"] == "queued" and job["progress"]["total_epochs"] == 2

    new = any_api.queued_messages() - messages_before
    assert len(new) == 1
    assert job["id"] in (any_api.settings.broker_dir / "queue" / new.pop()).read_text()
    assert any_api.total("/v1/jobs") == jobs_before + 1
    assert any_api.get(f"/v1/jobs/{job['id']}").get_json() == job


def test_job_default_spec(api: Api):
    job = api.post("/v1/jobs", json={"dataset_id": api.create_dataset()}).get_json()
    assert job["spec"]["optimizer"] == {"name": "adamw", "lr": 0.001, "momentum": 0.9, "weight_decay": 0.05,
                                        "betas": [0.9, 0.999], "eps": 1e-8, "layer_decay": 1.0}
    assert job["spec"]["epochs"] == 10 and job["spec"]["batch_size"] == 32
    assert job["spec"]["early_stopping"] == {"metric": "val_macro_f1", "patience": 2, "min_delta": 0.0}


def test_job_not_found(api: Api):
    assert_error(api.get("/v1/jobs/not-a-uuid"), 404, "not_found", says=("No job",))
    assert_error(api.get(f"/v1/jobs/{uuid.uuid4()}"), 404, "not_found", says=("No job",))


def test_list_jobs_pagination_and_status_filter(api: Api):
    dataset_id = api.create_dataset()
    ids = [api.create_job(dataset_id)["id"] for _ in range(3)]
    assert len(api.queued_messages()) == 3

    page = api.get("/v1/jobs?limit=2").get_json()
    assert page["total"] == 3 and page["limit"] == 2 and page["offset"] == 0 and len(page["items"]) == 2
    rest = api.get("/v1/jobs?limit=2&offset=2").get_json()
    assert rest["total"] == 3 and len(rest["items"]) == 1
    assert {j["id"] for j in page["items"] + rest["items"]} == set(ids)
    assert api.get("/v1/jobs?offset=10").get_json()["items"] == []

    assert api.get("/v1/jobs?status=queued").get_json()["total"] == 3
    empty = api.get("/v1/jobs?status=succeeded").get_json()
    assert empty["total"] == 0 and empty["items"] == []

    error = assert_error(api.get("/v1/jobs?status=bogus"), 422, "validation_error", says=("status",))
    assert locs(error) == [["query", "status"]] and "queued" in error["details"][0]["msg"]
    for query, name in (("limit=0", "limit"), ("limit=201", "limit"), ("limit=ten", "limit"),
                        ("offset=-1", "offset")):
        error = assert_error(api.get(f"/v1/jobs?{query}"), 422, "validation_error")
        assert locs(error) == [["query", name]], query
    error = assert_error(api.get("/v1/jobs?limit=0&offset=x"), 422, "validation_error")
    assert locs(error) == [["query", "limit"], ["query", "offset"]]


def test_cancel_a_queued_job(any_api: Api):
    job = any_api.create_job(any_api.create_dataset())
    resp = any_api.post(f"/v1/jobs/{job['id']}/cancel")
    assert resp.status_code == 200 and resp.get_json()["status"] == "cancelled"
    assert any_api.post(f"/v1/jobs/{job['id']}/cancel").get_json()["status"] == "cancelled"  # idempotent
    assert any_api.get("/v1/jobs?status=cancelled").get_json()["total"] >= 1
    assert_error(any_api.post(f"/v1/jobs/{uuid.uuid4()}/cancel"), 404, "not_found")


# ---------------------------------------------------------------------------------------------------------
# the server's ceilings


def test_max_runtime_above_the_servers_ceiling_is_422(tmp_path: Path):
    with running_api(sqlite_settings(tmp_path, JOB_MAX_RUNTIME_SECONDS=3600,
                                     BROKER_VISIBILITY_TIMEOUT=7200)) as (api, _):
        dataset_id = api.create_dataset()
        with api.writes_nothing():
            error = assert_error(api.post("/v1/jobs", json={"dataset_id": dataset_id, "max_runtime_seconds": 7200}),
                                 422, "validation_error", says=("3600",))
        assert locs(error) == [["max_runtime_seconds"]]
        assert api.post("/v1/jobs", json={"dataset_id": dataset_id, "max_runtime_seconds": 600}).status_code == 202


def test_visibility_timeout_must_outlast_the_longest_job(tmp_path: Path):
    with pytest.raises(ValueError, match="BROKER_VISIBILITY_TIMEOUT"):
        sqlite_settings(tmp_path, JOB_MAX_RUNTIME_SECONDS=7200, BROKER_VISIBILITY_TIMEOUT=3600)


def test_a_spec_over_the_training_memory_ceiling_is_422_naming_its_fields(tmp_path: Path):
    with running_api(sqlite_settings(tmp_path)) as (api, _):
        dataset_id = api.create_dataset(LONG_TEXTS_CSV)
        with api.writes_nothing():
            error = assert_error(api.post("/v1/jobs", json={"dataset_id": dataset_id, **HUGE_SPEC}), 422,
                                 "validation_error", says=("TRAINING_MEMORY_LIMIT_MB", "4,096 MiB", "activations"))
        assert ["batch_size"] in locs(error) and ["model", "num_filters"] in locs(error)
        # the same texts with a sane spec, and the huge spec on short texts, are queued
        assert api.post("/v1/jobs", json={"dataset_id": dataset_id}).status_code == 202
        assert api.post("/v1/jobs", json={"dataset_id": api.create_dataset(), **HUGE_SPEC}).status_code == 202
