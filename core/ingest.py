"""Turning an uploaded labelled dataset into clean (text, label) records: pure functions, no Flask, no DB."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import shlex
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from json.encoder import encode_basestring
from pathlib import Path
from typing import Any

from core.errors import ErrorCode, ServiceError
from core.scripts import script_mix
from core.spec import MAX_LABEL_CHARS

MAX_COLUMNS = 1000
RARE_LABEL_COUNT = 10  # fewer examples than this can barely be learned, let alone evaluated
SHOWN = 5  # offending lines and examples quoted per error or warning; enough to find the pattern
# ASCII control characters other than tab, LF and CR; in valid UTF-8 these bytes only ever stand for themselves.
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
SURROGATE = re.compile("[\ud800-\udfff]")  # JSON "\ud800" escapes decode to strings UTF-8 cannot store
_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json"}
# Files saved or exported instead of text, known by their first bytes: a 415 naming what to send says more than
# the "NUL bytes" or "not UTF-8" that decoding them would report. Not by file name: tools export TSV as ".xls".
_BINARY_FORMATS = [  # (pattern at the start, short name, what it is)
    (rb"PK(\x03\x04|\x05\x06|\x07\x08)", "zip", "a ZIP archive (an .xlsx, .docx or .ods file is one)"),
    (rb"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "ole2", "an Excel 97-2003 workbook (.xls) or another OLE2 document"),
    (rb"%PDF-", "pdf", "a PDF document"),
    (rb"PAR1", "parquet", "a Parquet file"),
    (rb"ARROW1\x00", "arrow", "an Arrow or Feather file"),
    (rb"SQLite format 3\x00", "sqlite", "an SQLite database"),
    (rb"\x1f\x8b", "gzip", "a gzip-compressed file"),
    (rb"BZh[1-9]1AY&SY", "bzip2", "a bzip2-compressed file"),
    (rb"\xfd7zXZ\x00", "xz", "an xz-compressed file"),
    (rb"\x28\xb5\x2f\xfd", "zstd", "a Zstandard-compressed file"),
    (rb"7z\xbc\xaf\x27\x1c", "7z", "a 7-Zip archive"),
]
SUPPORTED_FORMATS = ["csv", "tsv", "jsonl", "json"]
# How an upload names its own columns (JSON keys); said wherever one is missing.
_COLUMN_PARAMETERS = "the text_column and label_column form fields or query parameters"
_CONTENT_TYPES = {
    "text/csv": "csv", "application/csv": "csv",
    "application/vnd.ms-excel": "csv",  # what browsers on Windows send for a .csv file
    "text/tab-separated-values": "tsv",
    "application/jsonl": "jsonl", "application/x-jsonlines": "jsonl",
    "application/x-ndjson": "jsonl", "application/ndjson": "jsonl",
    "application/json": "json",
}

Row = tuple[int, str, str]  # (1-based line, or 0-based record index; text; label)


@dataclass(frozen=True)
class Limits:
    """Bounds on one dataset (from Settings)."""

    max_rows: int
    max_text_chars: int
    max_labels: int
    max_labels_total_bytes: int | None = None  # the distinct labels' UTF-8 bytes together; None: no bound


@dataclass(frozen=True)
class ParsedDataset:
    """The clean records of one upload and what the user should know about them."""

    texts: list[str]
    labels: list[str]
    format: str  # "csv" | "tsv" | "jsonl" | "json"
    label_counts: dict[str, int]  # sorted by label
    sha256: str  # of the canonical JSONL, so equal data hashes equal whatever the upload format
    warnings: list[dict]
    scripts: dict[str, float]  # share of letters per writing system (core/scripts.py)


def parse_upload(data: bytes, *, filename: str | None, content_type: str | None,
                 text_column: str = "text", label_column: str = "label", limits: Limits) -> ParsedDataset:
    """Clean records from an uploaded CSV, TSV, JSONL or JSON file; ServiceError(invalid_dataset) says why not."""
    _refuse_binary_formats(data)
    text = _decode(data)
    fmt = _detect_format(text, filename, content_type)
    if fmt == "json":
        return _build(_from_records(_load_json(text), text_column, label_column), "records", fmt, limits)
    # A line holds a whole text plus other fields; a JSON-escaped character (\ud83d\ude00) takes 12 bytes.
    _check_line_lengths(text, limits.max_text_chars * (12 if fmt == "jsonl" else 4) + 1024)
    if fmt == "jsonl":
        rows = _read_jsonl(text, text_column, label_column)
    else:
        rows = _read_delimited(text, "\t" if fmt == "tsv" else ",", text_column, label_column)
    return _build(rows, "lines", fmt, limits)


def parse_records(records: list[dict[str, Any]], *, limits: Limits, fmt: str = "json") -> ParsedDataset:
    """Clean records from a JSON body [{"text": str, "label": str | int}, ...]."""
    return _build(_from_records(records, "text", "label"), "records", fmt, limits)


def write_records(path: Path, ds: ParsedDataset) -> None:
    """Write the canonical JSONL atomically: readers see the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.writelines(_canonical_lines(ds.texts, ds.labels))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    # The rename itself is only durable once the folder's entry is on disk.
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def read_records(path: Path) -> tuple[list[str], list[str]]:
    """(texts, labels) from a file written by write_records."""
    texts, labels = [], []
    with path.open(encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            texts.append(record["text"])
            labels.append(record["label"])
    return texts, labels


def _invalid(message: str, **details: Any) -> ServiceError:
    return ServiceError(ErrorCode.invalid_dataset, message, status=422, details=details or None)


def _raise_problems(problems: dict[str, list[int]], key: str) -> None:
    """Raise for the first kind of problem met, naming its first few lines (or record indices)."""
    for reason, where in problems.items():
        more = f" and {len(where) - SHOWN} more" if len(where) > SHOWN else ""
        shown = ", ".join(map(str, where[:SHOWN])) + more
        many = len(where) > 1
        noun = ("lines" if many else "line") if key == "lines" else ("record indices" if many else "record index")
        zero_based = "" if key == "lines" else " (0-based)"
        raise _invalid(f"{reason}: {noun} {shown}{zero_based}.", **{key: where[:SHOWN]}, count=len(where))


def _line_at(data: bytes, offset: int) -> int:
    """1-based line number of a byte offset, counting LF, CRLF and lone CR as line ends."""
    head = data[:offset]
    return head.count(b"\n") + head.count(b"\r") - head.count(b"\r\n") + 1


def _refuse_binary_formats(data: bytes) -> None:
    """A 415 for a spreadsheet, document, archive or columnar file, saying which formats to send instead."""
    for magic, short, what in _BINARY_FORMATS:
        if re.match(magic, data):
            raise ServiceError(ErrorCode.unsupported_media_type,
                               f"The file is {what}, not text. Upload UTF-8 text: CSV or TSV with a header row, "
                               "JSON Lines, or a JSON array of records (as a multipart file or a raw body); "
                               "export or decompress it to one of those first.",
                               status=415, details={"detected": short, "supported": SUPPORTED_FORMATS})


def _decode(data: bytes) -> str:
    """The upload as text, refusing empty, binary and non-UTF-8 files."""
    if not data:
        raise _invalid("The file is empty.")
    if (nul := data.find(b"\x00")) >= 0:
        line = _line_at(data, nul)
        raise _invalid(f"The file contains NUL bytes (first on line {line}): it is binary or UTF-16, "
                       "not UTF-8 text.", lines=[line], byte_offset=nul)
    controls = _CONTROL.findall(data)
    if len(controls) > max(2, len(data) // 100):  # a few stray form feeds are text; this many is a binary file
        line = _line_at(data, _CONTROL.search(data).start())
        raise _invalid(f"The file looks binary: {len(controls)} control characters (first on line {line}).",
                       lines=[line])
    try:
        text = data.decode("utf-8-sig")  # a BOM from Excel or Notepad is not part of the first column's name
    except UnicodeDecodeError as e:
        line = _line_at(data, e.start)
        raise _invalid(f"The file is not valid UTF-8 (line {line}, byte offset {e.start}); save it as UTF-8.",
                       lines=[line], byte_offset=e.start) from None
    if not text.strip():
        raise _invalid("The file contains only whitespace.")
    return text


def _detect_format(text: str, filename: str | None, content_type: str | None) -> str:
    """csv, tsv, jsonl or json, from the file name, then the content type, then the first line."""
    suffix = Path(filename).suffix.lower() if filename else ""
    fmt = _EXTENSIONS.get(suffix) or _CONTENT_TYPES.get((content_type or "").split(";")[0].strip().lower())
    first = next((line.strip() for line in io.StringIO(text, newline="") if line.strip()), "")
    if fmt is None:
        fmt = "json" if first.startswith(("{", "[")) else "tsv" if "\t" in first and "," not in first else "csv"
    if fmt == "json" and _is_object(first):
        fmt = "jsonl"  # ".json" files and application/json uploads are often JSON Lines in practice
    return fmt


def _is_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except (ValueError, RecursionError):
        return False


def _check_line_lengths(text: str, limit: int) -> None:
    # Measure bytes only where characters alone cannot settle it: UTF-8 takes at most 4 bytes a character.
    long = [n for n, line in enumerate(io.StringIO(text, newline=""), 1)
            if len(line) * 4 > limit and len(line.encode()) > limit]
    _raise_problems({f"Line longer than {limit} bytes": long} if long else {}, "lines")


def _read_delimited(text: str, delimiter: str, text_column: str, label_column: str) -> list[Row]:
    """Rows of a CSV or TSV file with a header, located by the physical line each starts on."""
    kind = "TSV" if delimiter == "\t" else "CSV"
    # Texts may exceed csv's 128 KiB default field limit; _build's max_text_chars check gives the clear error.
    csv.field_size_limit(2**31 - 1)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows, problems, header, start = [], defaultdict(list), None, 1
    try:
        for fields in reader:
            line, start = start, reader.line_num + 1  # quoted newlines make one row span several lines
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue  # blank line
            if header is None:
                header = [name.strip() for name in fields]
                text_index, label_index = _columns(header, text_column, label_column, kind)
            elif len(fields) != len(header):
                problems[f"Wrong number of fields (the header has {len(header)})"].append(line)
            else:
                rows.append((line, fields[text_index], fields[label_index]))
    except csv.Error as e:
        raise _invalid(f"Malformed {kind} in the row starting on line {start}: {e}. "
                       "Check for an unclosed or stray double quote.", lines=[start]) from None
    if header is None:
        raise _invalid(f"The {kind} file has no header row.")
    _check_swallowed(rows, delimiter, len(header), label_index)
    _raise_problems(problems, "lines")
    return rows


def _columns(header: list[str], text_column: str, label_column: str, kind: str) -> tuple[int, int]:
    """Indices of the text and label columns, after checking the header is a usable one."""
    if len(header) > MAX_COLUMNS:
        raise _invalid(f"The header has {len(header)} columns; at most {MAX_COLUMNS} are allowed.", lines=[1])
    if empty := [i + 1 for i, name in enumerate(header) if not name]:
        raise _invalid(f"The header has empty column names (column {', '.join(map(str, empty[:SHOWN]))}).",
                       lines=[1], columns=empty[:SHOWN])
    if duplicates := sorted(name for name, n in Counter(header).items() if n > 1):
        raise _invalid(f"The header repeats column names: {', '.join(map(repr, duplicates))}.",
                       lines=[1], columns=duplicates)
    if missing := [name for name in (text_column, label_column) if name not in header]:
        found = ", ".join(map(repr, header[:20])) + (", ..." if len(header) > 20 else "")
        parameters = _column_suggestions(header, text_column, label_column)
        example = " ".join(f"-F {shlex.quote(f'{p}={name}')}" for p, name in parameters.items() if name)
        hint = "" if len(header) > 1 else " Is the file's separator something other than the one expected?"
        raise _invalid(f"The {kind} header has no {' or '.join(map(repr, missing))} column (found: {found}). "
                       f"The first line must name the columns; choose yours with {_COLUMN_PARAMETERS}"
                       f"{f', e.g. {example}' if example else ''}.{hint}",
                       lines=[1], missing=missing, found=header[:20], parameters=parameters)
    return header.index(text_column), header.index(label_column)


def _column_suggestions(header: list[str], text_column: str, label_column: str) -> dict[str, str | None]:
    """For each missing column, its parameter and an unused header name to give it (in header order), if any."""
    # A header of one column means a wrong separator, not other names: it has no names to suggest.
    spare = iter([name for name in header if name not in (text_column, label_column)] if len(header) > 1 else [])
    return {parameter: next(spare, None) for parameter, name in (("text_column", text_column),
                                                                ("label_column", label_column))
            if name not in header}


def _check_swallowed(rows: list[Row], delimiter: str, width: int, label_index: int) -> None:
    """Refuse a quoted text whose lines look like rows: an unclosed quote that ate the rows after it."""
    labels = {label.strip() for _, _, label in rows} - {""}

    def looks_like_row(segment: str) -> bool:
        with contextlib.suppress(csv.Error):
            fields = next(csv.reader([segment], delimiter=delimiter), [])
            return len(fields) == width and fields[label_index].strip() in labels
        return False

    for line, text, _ in rows:
        if "\n" not in text and "\r" not in text:
            continue
        segments = re.split(r"\r\n|\r|\n", text)
        if sum(map(looks_like_row, segments)) >= 2:
            raise _invalid(f"The quoted text starting on line {line} spans {len(segments)} lines that look like "
                           "rows of their own; a double quote is probably not closed where intended.",
                           lines=[line])


def _load_json(text: str) -> Any:
    """A whole JSON document, or an error naming the line where it breaks."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _invalid(f"Malformed JSON on line {e.lineno}: {e.msg}.", lines=[e.lineno]) from None
    except RecursionError:
        raise _invalid("Malformed JSON: nested too deeply.") from None


def _read_jsonl(text: str, text_column: str, label_column: str) -> list[Row]:
    """Rows of a JSON Lines file, one object per line."""
    rows, problems, malformed = [], defaultdict(list), ""
    for n, line in enumerate(io.StringIO(text, newline=""), 1):
        if not line.strip():
            continue
        try:
            rows.append((n, *_record(json.loads(line), text_column, label_column)))
        except (json.JSONDecodeError, RecursionError) as e:
            # One reason for every malformed line, so they are reported together with the first parser message.
            malformed = malformed or f"Malformed JSON (first error: {getattr(e, 'msg', 'nested too deeply')})"
            problems[malformed].append(n)
        except ValueError as e:
            problems[str(e)].append(n)
    _raise_problems(problems, "lines")
    return rows


def _from_records(records: Any, text_key: str, label_key: str) -> list[Row]:
    """Rows of a JSON array of objects, located by index."""
    if not isinstance(records, list):
        raise _invalid(f"Expected a JSON array of objects with {text_key!r} and {label_key!r} at the top level.")
    rows, problems = [], defaultdict(list)
    for i, obj in enumerate(records):
        try:
            rows.append((i, *_record(obj, text_key, label_key)))
        except ValueError as e:
            problems[str(e)].append(i)
    _raise_problems(problems, "records")
    return rows


def _record(obj: Any, text_key: str, label_key: str) -> tuple[str, str]:
    """(text, label) of one JSON record; ValueError says why it is unusable. Integer labels become strings."""
    if not isinstance(obj, dict):
        raise ValueError(f"Record is not a JSON object with {text_key!r} and {label_key!r}")
    if missing := [key for key in (text_key, label_key) if key not in obj]:
        raise ValueError(f"Record has no {' or '.join(map(repr, missing))} key (choose other keys with "
                         f"{_COLUMN_PARAMETERS})")
    text, label = obj[text_key], obj[label_key]
    if not isinstance(text, str):
        raise ValueError(f"{text_key!r} is not a string")
    if isinstance(label, bool) or not isinstance(label, str | int):
        raise ValueError(f"{label_key!r} is not a string or an integer")
    return text, str(label)


def _build(rows: list[Row], key: str, fmt: str, limits: Limits) -> ParsedDataset:
    """Check the rows as a whole dataset and describe it."""
    texts, labels, dropped, problems = [], [], [], defaultdict(list)
    too_long = None  # the reason for long labels, quoting the first one met
    for where, text, label in rows:
        if not text.strip():
            dropped.append(where)
            continue
        label = label.strip()
        if not label:
            problems["Empty label"].append(where)
        elif "\n" in label or "\r" in label:
            problems["Label spans several lines (an unclosed double quote?)"].append(where)
        elif len(label) > MAX_LABEL_CHARS:  # every prediction repeats its labels: keep them names, not texts
            too_long = too_long or f"Label longer than {MAX_LABEL_CHARS} characters (first: {_shorten(label, 40)!r})"
            problems[too_long].append(where)
        if len(text) > limits.max_text_chars:
            problems[f"Text longer than {limits.max_text_chars} characters"].append(where)
        if "\x00" in text or "\x00" in label:  # PostgreSQL cannot store U+0000 in text
            problems["NUL character (U+0000) in text or label"].append(where)
        if SURROGATE.search(text) or SURROGATE.search(label):
            problems["Unpaired UTF-16 surrogate escape in text or label"].append(where)
        texts.append(text)
        labels.append(label)
    _raise_problems(problems, key)
    if not rows:
        raise _invalid("The dataset has no data rows" + (" below the header." if fmt in ("csv", "tsv") else "."))
    if not texts:
        raise _invalid(f"All {len(rows)} rows have an empty text.")
    if len(texts) > limits.max_rows:
        raise _invalid(f"The dataset has {len(texts)} rows; at most {limits.max_rows} are allowed.")
    counts = Counter(labels)
    after_drop = f" (after dropping {len(dropped)} rows with an empty text)" if dropped else ""
    if len(counts) < 2:
        raise _invalid(f"Only one label ({labels[0]!r}) found{after_drop}; a classifier needs at least 2.",
                       labels=list(counts))
    if len(counts) > limits.max_labels:
        raise _invalid(f"The dataset has {len(counts)} distinct labels; at most {limits.max_labels} are allowed.")
    total, limit = sum(len(label.encode()) for label in counts), limits.max_labels_total_bytes
    if limit is not None and total > limit:
        raise _invalid(f"The dataset's {len(counts)} distinct labels take {total} bytes together (UTF-8); at most "
                       f"{limit} are allowed: shorten them.", labels_total_bytes=total, max_labels_total_bytes=limit)
    digest = hashlib.sha256()
    for line in _canonical_lines(texts, labels):
        digest.update(line)
    return ParsedDataset(texts=texts, labels=labels, format=fmt, label_counts=dict(sorted(counts.items())),
                         sha256=digest.hexdigest(), warnings=_warnings(texts, labels, counts, dropped, key),
                         scripts=script_mix(texts))


def _warnings(texts: list[str], labels: list[str], counts: Counter, dropped: list[int], key: str) -> list[dict]:
    """Problems worth telling the user that do not stop training."""
    warnings = []
    if dropped:
        where = "lines" if key == "lines" else "record indices"
        warnings.append(_warning("empty_texts_dropped", f"Dropped {len(dropped)} rows with an empty text "
                                 f"(the examples are their {where}).", len(dropped), dropped))
    # Only a text seen twice can be a duplicate or a conflict; counting pairs of those alone keeps this fast.
    repeated = {text for text, n in Counter(texts).items() if n > 1}
    pairs = Counter((text, label) for text, label in zip(texts, labels) if text in repeated)
    if duplicates := [text for (text, _), n in pairs.items() if n > 1]:
        repeats = sum(n - 1 for n in pairs.values())
        warnings.append(_warning("duplicate_texts", f"{repeats} rows repeat an earlier row's text and label.",
                                 repeats, [_shorten(text) for text in duplicates]))
    labels_of = defaultdict(list)
    for text, label in pairs:
        labels_of[text].append(label)
    if conflicts := [(text, found) for text, found in labels_of.items() if len(found) > 1]:
        examples = [{"text": _shorten(text), "labels": sorted(found)} for text, found in conflicts]
        warnings.append(_warning("conflicting_labels", f"{len(conflicts)} texts appear with different labels.",
                                 len(conflicts), examples))
    if rare := sorted(label for label, n in counts.items() if n < RARE_LABEL_COUNT):
        warnings.append(_warning("rare_labels", f"{len(rare)} labels have fewer than {RARE_LABEL_COUNT} examples.",
                                 len(rare), [{"label": label, "count": counts[label]} for label in rare]))
    return warnings


def _warning(code: str, message: str, count: int, examples: list) -> dict:
    return {"code": code, "message": message, "count": count, "examples": examples[:SHOWN]}


def _shorten(text: str, width: int = 80) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _canonical_lines(texts: Iterable[str], labels: Iterable[str]) -> Iterable[bytes]:
    """One JSON object per record; the bytes write_records stores and sha256 hashes."""
    # Byte for byte json.dumps({"text": ..., "label": ...}, ensure_ascii=False), but faster (bench/README.md).
    for text, label in zip(texts, labels, strict=True):
        yield f'{{"text": {encode_basestring(text)}, "label": {encode_basestring(label)}}}\n'.encode()
