"""Serving features on real (tiny) models trained in-process by the worker's own code: versions, abstaining,
the model bundle and its README example, /metrics, and JSON access logs with the request id."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from app.bundle import USAGE
from core.logs import ContextFilter, JsonFormatter
from core.ml.predictor import choose_providers
from tests.helpers import Api, assert_error, locs, running_api, sqlite_settings

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
TEXTS = ["the team scored a late goal", "bake the bread slowly", "stir the soup"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, list[dict]]]:
    """An API with two models of one name (v1, v2; v2 trained with a per-class abstain threshold)."""
    from worker.training import run_training

    settings = sqlite_settings(tmp_path_factory.mktemp("served"))
    with running_api(settings) as (api, sessionmaker):
        dataset_id = api.create_dataset()
        jobs = [api.create_job(dataset_id, name="sports-or-cooking"),
                api.create_job(dataset_id, name="sports-or-cooking", abstain_threshold={"sports": 0.99})]
        models = []
        for job in jobs:
            assert run_training(sessionmaker=sessionmaker, settings=settings, job_id=uuid.UUID(job["id"])) == \
                "succeeded"
            model_id = api.get(f"/v1/jobs/{job['id']}").get_json()["model_id"]
            models.append(api.get(f"/v1/models/{model_id}").get_json())
        yield api, models


def predict(api: Api, url: str, texts: list[str] = TEXTS, **body) -> dict:
    resp = api.post(url, json={"texts": texts, **body})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json()


def test_versions_count_up_per_name_and_every_reply_names_the_model(served):
    api, (v1, v2) = served
    assert (v1["name"], v1["version"]) == ("sports-or-cooking", 1)
    assert (v2["name"], v2["version"]) == ("sports-or-cooking", 2)
    body = predict(api, f"/v1/models/{v1['id']}/predict")
    assert (body["model_id"], body["model_name"], body["model_version"], body["alias"]) == \
        (v1["id"], "sports-or-cooking", 1, None)
    assert api.put("/v1/aliases/staging", json={"model_id": v2["id"]}).status_code == 200
    body = predict(api, "/v1/predict?alias=staging")
    assert (body["model_id"], body["model_version"], body["alias"]) == (v2["id"], 2, "staging")
    # the alias moves at once in the process that moved it
    assert api.put("/v1/aliases/staging", json={"model_id": v1["id"]}).status_code == 200
    assert predict(api, "/v1/predict?alias=staging")["model_id"] == v1["id"]


def test_threshold_from_the_spec_abstains_with_scores_kept(served):
    api, (v1, v2) = served
    assert v1["abstain_threshold"] is None and v2["abstain_threshold"] == {"sports": 0.99}
    # a tiny model trained one epoch is nowhere near 0.99 sure: sports predictions abstain, cooking ones don't
    plain = predict(api, f"/v1/models/{v2['id']}/predict", top_k=2)["predictions"]
    for p in plain:
        best = p["top_k"][0]
        assert p["score"] == best["score"] and len(p["top_k"]) == 2
        if best["label"] == "sports" and best["score"] < 0.99:
            assert p["label"] is None and p["abstained"] is True
        else:
            assert p["label"] == best["label"] and p["abstained"] is False


def test_patch_sets_and_clears_the_threshold(served):
    api, (v1, _) = served
    url = f"/v1/models/{v1['id']}"
    resp = api.open("PATCH", url, json={"abstain_threshold": 1.0})
    assert resp.status_code == 200 and resp.get_json()["abstain_threshold"] == 1.0
    for p in predict(api, f"{url}/predict")["predictions"]:
        assert p["label"] is None and p["abstained"] is True and 0.0 < p["score"] <= 1.0
    assert api.get(url).get_json()["abstain_threshold"] == 1.0

    resp = api.open("PATCH", url, json={"abstain_threshold": None})
    assert resp.status_code == 200 and resp.get_json()["abstain_threshold"] is None
    assert all(not p["abstained"] and p["label"] for p in predict(api, f"{url}/predict")["predictions"])


@pytest.mark.parametrize("body, loc", [
    ({"abstain_threshold": {"weather": 0.5}}, ["abstain_threshold", "weather"]),
    ({"abstain_threshold": 1.5}, ["abstain_threshold"]),
    ({"abstain_threshold": True}, ["abstain_threshold"]),
    ({"abstain_threshold": "0.5"}, ["abstain_threshold"]),
    ({"abstain_threshold": {"sports": -0.1}}, ["abstain_threshold"]),
    ({}, ["abstain_threshold"]),
    ({"abstain_threshold": 0.5, "extra": 1}, ["extra"]),
])
def test_bad_patch_is_422_and_changes_nothing(served, body, loc):
    api, (v1, _) = served
    url = f"/v1/models/{v1['id']}"
    before = api.get(url).get_json()
    error = assert_error(api.open("PATCH", url, json=body), 422, "validation_error")
    assert all(found[: len(loc)] == loc for found in locs(error)), locs(error)
    assert api.get(url).get_json() == before


def test_patch_unknown_model_is_404(served):
    api, _ = served
    assert_error(api.open("PATCH", f"/v1/models/{uuid.uuid4()}", json={"abstain_threshold": 0.5}), 404, "not_found")


def test_job_with_threshold_for_an_unknown_label_is_422(served):
    api, _ = served
    dataset_id = api.create_dataset()
    error = assert_error(api.post("/v1/jobs", json={"dataset_id": dataset_id, "abstain_threshold": {"weather": 0.5}}),
                         422, "validation_error", says=("weather",))
    assert locs(error) == [["abstain_threshold", "weather"]]


def _bundle_bytes(api: Api, model: dict) -> bytes:
    resp = api.client.get(f"/v1/models/{model['id']}/bundle")  # binary: not through Api's text checks
    try:
        assert resp.status_code == 200 and resp.mimetype == "application/zip"
        assert f"sports-or-cooking-v{model['version']}.zip" in resp.headers["Content-Disposition"]
        return resp.get_data()
    finally:
        resp.close()


def test_bundle_classifies_like_the_api_with_onnxruntime_alone(served):
    api, (v1, _) = served
    bundle = zipfile.ZipFile(io.BytesIO(_bundle_bytes(api, v1)))
    assert set(bundle.namelist()) == {"model.onnx", "tokenizer.json", "labels.json", "model_card.json", "README.md"}
    card = json.loads(bundle.read("model_card.json"))
    assert (card["id"], card["name"], card["version"]) == (v1["id"], "sports-or-cooking", 1)
    assert card["dataset_sha256"] and card["spec"]["epochs"] == 1 and "val_accuracy" in card["metrics"]
    assert json.loads(bundle.read("labels.json")) == card["labels"] == ["cooking", "sports"]
    assert "sports-or-cooking v1" in bundle.read("README.md").decode()

    tokenizer = Tokenizer.from_str(bundle.read("tokenizer.json").decode())
    session = ort.InferenceSession(bundle.read("model.onnx"), providers=["CPUExecutionProvider"])
    rows = [e.ids[: card["max_tokens"]] for e in tokenizer.encode_batch(TEXTS, add_special_tokens=False)]
    width = max(card["min_tokens"], *map(len, rows))
    ids = np.array([r + [card["pad_id"]] * (width - len(r)) for r in rows], dtype=np.int64)
    mask = (np.arange(width)[None, :] < np.array([len(r) for r in rows])[:, None]).astype(np.int64)
    (logits,) = session.run(["logits"], {"input_ids": ids, "attention_mask": mask})
    proba = np.exp(logits - logits.max(axis=1, keepdims=True))
    proba /= proba.sum(axis=1, keepdims=True)
    api_scores = [{s["label"]: s["score"] for s in p["top_k"]}
                  for p in predict(api, f"/v1/models/{v1['id']}/predict", top_k=2)["predictions"]]
    for row, scores in zip(proba, api_scores):
        assert np.allclose(row, [scores[label] for label in card["labels"]], atol=1e-5)


def test_readme_bundle_example_runs_and_agrees_with_the_api(served, tmp_path: Path):
    api, (v1, _) = served
    readme = (ROOT / "README.md").read_text()
    snippet = re.search(r"<!-- bundle-example -->\n```python\n(.*?)```", readme, re.S).group(1)
    assert snippet == USAGE.format(file="model.zip")  # the bundle's own README shows the same code
    (tmp_path / "model.zip").write_bytes(_bundle_bytes(api, v1))
    run = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    texts = re.search(r"texts = (\[.*\])", snippet).group(1)
    expected = [p["label"] for p in predict(api, f"/v1/models/{v1['id']}/predict", json.loads(texts))["predictions"]]
    assert run.stdout.strip() == repr(expected)


def test_bundle_of_unknown_model_is_404(served):
    api, _ = served
    assert_error(api.get(f"/v1/models/{uuid.uuid4()}/bundle"), 404, "not_found")


def test_predict_through_the_default_alias_names_it(served):
    api, (v1, v2) = served
    body = predict(api, "/v1/predict")  # no `default` alias: the newest model, chosen by no alias
    assert (body["model_id"], body["alias"]) == (v2["id"], None)
    assert api.put("/v1/aliases/default", json={"model_id": v1["id"]}).status_code == 200
    try:
        for url in ("/v1/predict", "/v1/predict?alias=default"):
            body = predict(api, url)
            assert (body["model_id"], body["alias"]) == (v1["id"], "default"), url
    finally:
        assert api.delete("/v1/aliases/default").status_code == 204
    assert predict(api, "/v1/predict")["alias"] is None


def test_a_lone_surrogate_in_a_text_is_422_naming_its_index(served):
    api, (v1, _) = served
    for url in (f"/v1/models/{v1['id']}/predict", "/v1/predict"):
        resp = api.post(url, data='{"texts": ["fine", "\\ud800 alone", "also fine"]}', content_type="application/json")
        error = assert_error(resp, 422, "validation_error", says=("surrogate",))
        assert locs(error) == [["texts", 1]]


def test_a_succeeded_job_id_in_place_of_a_model_id_names_its_model(served):
    api, (v1, _) = served
    for resp in (api.get(f"/v1/models/{v1['job_id']}"),
                 api.post(f"/v1/models/{v1['job_id']}/predict", json={"texts": TEXTS})):
        error = assert_error(resp, 409, "conflict", says=(v1["id"],))
        assert error["details"] == {"job_status": "succeeded", "model_id": v1["id"]}


def test_providers_are_the_same_whichever_process_answers(served):
    api, (v1, _) = served
    predict(api, f"/v1/models/{v1['id']}/predict")  # loaded in this process
    loaded = api.get(f"/v1/models/{v1['id']}").get_json()["providers"]
    assert loaded == choose_providers()
    with running_api(api.settings) as (fresh, _):  # a process that has loaded nothing
        assert fresh.get(f"/v1/models/{v1['id']}").get_json()["providers"] == loaded
        assert all(m["providers"] == loaded for m in fresh.get("/v1/models").get_json()["items"])


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("name, damage", [
    ("model.onnx", _truncate),
    ("model.onnx", lambda path: path.write_bytes(b"not an onnx graph\n" * 64)),
    ("model.onnx", Path.unlink),
    ("tokenizer.json", lambda path: path.write_text('{"model": "garbage', encoding="utf-8")),
], ids=["truncated-onnx", "garbage-onnx", "deleted-onnx", "garbage-tokenizer"])
def test_damaged_model_files_are_409_logged_once_and_served_once_repaired(served, caplog, name, damage):
    api, (v1, _) = served
    path = api.settings.models_dir / v1["id"] / name
    good = path.read_bytes()
    url = f"/v1/models/{v1['id']}/predict"
    damage(path)
    try:
        with running_api(api.settings) as (fresh, _):  # a process that has not loaded the model
            for _ in range(3):
                assert_error(fresh.post(url, json={"texts": TEXTS}), 409, "model_not_ready")
            assert_error(fresh.put("/v1/aliases/damaged", json={"model_id": v1["id"]}), 409, "model_not_ready")
            assert "damaged" not in [a["name"] for a in fresh.get("/v1/aliases").get_json()["items"]]
            failures = [r for r in caplog.records if r.levelno >= logging.WARNING and v1["id"] in r.getMessage()]
            assert len(failures) == 1, [r.getMessage() for r in failures]  # one load tried, not one per request
            path.write_bytes(good)  # repaired: the new files get a new try
            assert predict(fresh, url)["model_id"] == v1["id"]
    finally:
        path.write_bytes(good)


def _samples(text: str, name: str) -> dict[tuple, float]:
    """{(sorted label items): value} of one metric in the Prometheus text format."""
    out = {}
    for match in re.finditer(rf"^{name}(?:{{(.*?)}})? (\S+)$", text, re.M):
        labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', match.group(1) or "")))
        out[labels] = float(match.group(2))
    return out


def test_metrics(served):
    api, (v1, _) = served
    predict(api, f"/v1/models/{v1['id']}/predict")
    api.get("/v1/models/nope")
    resp = api.get("/metrics")
    assert resp.status_code == 200 and resp.mimetype == "text/plain"
    text = resp.get_data(as_text=True)
    requests = _samples(text, "textclf_http_requests_total")
    assert requests[(("endpoint", "/v1/models/<model_id>/predict"), ("method", "POST"), ("status", "200"))] >= 1
    assert requests[(("endpoint", "/v1/models/<model_id>"), ("method", "GET"), ("status", "404"))] >= 1
    assert not any("/v1/models/nope" in dict(k).get("endpoint", "") for k in requests)  # routes, not paths
    latency = _samples(text, "textclf_http_request_duration_seconds_count")
    assert latency[(("endpoint", "/v1/models/<model_id>/predict"), ("method", "POST"))] >= 1
    predictions = _samples(text, "textclf_predictions_total")
    assert predictions[(("model_name", "sports-or-cooking"), ("model_version", "1"))] >= len(TEXTS)
    assert _samples(text, "textclf_loaded_models")[()] >= 1
    jobs = _samples(text, "textclf_jobs")
    assert jobs[(("status", "succeeded"),)] == 2 and jobs[(("status", "failed"),)] == 0
    assert _samples(text, "textclf_queue_depth")[()] == 0
    assert _samples(text, "textclf_training_seconds_count")[()] == 2
    assert _samples(text, "textclf_training_seconds_bucket")[(("le", "+Inf"),)] == 2


@contextlib.contextmanager
def json_log(name: str) -> Iterator[io.StringIO]:
    """Records of logger `name`, formatted as LOG_FORMAT=json formats them."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)


def test_access_log_lines_are_json_with_the_request_id(served):
    api, (v1, _) = served
    with json_log("textclf.access") as stream:
        resp = api.post(f"/v1/models/{v1['id']}/predict", json={"texts": ["goal"]}, headers={"X-Request-ID": "abc-1"})
        missing = api.get("/v1/jobs/nope")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 2
    first, second = lines
    assert first["request_id"] == "abc-1" == resp.headers["X-Request-ID"]
    assert (first["method"], first["route"], first["status"]) == ("POST", "/v1/models/<model_id>/predict", 200)
    assert first["path"] == f"/v1/models/{v1['id']}/predict" and first["duration_ms"] > 0
    assert first["logger"] == "textclf.access" and first["level"] == "INFO"
    assert second["request_id"] == missing.headers["X-Request-ID"] and second["status"] == 404


def test_request_id_is_not_left_on_records_after_the_request(served):
    api, _ = served
    api.get("/healthz", headers={"X-Request-ID": "leaky-1"})
    with json_log("textclf.test-after") as stream:
        logging.getLogger("textclf.test-after").warning("between requests")
    assert "request_id" not in json.loads(stream.getvalue())
