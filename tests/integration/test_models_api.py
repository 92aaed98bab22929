"""Models, aliases and predictions through Flask's test client: first with no model, then with a real (tiny)
one trained in-process by the worker's own code.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.helpers import Api, assert_error, locs, running_api, sqlite_settings

pytestmark = pytest.mark.integration


# ---------------------------------------------------------------------------------------------------------
# models, aliases and predictions without a model


def test_no_models_yet(any_api: Api):
    if any_api.settings.is_sqlite:
        assert any_api.get("/v1/models").get_json() == {"items": [], "total": 0, "limit": 50, "offset": 0}
    with any_api.writes_nothing():
        if any_api.total("/v1/models") == 0:  # the shared PostgreSQL database may hold other tests' models
            assert_error(any_api.post("/v1/predict", json={"texts": ["hi"]}), 409, "model_not_ready",
                         says=("No model",))
        assert_error(any_api.post("/v1/predict?alias=nope", json={"texts": ["hi"]}), 404, "not_found",
                     says=("'nope'",))
        for url in (f"/v1/models/{uuid.uuid4()}", "/v1/models/not-a-uuid"):
            assert_error(any_api.get(url), 404, "not_found", says=("No model",))
            assert_error(any_api.post(f"{url}/predict", json={"texts": ["hi"]}), 404, "not_found")


def test_predict_with_queued_job_id_is_model_not_ready(any_api: Api):
    job = any_api.create_job(any_api.create_dataset())
    with any_api.writes_nothing():
        error = assert_error(any_api.post(f"/v1/models/{job['id']}/predict", json={"texts": ["hi"]}), 409,
                             "model_not_ready", says=("queued",))
        assert error["details"] == {"job_status": "queued"}
        assert_error(any_api.get(f"/v1/models/{job['id']}"), 409, "model_not_ready")


def test_alias_errors(api: Api):
    assert_error(api.put("/v1/aliases/bad name!", json={"model_id": str(uuid.uuid4())}), 422, "validation_error",
                 says=("Alias names",))
    assert_error(api.put(f"/v1/aliases/{'x' * 65}", json={"model_id": str(uuid.uuid4())}), 422, "validation_error")
    missing = str(uuid.uuid4())
    error = assert_error(api.put("/v1/aliases/prod", json={"model_id": missing}), 422, "validation_error",
                         says=(missing,))
    assert locs(error) == [["model_id"]]
    error = assert_error(api.put("/v1/aliases/prod", json={"model": missing}), 422, "validation_error")
    assert ["model_id"] in locs(error) and ["model"] in locs(error)
    assert_error(api.put("/v1/aliases/prod", data=b"x", content_type="text/plain"), 415, "unsupported_media_type")
    assert_error(api.delete("/v1/aliases/prod"), 404, "not_found", says=("'prod'",))
    assert api.get("/v1/aliases").get_json() == {"items": []}


# ---------------------------------------------------------------------------------------------------------
# predictions with a real (tiny) model, trained in-process by the worker's own code


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, dict]]:
    """An API with one model trained on the tiny dataset (epochs=1, batch_size 8) and a job that failed."""
    from worker.training import run_training

    settings = sqlite_settings(tmp_path_factory.mktemp("trained"), MAX_PREDICT_TEXTS=3, MAX_TEXT_CHARS=200)
    with running_api(settings) as (api, sessionmaker):
        job = api.create_job(api.create_dataset(), name="tiny-model")
        status = run_training(sessionmaker=sessionmaker, settings=settings, job_id=uuid.UUID(job["id"]))
        assert status == "succeeded", api.get(f"/v1/jobs/{job['id']}").get_json()
        yield api, api.get(f"/v1/jobs/{job['id']}").get_json()


def test_trained_model_is_listed_and_predicts(trained: tuple[Api, dict]):
    api, job = trained
    assert job["status"] == "succeeded" and job["model_id"]
    models = api.get("/v1/models").get_json()
    assert models["total"] == 1 and models["items"][0]["id"] == job["model_id"]
    assert models["items"][0]["name"] == "tiny-model" and models["items"][0]["labels"] == ["cooking", "sports"]

    resp = api.post(f"/v1/models/{job['model_id']}/predict", json={"texts": ["the team scored", "bake it"],
                                                                   "top_k": 5})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    body = resp.get_json()
    assert body["model_id"] == job["model_id"] and len(body["predictions"]) == 2
    for prediction in body["predictions"]:
        assert prediction["label"] in ("cooking", "sports")
        assert len(prediction["top_k"]) == 2  # capped at the label count
        assert abs(sum(s["score"] for s in prediction["top_k"]) - 1.0) < 1e-4

    # the job id now leads to its model; the newest model serves /v1/predict
    assert api.get(f"/v1/models/{job['model_id']}").get_json()["job_id"] == job["id"]
    default = api.post("/v1/predict", json={"texts": ["a late goal"]})
    assert default.status_code == 200 and default.get_json()["model_id"] == job["model_id"]


def test_predict_input_bounds(trained: tuple[Api, dict]):
    api, job = trained
    url = f"/v1/models/{job['model_id']}/predict"
    error = assert_error(api.post(url, json={"texts": []}), 422, "validation_error")
    assert locs(error) == [["texts"]]
    error = assert_error(api.post(url, json={"texts": ["a", "b", "c", "d"]}), 422, "validation_error",
                         says=("MAX_PREDICT_TEXTS",))
    assert locs(error) == [["texts"]]
    error = assert_error(api.post(url, json={"texts": ["ok", "x" * 201]}), 422, "validation_error",
                         says=("MAX_TEXT_CHARS",))
    assert locs(error) == [["texts", 1]]
    for top_k in (0, 101, "two"):
        error = assert_error(api.post(url, json={"texts": ["a"], "top_k": top_k}), 422, "validation_error")
        assert locs(error) == [["top_k"]], top_k
    error = assert_error(api.post(url, json={"texts": "just one"}), 422, "validation_error")
    assert locs(error) == [["texts"]]
    error = assert_error(api.post(url, json={"texts": [1, None]}), 422, "validation_error")
    assert locs(error) == [["texts", 0], ["texts", 1]]
    error = assert_error(api.post(url, json={"texts": ["a"], "topk": 2}), 422, "validation_error")
    assert ["topk"] in locs(error)
    assert_error(api.post(url, data=b"[", content_type="application/json"), 400, "invalid_json")
    assert_error(api.post(url, data=b"hello", content_type="text/plain"), 415, "unsupported_media_type")
    assert api.post(url, json={"texts": ["", "   "]}).status_code == 200  # empty texts get a prediction too


def test_aliases_on_a_real_model(trained: tuple[Api, dict]):
    api, job = trained
    resp = api.put("/v1/aliases/prod", json={"model_id": job["model_id"]})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.get_json()["name"] == "prod" and resp.get_json()["model_id"] == job["model_id"]
    assert [a["name"] for a in api.get("/v1/aliases").get_json()["items"]] == ["prod"]
    assert "prod" in api.get(f"/v1/models/{job['model_id']}").get_json()["aliases"]
    pred = api.post("/v1/predict?alias=prod", json={"texts": ["stir the soup"]})
    assert pred.status_code == 200 and pred.get_json()["model_id"] == job["model_id"]
    assert api.delete("/v1/aliases/prod").status_code == 204
    assert_error(api.post("/v1/predict?alias=prod", json={"texts": ["x"]}), 404, "not_found")


def test_finished_job_no_longer_blocks_deleting_its_dataset(trained: tuple[Api, dict]):
    api, job = trained
    dataset_id = job["dataset_id"]
    assert api.delete(f"/v1/datasets/{dataset_id}").status_code == 204
    assert api.dataset_files() == set()
    # the job forgets the dataset; the model outlives it, keeps its provenance and still serves
    assert api.get(f"/v1/jobs/{job['id']}").get_json()["dataset_id"] is None
    assert api.get(f"/v1/models/{job['model_id']}").get_json()["dataset_id"] == dataset_id
    assert api.post(f"/v1/models/{job['model_id']}/predict", json={"texts": ["goal"]}).status_code == 200
