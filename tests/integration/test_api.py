"""The HTTP API through Flask's test client on a real database (SQLite, and PostgreSQL for the bad-input cases).

No worker runs: POST /v1/jobs only drops a message in the filesystem broker's folder, which the tests count.
Every refused request must answer in the one error shape, say what is wrong, and leave nothing behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from app import create_app
from core.config import Settings
from core.db import jobs as jobs_db
from core.db.migrate import upgrade
from core.db.session import make_engine, make_sessionmaker
from tests.conftest import make_settings, tiny_dataset_csv

pytestmark = pytest.mark.integration


# ---------------------------------------------------------------------------------------------------------
# harness


class Api:
    """A test client on `create_app(settings)` that checks every reply leaks no traceback or server path."""

    def __init__(self, client: FlaskClient, settings: Settings):
        self.client = client
        self.settings = settings

    def open(self, method: str, url: str, **kwargs: Any) -> TestResponse:
        resp = self.client.open(url, method=method, **kwargs)
        body = resp.get_data(as_text=True)
        assert "Traceback" not in body, body
        assert str(self.settings.data_dir.parent) not in body, body
        return resp

    def get(self, url: str, **kwargs: Any) -> TestResponse:
        return self.open("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> TestResponse:
        return self.open("POST", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> TestResponse:
        return self.open("PUT", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> TestResponse:
        return self.open("DELETE", url, **kwargs)

    # what a request may have written

    def total(self, url: str) -> int:
        resp = self.get(url)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        return resp.get_json()["total"]

    def dataset_files(self) -> set[str]:
        folder = self.settings.datasets_dir
        return {p.name for p in folder.iterdir()} if folder.exists() else set()

    def queued_messages(self) -> set[str]:
        folder = self.settings.broker_dir / "queue"
        return {p.name for p in folder.iterdir()} if folder.exists() else set()

    def snapshot(self) -> dict[str, Any]:
        return {"datasets": self.total("/v1/datasets"), "jobs": self.total("/v1/jobs"),
                "dataset_files": self.dataset_files(), "messages": self.queued_messages()}

    @contextlib.contextmanager
    def writes_nothing(self) -> Iterator[None]:
        before = self.snapshot()
        yield
        assert self.snapshot() == before

    # shortcuts

    def upload(self, data: bytes = b"", filename: str = "data.csv", **form: str) -> TestResponse:
        return self.post("/v1/datasets", data={"file": (io.BytesIO(data), filename), **form},
                         content_type="multipart/form-data")

    def create_dataset(self, data: bytes | None = None, filename: str = "tiny.csv") -> str:
        resp = self.upload(tiny_dataset_csv() if data is None else data, filename)
        assert resp.status_code == 201, resp.get_data(as_text=True)
        return resp.get_json()["id"]

    def create_job(self, dataset_id: str, **spec: Any) -> dict:
        resp = self.post("/v1/jobs", json={"dataset_id": dataset_id, "epochs": 1, "batch_size": 8, **spec})
        assert resp.status_code == 202, resp.get_data(as_text=True)
        return resp.get_json()


def assert_error(resp: TestResponse, status: int, code: str, *, says: tuple[str, ...] = ()) -> dict:
    """The reply is the one error shape with this status and code, and its message mentions `says`."""
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.is_json, resp.get_data(as_text=True)
    body = resp.get_json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message", "details"}, error
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and len(error["message"]) >= 15, error
    for fragment in says:
        assert fragment in error["message"], error
    return error


def locs(error: dict) -> list[list]:
    return [d["loc"] for d in error["details"]]


@contextlib.contextmanager
def running_api(settings: Settings) -> Iterator[tuple[Api, Any]]:
    """An app on `settings` whose engine and Celery client are closed afterwards (warnings are errors here)."""
    engine = make_engine(settings.database_url)
    sessionmaker = make_sessionmaker(engine)
    app = create_app(settings, session_factory=sessionmaker)
    try:
        with app.test_client() as client:
            yield Api(client, settings), sessionmaker
    finally:
        state = app.extensions["textclf"]
        if "celery" in state.__dict__:  # created lazily by the first send
            state.celery.close()
        engine.dispose()


def sqlite_settings(tmp_path: Path, **overrides: Any) -> Settings:
    settings = make_settings(tmp_path, **overrides)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url)
    return settings


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    """The embedded default: SQLite and the filesystem broker."""
    with running_api(sqlite_settings(tmp_path)) as (client, _):
        yield client


@pytest.fixture(params=["sqlite", "postgresql"])
def any_api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    """The same checks on both databases; the PostgreSQL one is shared by the session, so compare counts."""
    if request.param == "sqlite":
        settings = sqlite_settings(tmp_path)
    else:
        settings = make_settings(tmp_path, DATABASE_URL=request.getfixturevalue("pg_url"))
    with running_api(settings) as (client, _):
        yield client


# ---------------------------------------------------------------------------------------------------------
# uploads that are refused


BAD_UPLOADS = {
    "empty": (b"", "data.csv", ["empty"]),
    "whitespace_only": (b"  \n\n ", "data.csv", ["whitespace"]),
    "header_only": (b"text,label\n", "data.csv", ["no data rows"]),
    "missing_label_column": (b"text,category\nhello there,a\ngood bye,b\n", "data.csv",
                             ["'label'", "'category'"]),
    "one_label": (b"text,label\nhello there,pos\ngreat stuff,pos\n", "data.csv", ["Only one label", "'pos'"]),
    "bad_jsonl_line": (b'{"text": "a", "label": "x"}\n{"text": "b", "label": \n', "data.jsonl",
                       ["Malformed JSON", "line 2"]),
}


@pytest.mark.parametrize("case", BAD_UPLOADS, ids=list(BAD_UPLOADS))
def test_bad_upload_is_refused_and_stores_nothing(any_api: Api, case: str):
    data, filename, says = BAD_UPLOADS[case]
    with any_api.writes_nothing():
        assert_error(any_api.upload(data, filename, name=case), 422, "invalid_dataset", says=tuple(says))


def test_upload_without_header_names_the_columns_found(any_api: Api):
    with any_api.writes_nothing():
        error = assert_error(any_api.upload(b"I loved it,pos\nawful film,neg\n"), 422, "invalid_dataset",
                             says=("'text'", "'label'", "found: 'I loved it', 'pos'", "first line"))
    assert error["details"]["missing"] == ["text", "label"]
    assert error["details"]["found"] == ["I loved it", "pos"]
    assert error["details"]["lines"] == [1]


def test_upload_that_is_not_utf8_names_the_line(any_api: Api):
    latin1 = "text,label\nhello there,a\ncafé au lait,b\n".encode("latin-1")
    with any_api.writes_nothing():
        error = assert_error(any_api.upload(latin1), 422, "invalid_dataset", says=("UTF-8", "line 3"))
    assert error["details"]["lines"] == [3]
    assert error["details"]["byte_offset"] == latin1.index(b"\xe9")


def test_binary_upload_with_nul_bytes_is_refused(any_api: Api):
    garbage = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    with any_api.writes_nothing():
        error = assert_error(any_api.upload(garbage, "photo.csv"), 422, "invalid_dataset",
                             says=("NUL bytes", "not UTF-8 text"))
    assert error["details"]["byte_offset"] == garbage.index(b"\x00")
    assert error["details"]["lines"] == [3]  # \r\n ends line 1, the lone \n line 2


def test_multipart_without_file_part_is_a_bad_request(any_api: Api):
    with any_api.writes_nothing():
        resp = any_api.post("/v1/datasets", data={"name": "nofile"}, content_type="multipart/form-data")
        assert_error(resp, 400, "bad_request", says=("'file'",))


def test_unsupported_content_type_is_415(any_api: Api):
    with any_api.writes_nothing():
        resp = any_api.post("/v1/datasets", data=b"<rows/>", content_type="application/xml")
        assert_error(resp, 415, "unsupported_media_type", says=("multipart/form-data",))


def test_malformed_json_body_is_400(any_api: Api):
    with any_api.writes_nothing():
        resp = any_api.post("/v1/datasets", data=b'{"name": "x", "records": [', content_type="application/json")
        assert_error(resp, 400, "invalid_json", says=("not valid JSON",))


def test_json_records_with_one_label_are_refused(any_api: Api):
    records = [{"text": "hello there", "label": "a"}, {"text": "good bye", "label": "a"}]
    with any_api.writes_nothing():
        resp = any_api.post("/v1/datasets", json={"name": "one", "records": records})
        assert_error(resp, 422, "invalid_dataset", says=("Only one label", "at least 2"))


def test_json_records_missing_a_field_name_the_place(any_api: Api):
    records = [{"text": "hello there", "label": "a"}, {"text": "good bye"}]
    with any_api.writes_nothing():
        resp = any_api.post("/v1/datasets", json={"name": "missing", "records": records})
        error = assert_error(resp, 422, "validation_error")
    assert ["records", 1, "label"] in locs(error)
    assert all(set(d) == {"loc", "msg", "type"} for d in error["details"])


def test_json_records_body_with_unknown_key_is_refused(api: Api):
    with api.writes_nothing():
        resp = api.post("/v1/datasets", json={"name": "x", "records": [{"text": "a", "label": "b"}], "extra": 1})
        error = assert_error(resp, 422, "validation_error")
    assert ["extra"] in locs(error)


def test_upload_over_max_upload_bytes_is_413(tmp_path: Path):
    big = b"text,label\n" + b"".join(f"sentence number {i} of many,{'ab'[i % 2]}\n".encode() for i in range(200))
    assert len(big) > 2048
    with running_api(sqlite_settings(tmp_path, MAX_UPLOAD_BYTES=2048)) as (api, _):
        with api.writes_nothing():
            assert_error(api.upload(big), 413, "payload_too_large", says=("MAX_UPLOAD_BYTES",))
            resp = api.post("/v1/datasets?name=big", data=big, content_type="text/csv")
            assert_error(resp, 413, "payload_too_large", says=("MAX_UPLOAD_BYTES",))
        # a file that fits under the limit, multipart overhead included, is fine
        assert api.upload(big[:1500].rsplit(b"\n", 1)[0] + b"\n").status_code == 201


# ---------------------------------------------------------------------------------------------------------
# uploads that work


def test_upload_csv_then_list_read_and_store_records(api: Api):
    resp = api.upload(tiny_dataset_csv(), "sports_vs_cooking.csv")
    assert resp.status_code == 201, resp.get_data(as_text=True)
    dataset = resp.get_json()
    assert resp.headers["Location"] == f"/v1/datasets/{dataset['id']}"
    assert dataset["name"] == "sports_vs_cooking" and dataset["format"] == "csv"
    assert dataset["row_count"] == 72 and dataset["labels"] == {"cooking": 36, "sports": 36}
    assert api.dataset_files() == {f"{dataset['id']}.jsonl"}
    lines = (api.settings.datasets_dir / f"{dataset['id']}.jsonl").read_text().splitlines()
    assert len(lines) == 72 and json.loads(lines[0]) == {"text": "the team won the match", "label": "sports"}

    assert api.get(f"/v1/datasets/{dataset['id']}").get_json() == dataset
    page = api.get("/v1/datasets").get_json()
    assert page["total"] == 1 and page["items"] == [dataset] and page["limit"] == 50 and page["offset"] == 0


def test_custom_text_and_label_columns(any_api: Api):
    data = b"id,review,sentiment\n1,loved every minute,pos\n2,a waste of time,neg\n3,would watch again,pos\n"
    before = any_api.total("/v1/datasets")
    resp = any_api.upload(data, "reviews.csv", text_column="review", label_column="sentiment", name="reviews")
    assert resp.status_code == 201, resp.get_data(as_text=True)
    body = resp.get_json()
    assert body["name"] == "reviews" and body["row_count"] == 3 and body["labels"] == {"neg": 1, "pos": 2}
    assert any_api.total("/v1/datasets") == before + 1
    assert any_api.dataset_files() == {f"{body['id']}.jsonl"}


def test_custom_columns_that_are_absent_are_named(api: Api):
    with api.writes_nothing():
        resp = api.upload(b"text,label\na,b\nc,d\n", text_column="review", label_column="sentiment")
        error = assert_error(resp, 422, "invalid_dataset", says=("'review'", "'sentiment'"))
    assert error["details"]["missing"] == ["review", "sentiment"]


def test_a_wrong_header_says_how_to_choose_the_columns(any_api: Api):
    data = b"question,category\nwhat is a bat,DESC\nwho wrote it,HUM\n"
    with any_api.writes_nothing():
        error = assert_error(any_api.upload(data), 422, "invalid_dataset",
                             says=("found: 'question', 'category'", "-F text_column=question -F label_column=category"))
    assert error["details"]["parameters"] == {"text_column": "question", "label_column": "category"}
    # the suggestion works, as form fields and as query parameters of a raw body
    assert any_api.upload(data, text_column="question", label_column="category").status_code == 201
    resp = any_api.post("/v1/datasets?name=trec&text_column=question&label_column=category", data=data,
                        content_type="text/csv")
    assert resp.status_code == 201, resp.get_data(as_text=True)


def test_labels_over_200_characters_or_over_the_total_are_refused(tmp_path: Path):
    with running_api(sqlite_settings(tmp_path, MAX_LABELS_TOTAL_BYTES=1024)) as (api, _):
        long = b"L" * 100_000
        with api.writes_nothing():
            assert_error(api.upload(b"text,label\na film,pos\ndull," + long + b"\n"), 422, "invalid_dataset",
                         says=("Label longer than 200 characters", "'LLLL", "line 3"))
            # six distinct labels of 200 characters: each allowed, 1,200 bytes together are not
            rows = b"".join(b"text %d,%s\n" % (i, bytes([65 + i]) * 200) for i in range(6))
            assert_error(api.upload(b"text,label\n" + rows), 422, "invalid_dataset",
                         says=("6 distinct labels take 1200 bytes", "at most 1024"))
        assert api.upload(b"text,label\n" + rows[: rows.index(b"text 5")]).status_code == 201  # 1,000 bytes


BINARY_UPLOADS = {
    "xlsx": (b"PK\x03\x04\x14\x00\x06\x00\x08\x00" + bytes(20) + b"[Content_Types].xml", "train.xlsx", "ZIP"),
    "xls": (bytes.fromhex("d0cf11e0a1b11ae1") + bytes(504), "train.xls", "Excel 97-2003"),
    "pdf": (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", "train.pdf", "PDF"),
    "parquet": (b"PAR1" + bytes(40) + b"PAR1", "train.parquet", "Parquet"),
    "gzip": (b"\x1f\x8b\x08\x00" + bytes(16), "train.csv.gz", "gzip"),
}


@pytest.mark.parametrize("case", BINARY_UPLOADS, ids=list(BINARY_UPLOADS))
def test_binary_file_formats_are_415_naming_the_supported_ones(any_api: Api, case: str):
    data, filename, kind = BINARY_UPLOADS[case]
    with any_api.writes_nothing():
        for resp in (any_api.upload(data, filename),
                     any_api.post("/v1/datasets?name=x", data=data, content_type="application/octet-stream")):
            error = assert_error(resp, 415, "unsupported_media_type",
                                 says=(kind, "CSV", "TSV", "JSON Lines", "JSON array"))
            assert error["details"]["supported"] == ["csv", "tsv", "jsonl", "json"]


def test_text_with_a_stray_nul_byte_is_still_422(any_api: Api):
    with any_api.writes_nothing():
        assert_error(any_api.upload(b"text,label\nhello there,a\ngood\x00bye,b\n"), 422, "invalid_dataset",
                     says=("NUL bytes", "line 3"))


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


def test_raw_csv_body_with_name_in_query(any_api: Api):
    resp = any_api.post("/v1/datasets?name=raw-upload", data=tiny_dataset_csv(), content_type="text/csv")
    assert resp.status_code == 201, resp.get_data(as_text=True)
    body = resp.get_json()
    assert body["name"] == "raw-upload" and body["format"] == "csv" and body["row_count"] == 72


def test_tsv_and_jsonl_uploads(api: Api):
    tsv = b"text\tlabel\nthe team won, again\tsports\nstir the sauce\tcooking\n"
    resp = api.upload(tsv, "d.tsv")
    assert resp.status_code == 201, resp.get_data(as_text=True)
    assert resp.get_json()["format"] == "tsv"
    assert resp.get_json()["labels"] == {"cooking": 1, "sports": 1}

    jsonl = b'{"text": "the team won", "label": "sports"}\n\n{"text": "stir the sauce", "label": 3}\n'
    resp = api.upload(jsonl, "d.jsonl")
    assert resp.status_code == 201, resp.get_data(as_text=True)
    assert resp.get_json()["format"] == "jsonl" and resp.get_json()["labels"] == {"3": 1, "sports": 1}

    resp = api.post("/v1/datasets?name=nd", data=jsonl, content_type="application/x-ndjson")
    assert resp.status_code == 201 and resp.get_json()["format"] == "jsonl"
    assert api.total("/v1/datasets") == 3 and len(api.dataset_files()) == 3


def test_json_records_body(api: Api):
    records = [{"text": "the team won", "label": "sports"}, {"text": "stir the sauce", "label": "cooking"}]
    resp = api.post("/v1/datasets", json={"name": "records", "records": records})
    assert resp.status_code == 201, resp.get_data(as_text=True)
    assert resp.get_json()["format"] == "json" and resp.get_json()["name"] == "records"


def test_warnings_for_duplicates_and_rare_labels(api: Api):
    data = b"text,label\nthe team won,sports\nthe team won,sports\nstir the sauce,cooking\n,cooking\n"
    resp = api.upload(data)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    body = resp.get_json()
    assert body["row_count"] == 3
    warnings = {w["code"]: w for w in body["warnings"]}
    assert set(warnings) == {"empty_texts_dropped", "duplicate_texts", "rare_labels"}
    assert warnings["duplicate_texts"]["count"] == 1 and warnings["duplicate_texts"]["examples"] == ["the team won"]
    assert warnings["rare_labels"]["examples"] == [{"label": "cooking", "count": 1}, {"label": "sports", "count": 2}]
    assert warnings["empty_texts_dropped"]["examples"] == [5]
    assert all(w["message"] for w in body["warnings"])
    assert api.get(f"/v1/datasets/{body['id']}").get_json()["warnings"] == body["warnings"]


# ---------------------------------------------------------------------------------------------------------
# datasets: read and delete


def test_dataset_not_found(api: Api):
    for url in ("/v1/datasets/not-a-uuid", f"/v1/datasets/{uuid.uuid4()}"):
        assert_error(api.get(url), 404, "not_found", says=("No dataset",))
        assert_error(api.delete(url), 404, "not_found", says=("No dataset",))
    assert_error(api.get("/v1/datasets?limit=0"), 422, "validation_error")


def test_delete_dataset_removes_row_and_records_file(api: Api):
    dataset_id = api.create_dataset()
    other = api.create_dataset()
    resp = api.delete(f"/v1/datasets/{dataset_id}")
    assert resp.status_code == 204 and resp.get_data() == b""
    assert api.dataset_files() == {f"{other}.jsonl"}
    assert api.total("/v1/datasets") == 1
    assert_error(api.get(f"/v1/datasets/{dataset_id}"), 404, "not_found")


def test_delete_dataset_used_by_queued_job_is_409(any_api: Api):
    dataset_id = any_api.create_dataset()
    any_api.create_job(dataset_id)
    with any_api.writes_nothing():
        error = assert_error(any_api.delete(f"/v1/datasets/{dataset_id}"), 409, "conflict", says=("job",))
    assert error["details"] is None
    assert any_api.get(f"/v1/datasets/{dataset_id}").status_code == 200


def test_delete_dataset_used_as_a_queued_jobs_test_set_is_409(any_api: Api):
    dataset_id, test_id = any_api.create_dataset(), any_api.create_dataset()
    any_api.create_job(dataset_id, test_dataset_id=test_id)
    with any_api.writes_nothing():
        assert_error(any_api.delete(f"/v1/datasets/{test_id}"), 409, "conflict", says=("job",))


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


def test_cancel_a_queued_job(any_api: Api):
    job = any_api.create_job(any_api.create_dataset())
    resp = any_api.post(f"/v1/jobs/{job['id']}/cancel")
    assert resp.status_code == 200 and resp.get_json()["status"] == "cancelled"
    assert any_api.post(f"/v1/jobs/{job['id']}/cancel").get_json()["status"] == "cancelled"  # idempotent
    assert any_api.get("/v1/jobs?status=cancelled").get_json()["total"] >= 1
    assert_error(any_api.post(f"/v1/jobs/{uuid.uuid4()}/cancel"), 404, "not_found")


# ---------------------------------------------------------------------------------------------------------
# jobs


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
                                        "betas": [0.9, 0.999], "eps": 1e-8}
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
# routing errors


def test_unknown_route_and_wrong_method_use_the_error_shape(api: Api):
    assert_error(api.get("/v1/nothing-here"), 404, "not_found")
    assert_error(api.get("/nothing-here"), 404, "not_found")  # / is the dashboard
    error = assert_error(api.delete("/v1/jobs"), 405, "method_not_allowed")
    assert error["details"] is None
    resp = api.put("/v1/datasets", json={})
    assert_error(resp, 405, "method_not_allowed")
    assert set(resp.headers["Allow"].split(", ")) >= {"GET", "POST"}


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


def test_class_weights_for_labels_the_dataset_lacks_are_422(any_api: Api):
    dataset_id = any_api.create_dataset()
    with any_api.writes_nothing():
        error = assert_error(any_api.post("/v1/jobs", json={"dataset_id": dataset_id,
                                                            "class_weights": {"sports": 2.0, "weather": 3.0}}),
                             422, "validation_error", says=("weather",))
    assert locs(error) == [["class_weights", "weather"]]
    ok = any_api.post("/v1/jobs", json={"dataset_id": dataset_id, "class_weights": {"sports": 2.0}})
    assert ok.status_code == 202


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


def test_max_runtime_above_the_servers_ceiling_is_422(tmp_path: Path):
    with running_api(sqlite_settings(tmp_path, JOB_MAX_RUNTIME_SECONDS=3600, BROKER_VISIBILITY_TIMEOUT=7200)) as (api, _):
        dataset_id = api.create_dataset()
        with api.writes_nothing():
            error = assert_error(api.post("/v1/jobs", json={"dataset_id": dataset_id, "max_runtime_seconds": 7200}),
                                 422, "validation_error", says=("3600",))
        assert locs(error) == [["max_runtime_seconds"]]
        assert api.post("/v1/jobs", json={"dataset_id": dataset_id, "max_runtime_seconds": 600}).status_code == 202


def test_visibility_timeout_must_outlast_the_longest_job(tmp_path: Path):
    with pytest.raises(ValueError, match="BROKER_VISIBILITY_TIMEOUT"):
        sqlite_settings(tmp_path, JOB_MAX_RUNTIME_SECONDS=7200, BROKER_VISIBILITY_TIMEOUT=3600)


# Texts of 3,000 words (a small upload: werkzeug spools larger ones to a file): the largest spec the schema
# accepts would take several GiB in its first step on them.
LONG_TEXTS_CSV = ("text,label\n" + "".join(f"{' '.join(['w'] * 3000)} {i},{'ab'[i % 2]}\n" for i in range(20))
                  ).encode()
HUGE_SPEC = {"batch_size": 4096, "tokenizer": {"max_length": 4096},
             "model": {"embedding_dim": 1024, "num_filters": 1024}}


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
