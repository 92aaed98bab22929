"""Requests any endpoint can get wrong, through Flask's test client: unknown routes and methods, odd JSON
bodies, NUL characters and spoofed names. Each answers in the one error shape and leaves nothing behind.
"""

from __future__ import annotations

import pytest

from tests.helpers import Api, assert_error, locs, tiny_dataset_csv

pytestmark = pytest.mark.integration


# ---------------------------------------------------------------------------------------------------------
# routing errors


def test_unknown_route_and_wrong_method_use_the_error_shape(api: Api):
    assert_error(api.get("/v1/nothing-here"), 404, "not_found")
    assert_error(api.get("/nothing-here"), 404, "not_found")  # / is the dashboard
    error = assert_error(api.delete("/v1/jobs"), 405, "method_not_allowed")
    assert error["details"] is None
    resp = api.put("/v1/datasets", json={})
    assert_error(resp, 405, "method_not_allowed")
    assert set(resp.headers["Allow"].split(", ")) >= {"GET", "POST"}


# ---------------------------------------------------------------------------------------------------------
# bodies every endpoint refuses


def test_odd_json_bodies_are_client_errors(any_api: Api):
    with any_api.writes_nothing():
        error = assert_error(any_api.post("/v1/jobs", data=b"null", content_type="application/json"), 422,
                             "validation_error", says=("JSON object",))
        assert locs(error) == [[]]
        assert_error(any_api.post("/v1/jobs", data=b'{"dataset_id": 1,}', content_type="application/json"), 400,
                     "invalid_json", says=("line 1, column 18",))
        assert_error(any_api.post("/v1/jobs", data=b"[" * 100_000, content_type="application/json"), 400,
                     "invalid_json", says=("nested too deeply",))
        assert_error(any_api.post("/v1/jobs", data=b'{"name": "\xff"}', content_type="application/json"), 400,
                     "invalid_json", says=("UTF-8",))
        assert_error(any_api.post("/v1/jobs", data=b'{"seed": ' + b"9" * 5000 + b"}",
                                  content_type="application/json"), 400, "invalid_json")
        assert_error(any_api.post("/v1/datasets", data=b"[[[[", content_type="application/json"), 400,
                     "invalid_json")


# PostgreSQL cannot store U+0000 in text or JSONB, so these reach the database and fail there as a 500, while
# SQLite stores them. They belong with the other per-record checks: ingest._build (text, label; the JSONL/JSON
# upload path only refuses raw NUL bytes, not "\u0000" escapes), the dataset name, and TrainingSpec.name.
NUL_BODIES = {
    "record_label": ("/v1/datasets", {"name": "n", "records": [{"text": "x", "label": "a\x00"},
                                                               {"text": "y", "label": "b"}]}),
    "duplicate_text": ("/v1/datasets", {"name": "n", "records": [{"text": "x\x00", "label": "a"},
                                                                 {"text": "x\x00", "label": "a"},
                                                                 {"text": "y", "label": "b"}]}),
    "dataset_name": ("/v1/datasets", {"name": "n\x00", "records": [{"text": "x", "label": "a"},
                                                                   {"text": "y", "label": "b"}]}),
    "job_name": ("/v1/jobs", {"name": "model\x00"}),
}


@pytest.mark.parametrize("case", NUL_BODIES, ids=list(NUL_BODIES))
def test_nul_characters_are_refused(any_api: Api, case: str):
    url, body = NUL_BODIES[case]
    if url == "/v1/jobs":
        body = {**body, "dataset_id": any_api.create_dataset()}
    with any_api.writes_nothing():
        resp = any_api.post(url, json=body)
        assert resp.status_code == 422, resp.get_data(as_text=True)


# Each name's route: a right-to-left override makes "invoice\u202egpj.exe" display as "invoiceexe.jpg".
SPOOFED_NAMES = {
    "dataset_multipart": lambda api, name, _: api.upload(tiny_dataset_csv(), name=name),
    "dataset_raw_query": lambda api, name, _: api.post("/v1/datasets", query_string={"name": name},
                                                       data=tiny_dataset_csv(), content_type="text/csv"),
    "dataset_records": lambda api, name, _: api.post("/v1/datasets", json={"name": name, "records": [
        {"text": "x", "label": "a"}, {"text": "y", "label": "b"}]}),
    "job": lambda api, name, dataset_id: api.post("/v1/jobs", json={"dataset_id": dataset_id, "name": name}),
    "sweep": lambda api, name, dataset_id: api.post("/v1/sweeps", json={
        "dataset_id": dataset_id, "name": name, "grid": {"optimizer.lr": [0.1, 0.01]}}),
    "key": lambda api, name, _: api.post("/v1/keys", json={"name": name, "scopes": ["read"]}),
}


@pytest.mark.parametrize("char", ["\u202e", "\x85", "\u200b", "\u2066"], ids=["RLO", "NEL", "ZWSP", "LRI"])
@pytest.mark.parametrize("case", SPOOFED_NAMES, ids=list(SPOOFED_NAMES))
def test_names_with_control_or_invisible_format_characters_are_422(api: Api, case: str, char: str):
    dataset_id = api.create_dataset()
    keys = api.get("/v1/keys").get_json()["total"]
    with api.writes_nothing():
        error = assert_error(SPOOFED_NAMES[case](api, f"invoice{char}gpj.exe", dataset_id), 422,
                             "validation_error")
    assert ["name"] in locs(error)
    assert any(f"U+{ord(char):04X}" in d["msg"] for d in error["details"]), error
    assert api.get("/v1/keys").get_json()["total"] == keys and api.total("/v1/sweeps") == 0
