"""core.ingest: every upload format, awkward-but-valid input, warnings, and a corpus of bad uploads."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma

import pytest

from core.errors import ErrorCode, ServiceError
from core.ingest import Limits, ParsedDataset, parse_records, parse_upload, read_records, write_records

pytestmark = pytest.mark.unit

LIMITS = Limits(max_rows=1000, max_text_chars=200_000, max_labels=10)
TEXTS = [f"text number {i}" for i in range(20)]
LABELS = ["pos" if i % 2 else "neg" for i in range(20)]  # 10 of each: no rare_labels warning
RECORDS = [{"text": t, "label": lab} for t, lab in zip(TEXTS, LABELS)]


def upload(data: bytes | str, filename: str | None = "data.csv", content_type: str | None = None,
           limits: Limits = LIMITS, **kwargs) -> ParsedDataset:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return parse_upload(data, filename=filename, content_type=content_type, limits=limits, **kwargs)


def csv_text(texts=TEXTS, labels=LABELS, newline="\n") -> str:
    return newline.join(["text,label", *(f"{t},{lab}" for t, lab in zip(texts, labels))]) + newline


def jsonl_text(texts=TEXTS, labels=LABELS) -> str:
    return "".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in zip(texts, labels))


def codes(ds: ParsedDataset) -> list[str]:
    return [w["code"] for w in ds.warnings]


# valid formats


@pytest.mark.parametrize("filename, content_type, body, fmt", [
    ("data.csv", None, csv_text(), "csv"),
    ("data.tsv", None, csv_text().replace(",", "\t"), "tsv"),
    ("data.tab", None, csv_text().replace(",", "\t"), "tsv"),
    ("data.jsonl", None, jsonl_text(), "jsonl"),
    ("data.ndjson", None, jsonl_text(), "jsonl"),
    ("data.json", None, json.dumps(RECORDS, indent=2), "json"),
    ("data.json", None, jsonl_text(), "jsonl"),
    (None, "text/csv; charset=utf-8", csv_text(), "csv"),
    (None, "text/tab-separated-values", csv_text().replace(",", "\t"), "tsv"),
    (None, "application/x-ndjson", jsonl_text(), "jsonl"),
    (None, "application/json", json.dumps(RECORDS), "json"),
    ("upload.txt", "application/octet-stream", csv_text(), "csv"),
    (None, None, csv_text().replace(",", "\t"), "tsv"),
    (None, None, jsonl_text(), "jsonl"),
    (None, None, "\n\n" + json.dumps(RECORDS), "json"),
])
def test_each_format_gives_the_same_records(filename, content_type, body, fmt):
    ds = upload(body, filename=filename, content_type=content_type)
    assert ds.format == fmt
    assert ds.texts == TEXTS and ds.labels == LABELS
    assert ds.label_counts == {"neg": 10, "pos": 10}
    assert ds.warnings == []


def test_same_data_hashes_the_same_in_every_format():
    csv_ds = upload(csv_text(newline="\r\n").encode("utf-8-sig"))
    jsonl_ds = upload(jsonl_text(), filename="d.jsonl")
    records_ds = parse_records(RECORDS, limits=LIMITS)
    assert csv_ds.sha256 == jsonl_ds.sha256 == records_ds.sha256
    assert len(csv_ds.sha256) == 64
    assert upload(csv_text(labels=list(reversed(LABELS)))).sha256 != csv_ds.sha256


# awkward but valid


def test_bom_is_stripped_from_the_first_column_name():
    ds = upload(csv_text().encode("utf-8-sig"))
    assert ds.texts == TEXTS


@pytest.mark.parametrize("newline", ["\r\n", "\r"])
def test_crlf_and_cr_line_ends(newline):
    ds = upload(csv_text(newline=newline))
    assert ds.texts == TEXTS and ds.labels == LABELS


def test_quoted_newlines_commas_and_doubled_quotes_are_read_exactly():
    body = ('text,label\r\n'
            '"first line\r\nsecond, with comma",pos\r\n'
            '"she said ""hi""\nthen left",neg\r\n'
            'plain,pos\r\n'
            'also plain,neg\r\n')
    ds = upload(body)
    assert ds.texts == ["first line\r\nsecond, with comma", 'she said "hi"\nthen left', "plain", "also plain"]
    assert ds.labels == ["pos", "neg", "pos", "neg"]


def test_line_numbers_count_the_physical_lines_of_quoted_newlines():
    body = 'text,label\n"a\nb\nc",pos\nx,neg\ny,pos,extra\n'
    with pytest.raises(ServiceError) as e:
        upload(body)
    assert e.value.details["lines"] == [6]


def test_formula_cells_and_texts_are_kept_verbatim():
    body = 'text,label\n=SUM(A1),pos\n"  +cmd|\' /C calc\'!A0  ",neg\n@foo,pos\n-2+3,neg\n'
    ds = upload(body)
    assert ds.texts == ["=SUM(A1)", "  +cmd|' /C calc'!A0  ", "@foo", "-2+3"]


def test_labels_are_stripped_and_extra_columns_ignored():
    body = "id,text,label,notes\n1,hello,  pos \t,x\n2,world, neg,y\n"
    ds = upload(body)
    assert ds.texts == ["hello", "world"] and ds.labels == ["pos", "neg"]


def test_very_long_text_within_the_limit():
    long_text = "word " * 30_000 + "é" * 40_000  # 190k characters, past csv's 128 KiB default field size
    ds = upload(f'text,label\n"{long_text}",pos\nshort,neg\n')
    assert ds.texts[0] == long_text
    ds = upload(jsonl_text([long_text, "short"], ["pos", "neg"]), filename="d.jsonl")
    assert ds.texts[0] == long_text


def test_custom_column_names():
    body = "review;stars\n".replace(";", ",") + "great,5\nawful,1\n"
    ds = upload(body, text_column="review", label_column="stars")
    assert ds.texts == ["great", "awful"] and ds.labels == ["5", "1"]
    ds = upload('{"body": "great", "y": 5}\n{"body": "awful", "y": 1}\n', filename="d.jsonl",
                text_column="body", label_column="y")
    assert ds.labels == ["5", "1"]


def test_json_records_body_with_int_labels():
    ds = parse_records([{"text": "good", "label": 1}, {"text": "bad", "label": 0}, {"text": "ok", "label": "1"}],
                       limits=LIMITS)
    assert ds.labels == ["1", "0", "1"]
    assert ds.label_counts == {"0": 1, "1": 2}
    assert ds.format == "json"


def test_jsonl_keeps_unicode_line_separators_inside_texts():
    ds = upload('{"text": "a\u2028b", "label": "x"}\n{"text": "c", "label": "y"}\n', filename="d.jsonl")
    assert ds.texts == ["a\u2028b", "c"]


# warnings


def test_empty_texts_are_dropped_with_a_warning():
    ds = upload(csv_text() + '   ,pos\n"",neg\n')
    assert ds.texts == TEXTS
    (warning,) = ds.warnings
    assert warning["code"] == "empty_texts_dropped" and warning["count"] == 2
    assert warning["examples"] == [22, 23]


def test_duplicate_and_conflicting_texts_and_rare_labels():
    ds = upload(csv_text() + "text number 0,neg\ntext number 1,neg\nlonely,rare\n")
    assert codes(ds) == ["duplicate_texts", "conflicting_labels", "rare_labels"]
    duplicate, conflict, rare = ds.warnings
    assert duplicate["count"] == 1 and duplicate["examples"] == ["text number 0"]
    assert conflict["count"] == 1 and conflict["examples"] == [{"text": "text number 1", "labels": ["neg", "pos"]}]
    assert rare["count"] == 1 and rare["examples"] == [{"label": "rare", "count": 1}]
    assert all(set(w) == {"code", "message", "count", "examples"} and w["message"] for w in ds.warnings)
    assert len(ds.texts) == 23  # warnings never change the data


# write and read


def test_write_records_round_trip_and_replace(tmp_path):
    ds = upload('text,label\n"multi\r\nline é ✓",pos\n=SUM(A1),neg\n')
    path = tmp_path / "datasets" / "d.jsonl"
    write_records(path, ds)
    assert read_records(path) == (ds.texts, ds.labels)
    raw = path.read_bytes()
    assert raw.decode("utf-8").splitlines() == [
        json.dumps({"text": t, "label": lab}, ensure_ascii=False) for t, lab in zip(ds.texts, ds.labels)]
    assert hashlib.sha256(raw).hexdigest() == ds.sha256
    write_records(path, upload(csv_text()))
    assert read_records(path) == (TEXTS, LABELS)
    assert [p.name for p in path.parent.iterdir()] == ["d.jsonl"]  # no temp file left behind


# bad uploads: (id, body, upload kwargs, words the message must contain, expected details["lines"] or None)

WIDE_HEADER = ",".join(["text", "label", *(f"c{i}" for i in range(1000))])
BAD_UPLOADS = [
    ("empty", b"", {}, "empty", None),
    ("whitespace", " \n\r\n\t \n", {}, "only whitespace", None),
    ("bom only", b"\xef\xbb\xbf", {}, "only whitespace", None),
    ("header only", "text,label\n", {}, "no data rows", None),
    ("no header", "great film,pos\nawful,neg\n", {}, "'great film', 'pos'", [1]),
    ("missing label column", "text,category\na,b\n", {}, "no 'label' column (found: 'text', 'category')", [1]),
    ("wrong separator", "text;label\na;b\n", {}, "separator", [1]),
    ("duplicate header", "text,label,text\na,b,c\n", {}, "repeats column names: 'text'", [1]),
    ("empty header name", "text,,label\na,b,c\n", {}, "empty column names (column 2)", [1]),
    ("too many columns", WIDE_HEADER + "\n", {}, "1002 columns", [1]),
    ("one label", "text,label\na,pos\nb,pos\n", {}, "Only one label ('pos')", None),
    ("one label after dropping", "text,label\na,pos\n ,neg\n", {}, "after dropping 1 rows", None),
    ("all texts empty", "text,label\n,pos\n  ,neg\n", {}, "All 2 rows have an empty text", None),
    ("too many labels", "text,label\n" + "".join(f"t{i},l{i}\n" for i in range(4)),
     {"limits": Limits(max_rows=100, max_text_chars=100, max_labels=3)}, "4 distinct labels; at most 3", None),
    ("too many rows", csv_text(), {"limits": Limits(max_rows=5, max_text_chars=100, max_labels=3)},
     "20 rows; at most 5", None),
    ("text too long", "text,label\nshort,pos\n" + "x" * 101 + ",neg\n",
     {"limits": Limits(max_rows=100, max_text_chars=100, max_labels=3)}, "longer than 100 characters", [3]),
    ("line too long", "text,label\nshort,pos\nshort,neg," + "x" * 2000 + "\n",
     {"limits": Limits(max_rows=100, max_text_chars=100, max_labels=3)}, "Line longer than 1424 bytes", [3]),
    ("latin-1", "text,label\nok,pos\ncaf\xe9,neg\n".encode("latin-1"), {}, "not valid UTF-8 (line 3", [3]),
    ("latin-1 after CR lines", b"text,label\rok,pos\rok,neg\rcaf\xe9,neg\r", {}, "UTF-8", [4]),
    ("nul bytes", b"text,label\na,pos\nb\x00,neg\n", {}, "NUL bytes (first on line 3)", [3]),
    ("utf-16", csv_text().encode("utf-16"), {}, "UTF-16", [1]),
    ("binary garbage", b"text,label\n" + bytes(range(1, 32)) * 20, {}, "looks binary", [2]),
    ("unterminated quote", 'text,label\na,pos\n"never closed,neg\nb,pos\n', {}, "starting on line 3", [3]),
    ("stray quote", 'text,label\na,pos\n"quoted"tail,neg\n', {}, "double quote", [3]),
    ("swallowed rows", 'text,label\n"opened,pos\nb,neg\nc,pos\nclosed",neg\nd,pos\n', {},
     "starting on line 2", [2]),
    ("wrong field count", "text,label\na,pos\nb,neg,extra\nc\nd,pos\n", {}, "Wrong number of fields", [3, 4]),
    ("empty label", "text,label\na,pos\nb,\nc,  \n", {}, "Empty label: lines 3, 4", [3, 4]),
    ("label too long", "text,label\na,pos\nb," + "x" * 201 + "\n", {}, "Label longer than 200 characters", [3]),
    ("label with newline", 'text,label\na,pos\nb,"neg\nc"\n', {}, "Label spans several lines", [3]),
    ("tsv wrong field count", "text\tlabel\na\tpos\tx\nb\tneg\n", {"filename": "d.tsv"}, "Wrong number", [2]),
    ("malformed json line", '{"text": "a", "label": "x"}\n{"text": "b", "label": }\n\n{oops\n',
     {"filename": "d.jsonl"}, "Malformed JSON (first error: Expecting value): lines 2, 4.", [2, 4]),
    ("json line not object", '{"text": "a", "label": "x"}\n["b", "y"]\n', {"filename": "d.jsonl"},
     "not a JSON object", [2]),
    ("json line missing label", '{"text": "a", "label": "x"}\n{"text": "b"}\n', {"filename": "d.jsonl"},
     "no 'label' key", [2]),
    ("json text not string", '{"text": "a", "label": "x"}\n{"text": 5, "label": "y"}\n', {"filename": "d.jsonl"},
     "'text' is not a string", [2]),
    ("json float label", '{"text": "a", "label": "x"}\n{"text": "b", "label": 1.5}\n', {"filename": "d.jsonl"},
     "not a string or an integer", [2]),
    ("json deeply nested", "[" * 100_000, {"filename": "d.jsonl"}, "nested too deeply): line 1.", [1]),
    ("json array deeply nested", "[" * 100_000, {"filename": "d.json"}, "nested too deeply", None),
    ("json array malformed", '[\n{"text": "a", "label": "x"},\n{"text": "b" "label": "y"}\n]',
     {"filename": "d.json"},
     "Malformed JSON on line 3", [3]),
    ("json object, not array", '{\n  "data": [{"text": "a", "label": "x"}]\n}', {"filename": "d.json"},
     "Expected a JSON array of objects with 'text' and 'label'", None),
    ("json array of non-objects", '[1, 2]', {"filename": "d.json"}, "record indices 0, 1 (0-based)", None),
    ("json lone surrogate", '{"text": "a\\ud800", "label": "x"}\n{"text": "b", "label": "y"}\n',
     {"filename": "d.jsonl"}, "surrogate", [1]),
]


@pytest.mark.parametrize("body, kwargs, words, lines", [case[1:] for case in BAD_UPLOADS],
                         ids=[case[0] for case in BAD_UPLOADS])
def test_bad_uploads_are_refused_helpfully(body, kwargs, words, lines):
    with pytest.raises(ServiceError) as e:
        upload(body, **kwargs)
    error = e.value
    assert error.code == ErrorCode.invalid_dataset and error.status == 422
    assert words in error.message
    assert error.message.endswith(".") or error.message.endswith("?")
    if lines is not None:
        assert error.details["lines"] == lines


def test_at_least_twenty_kinds_of_bad_upload():
    assert len(BAD_UPLOADS) >= 20


def test_many_offending_lines_are_summarised():
    body = "text,label\n" + "".join(f"t{i},\n" for i in range(12)) + "a,x\nb,y\n"
    with pytest.raises(ServiceError) as e:
        upload(body)
    assert e.value.details == {"lines": [2, 3, 4, 5, 6], "count": 12}
    assert "and 7 more" in e.value.message


@pytest.mark.parametrize("records, words", [
    ({"text": "a", "label": "x"}, "Expected a JSON array"),
    ([{"text": "a", "label": "x"}, "b"], "record index 1 (0-based)"),
    ([{"text": "a", "label": True}, {"text": "b", "label": "y"}], "not a string or an integer"),
    ([{"text": "a", "label": None}, {"text": "b", "label": "y"}], "not a string or an integer"),
    ([{"text": None, "label": "x"}, {"text": "b", "label": "y"}], "'text' is not a string"),
    ([{"text": "a", "label": ""}, {"text": "b", "label": "y"}], "Empty label"),
    ([], "no data rows"),
])
def test_bad_json_records_bodies(records, words):
    with pytest.raises(ServiceError) as e:
        parse_records(records, limits=LIMITS)
    assert e.value.code == ErrorCode.invalid_dataset and words in e.value.message


# label bounds (a label is echoed in every prediction, model card and dataset listing)


def test_a_label_of_200_characters_is_kept_and_a_longer_one_is_refused_by_name():
    ok = "x" * 200
    assert set(upload(csv_text(labels=[ok if i % 2 else "neg" for i in range(20)])).labels) == {ok, "neg"}
    long = "category-" + "y" * 99_991  # the 100,000-character label
    with pytest.raises(ServiceError) as e:
        upload(csv_text(labels=[long if i % 2 else "neg" for i in range(20)]))
    error = e.value
    assert error.code == ErrorCode.invalid_dataset and error.status == 422
    assert "Label longer than 200 characters" in error.message and "'category-yyy" in error.message
    assert len(error.message) < 300  # the label is quoted shortened, not whole
    assert error.details == {"lines": [3, 5, 7, 9, 11], "count": 10}


def test_labels_longer_together_than_the_limit_are_refused():
    labels = [f"{'ab'[i % 2]}" * 150 for i in range(20)]  # two distinct labels of 150 bytes: 300 together
    limits = Limits(max_rows=100, max_text_chars=100, max_labels=3, max_labels_total_bytes=299)
    with pytest.raises(ServiceError) as e:
        upload(csv_text(labels=labels), limits=limits)
    error = e.value
    assert error.code == ErrorCode.invalid_dataset and error.status == 422
    assert "2 distinct labels take 300 bytes" in error.message and "at most 299" in error.message
    assert error.details == {"labels_total_bytes": 300, "max_labels_total_bytes": 299}
    assert upload(csv_text(labels=labels), limits=Limits(100, 100, 3, max_labels_total_bytes=300)).labels == labels


# choosing other columns


def test_a_missing_column_says_how_to_choose_the_columns():
    with pytest.raises(ServiceError) as e:
        upload("question,category\nwhat is it,DESC\nwho is he,HUM\n")
    error = e.value
    assert "no 'text' or 'label' column (found: 'question', 'category')" in error.message
    assert "text_column=question" in error.message and "label_column=category" in error.message
    assert error.details["parameters"] == {"text_column": "question", "label_column": "category"}
    with pytest.raises(ServiceError) as e:  # only the missing one is suggested
        upload("text,category,source\nwhat is it,DESC,a\nwho is he,HUM,b\n")
    assert e.value.message.endswith("e.g. -F label_column=category.")
    assert e.value.details["parameters"] == {"label_column": "category"}


def test_a_jsonl_record_without_the_keys_says_how_to_choose_them():
    with pytest.raises(ServiceError) as e:
        upload('{"question": "what", "category": "x"}\n', filename="d.jsonl")
    assert "text_column" in e.value.message and "label_column" in e.value.message


# binary formats are not datasets


def _zip(name: str) -> bytes:
    import zipfile
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr(name, "<xml/>")
    return buffer.getvalue()


BINARY_FORMATS = {
    "xlsx": (_zip("[Content_Types].xml"), "data.xlsx", "ZIP"),
    "zip": (_zip("train.csv"), "data.zip", "ZIP"),
    "xls": (bytes.fromhex("d0cf11e0a1b11ae1") + bytes(504), "data.xls", "Excel 97-2003"),
    "pdf": (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "data.pdf", "PDF"),
    "parquet": (b"PAR1\x15\x04\x15\x10" + bytes(32) + b"PAR1", "data.parquet", "Parquet"),
    "gzip": (gzip.compress(csv_text().encode()), "data.csv.gz", "gzip"),
    "bzip2": (bz2.compress(csv_text().encode()), "data.csv.bz2", "bzip2"),
    "xz": (lzma.compress(csv_text().encode()), "data.csv.xz", "xz"),
    "sqlite": (b"SQLite format 3\x00" + bytes(84), "data.db", "SQLite"),
}


@pytest.mark.parametrize("case", BINARY_FORMATS, ids=list(BINARY_FORMATS))
def test_binary_formats_are_unsupported_media_naming_the_supported_ones(case):
    data, filename, kind = BINARY_FORMATS[case]
    for name in (filename, "data.csv", None):  # recognised by content, whatever the file is called
        with pytest.raises(ServiceError) as e:
            upload(data, filename=name)
        error = e.value
        assert error.code == ErrorCode.unsupported_media_type and error.status == 415
        assert kind in error.message
        assert all(word in error.message for word in ("CSV", "TSV", "JSON Lines", "JSON array"))
        assert error.details["supported"] == ["csv", "tsv", "jsonl", "json"]


def test_text_that_merely_starts_like_a_magic_number_is_still_text():
    assert upload("PK,label\n" + "".join(f"t{i},{lab}\n" for i, lab in enumerate(LABELS)),
                  text_column="PK").labels == LABELS
