"""Fine-tuning an installed base model through the API: the tiny random BERT the tests build (tests/tiny_bert.py) is
installed, `preset: accurate` trains it (in-process, by the worker's own code), the model reply names the base
model and its sha256, predictions come from onnxruntime, and the bundle classifies with onnxruntime and HF
tokenizers alone. Without a base model the same request is a 422 that says how to add one."""

from __future__ import annotations

import io
import json
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.base_models import sha256_file
from core.db.base_models import first_base_model, install_base_model
from tests.helpers import (
    Api,
    assert_bundle_agrees_with_api,
    db_settings,
    running_api,
    sqlite_settings,
    tiny_dataset_csv,
)
from tests.tiny_bert import build_tiny_bert

pytestmark = pytest.mark.integration

TEXTS = {"the striker scored a late goal": "sports", "fry the onions in olive oil": "cooking",
         "the fans cheered the keeper": "sports", "bake the cake slowly": "cooking"}


def upload(api: Api) -> dict:
    resp = api.upload(tiny_dataset_csv(), "tiny.csv")
    assert resp.status_code == 201, resp.get_data(as_text=True)
    return resp.get_json()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, Any, dict[str, Any]]]:
    from worker.training import run_training

    root = tmp_path_factory.mktemp("encoder-jobs")
    settings = sqlite_settings(root)
    source = build_tiny_bert(root / "tiny-bert")
    with running_api(settings) as (api, sessionmaker):
        with sessionmaker.begin() as session:
            install_base_model(session=session, settings=settings, src=source, name="tiny-bert")
        dataset = upload(api)
        resp = api.post("/v1/jobs", json={"dataset_id": dataset["id"], "preset": "accurate", "name": "enc",
                                          "epochs": 6, "batch_size": 8,
                                          "optimizer": {"name": "adamw", "lr": 3e-3}})
        assert resp.status_code == 202, resp.get_data(as_text=True)
        job = resp.get_json()
        assert run_training(sessionmaker=sessionmaker, settings=settings, job_id=uuid.UUID(job["id"])) == \
            "succeeded", api.get(f"/v1/jobs/{job['id']}").get_json()
        job = api.get(f"/v1/jobs/{job['id']}").get_json()
        model = api.get(f"/v1/models/{job['model_id']}").get_json()
        yield api, sessionmaker, {"job": job, "model": model, "source": source, "settings": settings}


def test_the_job_resolves_the_base_model_and_its_length(trained):
    _, _, found = trained
    spec = found["job"]["spec"]
    assert spec["model"]["name"] == "encoder" and spec["model"]["base_model"] == "tiny-bert"
    assert spec["tokenizer"]["max_length"] == 64  # the preset's 128, cut at the tiny model's 64 positions


def test_the_model_names_its_base_model_and_passed_parity(trained):
    _, _, found = trained
    model = found["model"]
    assert model["metrics"]["base_model"] == {"name": "tiny-bert",
                                              "sha256": sha256_file(found["source"] / "model.safetensors")}
    assert model["metrics"]["onnx_parity"]["argmax_agreement"] == 1.0
    assert model["metrics"]["onnx_parity"]["cases"] >= 5


def test_predictions_come_from_the_fine_tuned_encoder(trained):
    api, _, found = trained
    resp = api.post(f"/v1/models/{found['model']['id']}/predict", json={"texts": list(TEXTS), "top_k": 2})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert [p["label"] for p in resp.get_json()["predictions"]] == list(TEXTS.values())


def test_the_bundle_classifies_with_onnxruntime_and_tokenizers_alone(trained, tmp_path: Path):
    api, _, found = trained
    model = found["model"]
    resp = api.client.get(f"/v1/models/{model['id']}/bundle")
    try:
        assert resp.status_code == 200 and resp.mimetype == "application/zip"
        data = resp.get_data()
    finally:
        resp.close()
    card = json.loads(zipfile.ZipFile(io.BytesIO(data)).read("model_card.json"))
    assert card["add_special_tokens"] is True and card["max_tokens"] == 64
    # the last text is past the model's 64 positions: cut as in training, [SEP] kept
    assert_bundle_agrees_with_api(api, model, data, [*TEXTS, "the match " * 100], tmp_path)


# ---------------------------------------------------------------------------------------------------------
# refusals, on both databases (no training)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Api, Any, Any]]:
    settings = db_settings(request, tmp_path)
    with running_api(settings) as (api, sessionmaker):
        yield api, sessionmaker, settings


def test_without_a_base_model_the_accurate_preset_says_how_to_add_one(tmp_path: Path):
    # SQLite: a registry of its own, empty (the PostgreSQL database is shared by the session's tests)
    with running_api(sqlite_settings(tmp_path)) as (api, _):
        dataset = upload(api)
        resp = api.post("/v1/jobs", json={"dataset_id": dataset["id"], "preset": "accurate"})
        assert resp.status_code == 422
        error = resp.get_json()["error"]
        assert "textclf base-models add" in error["message"] and "POST /v1/base-models" in error["message"]
        assert error["details"][0]["loc"] == ["model", "base_model"]
        assert api.get("/v1/jobs").get_json()["items"] == []  # nothing queued


def test_an_unknown_base_model_is_a_422_and_a_known_one_is_locked_in_by_its_job(db_api, tmp_path: Path):
    api, sessionmaker, settings = db_api
    dataset = upload(api)
    resp = api.post("/v1/jobs", json={"dataset_id": dataset["id"], "preset": "accurate",
                                      "model": {"base_model": "nope"}})
    assert resp.status_code == 422 and "GET /v1/base-models" in resp.get_json()["error"]["message"]

    name = f"b-{uuid.uuid4().hex[:8]}"
    with sessionmaker.begin() as session:
        install_base_model(session=session, settings=settings, src=build_tiny_bert(tmp_path / "b"), name=name)
        first = first_base_model(session=session).name  # this one, unless an earlier test's is still installed
    resp = api.post("/v1/jobs", json={"dataset_id": dataset["id"], "model": {"name": "encoder"}})
    assert resp.status_code == 202, resp.get_data(as_text=True)
    assert resp.get_json()["spec"]["model"]["base_model"] == first  # the first installed
    resp = api.post("/v1/jobs", json={"dataset_id": dataset["id"], "model": {"name": "encoder", "base_model": name}})
    assert resp.status_code == 202 and resp.get_json()["spec"]["model"]["base_model"] == name
    # while that job is queued, the base model cannot be deleted
    resp = api.delete(f"/v1/base-models/{name}")
    assert resp.status_code == 409, resp.get_data(as_text=True)


def test_the_memory_ceiling_applies_to_encoders(tmp_path: Path):
    """An encoder job adds transformers and the base model's loading (ENCODER_FIXED_BYTES) to what any job takes:
    under a ceiling between the two, the default spec is accepted and the encoder refused before queueing."""
    settings = sqlite_settings(tmp_path, TRAINING_MEMORY_LIMIT_MB=450)
    with running_api(settings) as (api, sessionmaker):
        with sessionmaker.begin() as session:
            install_base_model(session=session, settings=settings, src=build_tiny_bert(tmp_path / "b"), name="b")
        dataset = upload(api)
        assert api.post("/v1/jobs", json={"dataset_id": dataset["id"]}).status_code == 202
        resp = api.post("/v1/jobs", json={"dataset_id": dataset["id"], "preset": "accurate"})
        assert resp.status_code == 422, resp.get_data(as_text=True)
        error = resp.get_json()["error"]
        assert "TRAINING_MEMORY_LIMIT_MB" in error["message"] and "MiB" in error["message"]


def test_a_sweep_compares_optimizers_on_an_encoder(db_api, tmp_path: Path):
    """Every child of a sweep over an accurate base resolves the base model, with each method's own rate where
    the grid names another method (SGD and momentum for comparison, as the preset's AdamW rate would not do)."""
    api, sessionmaker, settings = db_api
    name = f"b-{uuid.uuid4().hex[:8]}"
    with sessionmaker.begin() as session:
        install_base_model(session=session, settings=settings, src=build_tiny_bert(tmp_path / "b"), name=name)
    dataset = upload(api)
    resp = api.post("/v1/sweeps", json={
        "dataset_id": dataset["id"], "base": {"preset": "accurate", "epochs": 1, "model": {"base_model": name}},
        "grid": {"optimizer.name": ["adamw", "momentum"], "optimizer.layer_decay": [1.0, 0.8]}})
    assert resp.status_code == 202, resp.get_data(as_text=True)
    children = resp.get_json()["children"]
    assert len(children) == 4
    for child in children:
        spec = api.get(f"/v1/jobs/{child['job_id']}").get_json()["spec"]
        assert (spec["model"]["name"], spec["model"]["base_model"]) == ("encoder", name)
        assert spec["optimizer"]["layer_decay"] == child["params"]["optimizer.layer_decay"]
        assert spec["optimizer"]["lr"] == (1e-4 if child["params"]["optimizer.name"] == "adamw" else 0.05)
