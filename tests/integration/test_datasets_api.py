"""POST/GET/DELETE /v1/datasets through Flask's test client, on SQLite and (for the bad-input cases) PostgreSQL.

Every refused upload must answer in the one error shape, say what is wrong, and leave nothing behind
(`Api.writes_nothing`). Fixtures `api` and `any_api`: tests/integration/conftest.py.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.helpers import Api, assert_error, locs, running_api, sqlite_settings, tiny_dataset_csv

pytestmark = pytest.mark.integration


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
