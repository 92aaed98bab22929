"""Base models: pretrained encoders in the Hugging Face folder layout that `encoder` jobs fine-tune.

This module reads folders (and the zips the API receives) and knows where installed ones live; the rows are in
core/db/base_models.py. A folder is refused (422 invalid_base_model, every problem in `details`) before anything
is stored unless it holds config.json with a supported model_type, model.safetensors and tokenizer.json that the
tokenizers library loads, and their sizes agree. Weights are read only from safetensors: a folder with any pickle
file (pytorch_model.bin, *.pt, ...) is refused, since unpickling runs code. The header is parsed here by hand, so
inspecting a 2 GB model reads a few kilobytes of it (and the sha256 pass).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any, NamedTuple
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field
from tokenizers import Tokenizer

from core.config import Settings
from core.errors import ErrorCode, ServiceError, detail

# config.json model_type values a job can fine-tune (BERT-style encoders with word embeddings and a [CLS] token).
SUPPORTED_ARCHITECTURES = ("bert", "distilbert", "roberta", "xlm-roberta", "electra", "deberta-v2")
# A name is a folder under BASE_MODELS_DIR and a URL segment: plain tokens only (so no '/', '..' or hidden
# characters), within what every filesystem allows. Hugging Face names fit: all-MiniLM-L6-v2, xlm-roberta-base.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")
# Copied when present: what transformers' tokenizer classes read besides tokenizer.json (WordPiece, BPE and
# SentencePiece vocabularies). Anything else in the folder (README, ONNX exports, ...) is left behind.
OPTIONAL_FILES = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.txt", "vocab.json",
                  "merges.txt", "sentencepiece.bpe.model", "spm.model", "tokenizer.model")
# Formats that torch loads with pickle, i.e. files that may run code when loaded.
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib"})
# safetensors' own ceiling on its JSON header; a longer one is not a safetensors file.
MAX_HEADER_BYTES = 100_000_000
MAX_CONFIG_BYTES = 1024 * 1024  # config.json and tokenizer_config.json are a few kilobytes
MAX_ZIP_ENTRIES = 10_000
CHUNK = 1024 * 1024
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
# tokenizer_config.json's model_max_length when the tokenizer sets none (transformers' VERY_LARGE_INTEGER is 1e30).
_SANE_MAX_LENGTH = 1_000_000


@dataclass(frozen=True)
class BaseModelInfo:
    """What inspect_folder found: the row's fields, and the files to copy."""

    name: str  # the folder's name: the default name to install it under
    architecture: str
    sha256: str
    num_parameters: int
    hidden_size: int
    num_layers: int
    vocab_size: int
    max_length: int
    size_bytes: int
    files: tuple[str, ...]


class BaseModelRead(BaseModel):
    """An installed base model (GET /v1/base-models). Where its files are is the server's business."""

    model_config = ConfigDict(from_attributes=True)

    id: UUID
    name: str = Field(description="What a training spec's model.base_model names.")
    architecture: str = Field(description=f"config.json model_type: one of {', '.join(SUPPORTED_ARCHITECTURES)}.")
    sha256: str = Field(description="SHA-256 of model.safetensors.")
    num_parameters: int = Field(description="Parameters in model.safetensors.")
    hidden_size: int = Field(description="Width of the encoder's token vectors.")
    num_layers: int = Field(description="Transformer layers.")
    vocab_size: int = Field(description="Rows of the word-embedding matrix.")
    max_length: int = Field(description="Longest input the encoder takes, in tokens, special tokens included.")
    size_bytes: int = Field(description="Bytes of the installed files.")
    created_at: datetime


class TensorInfo(NamedTuple):
    dtype: str
    shape: tuple[int, ...]


def refuse(details: list[dict[str, Any]]) -> ServiceError:
    """The 422 for a folder or zip that cannot be installed; its message names the first problem."""
    first = details[0]
    where = "/".join(str(part) for part in first["loc"])
    more = f" (and {len(details) - 1} more problem{'s' * (len(details) > 2)})" if len(details) > 1 else ""
    return ServiceError(ErrorCode.invalid_base_model,
                        f"Not a base model this service can install: {where}: {first['msg']}{more}.", 422, details)


def check_name(name: str) -> str:
    """`name` if it can name a base model, else a 422 validation_error located at `name`."""
    if re.fullmatch(NAME_PATTERN, name):
        return name
    msg = ("must be 1 to 100 letters, digits, '.', '_' or '-', starting with a letter or digit (it names a folder "
           "and appears in URLs)")
    raise ServiceError(ErrorCode.validation_error, f"name {name[:120]!r} {msg}.", 422,
                       [detail(["name"], msg, "string_pattern_mismatch")])


def base_model_dir(settings: Settings, name: str) -> Path:
    """Where the installed base model `name` keeps its files (config.json, model.safetensors, tokenizer.json, ...)."""
    if not re.fullmatch(NAME_PATTERN, name):  # never a path outside BASE_MODELS_DIR, whatever a caller passes
        raise ValueError(f"not a base model name: {name!r}")
    return settings.base_models_dir / name


def remove_base_model_files(settings: Settings, name: str) -> None:
    """Delete the folder of base model `name`, if it is there."""
    shutil.rmtree(base_model_dir(settings, name), ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------
# a folder


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """The tensors a safetensors file holds, from its header alone (8-byte little-endian length, then JSON);
    ValueError saying what is wrong if the header is malformed or points outside the file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ValueError("too short to be a safetensors file")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise ValueError("not a safetensors file (its header length is past the end of the file)")
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise ValueError("not a safetensors file (its header is not a JSON object)")
    data_bytes = size - 8 - length
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            if not all(type(n) is int and n >= 0 for n in (*shape, begin, end)):
                raise TypeError
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"tensor {name!r} has no valid dtype, shape and data_offsets") from None
        if dtype not in _DTYPE_BYTES:
            raise ValueError(f"tensor {name!r} has an unknown dtype {dtype!r}")
        if not begin <= end <= data_bytes:
            raise ValueError(f"tensor {name!r} lies past the end of the file (truncated?)")
        if end - begin != math.prod(shape) * _DTYPE_BYTES[dtype]:
            raise ValueError(f"tensor {name!r} takes {end - begin} bytes, not what its shape and dtype need")
        tensors[name] = TensorInfo(dtype, tuple(shape))
    if not tensors:
        raise ValueError("holds no tensors")
    return tensors


def _read_json(path: Path, loc: str, problems: list[dict[str, Any]]) -> dict[str, Any] | None:
    if path.stat().st_size > MAX_CONFIG_BYTES:
        problems.append(detail([loc], f"is over {MAX_CONFIG_BYTES // 1024} KiB", "invalid_json"))
        return None
    try:
        data = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        problems.append(detail([loc], f"is not valid JSON ({exc.__class__.__name__})", "invalid_json"))
        return None
    if not isinstance(data, dict):
        problems.append(detail([loc], "is not a JSON object", "invalid_json"))
        return None
    return data


def _config_int(config: dict[str, Any], keys: tuple[str, ...], problems: list[dict[str, Any]]) -> int:
    """The first of `keys` config.json has, which must be a positive integer (else a problem, and 0)."""
    key = next((k for k in keys if k in config), keys[0])
    value = config.get(key)
    if type(value) is not int or value <= 0:
        problems.append(detail(["config.json", key], "must be a positive integer", "invalid_config"))
        return 0
    return value


def inspect_folder(path: Path) -> BaseModelInfo:
    """Check that the folder holds a base model this service can fine-tune, and describe it; else a 422
    (invalid_base_model) listing every problem found. Reads the safetensors header, not the weights (but hashes
    the file)."""
    path = Path(path)
    if not path.is_dir():
        raise refuse([detail([path.name], "is not a folder", "not_a_folder")])
    problems: list[dict[str, Any]] = []
    for found in sorted(p for p in path.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES and p.is_file()):
        problems.append(detail([found.relative_to(path).as_posix()], "is a pickle file, which can run code when "
                               "loaded: only model.safetensors is read; remove it", "pickle_file"))
    for name in REQUIRED_FILES:
        if not (path / name).is_file():
            hint = " (one file: sharded checkpoints are not supported)" if name == "model.safetensors" else ""
            problems.append(detail([name], f"is missing{hint}", "missing_file"))
    if problems:
        raise refuse(problems)

    config = _read_json(path / "config.json", "config.json", problems) or {}
    architecture = config.get("model_type")
    if config and architecture not in SUPPORTED_ARCHITECTURES:
        problems.append(detail(["config.json", "model_type"], f"is {architecture!r}; supported: "
                               f"{', '.join(SUPPORTED_ARCHITECTURES)}", "unsupported_architecture"))
    tokenizer_config: dict[str, Any] = {}
    if (path / "tokenizer_config.json").is_file():
        tokenizer_config = _read_json(path / "tokenizer_config.json", "tokenizer_config.json", problems) or {}
    try:
        tokenizer_vocab = Tokenizer.from_file(str(path / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    except Exception as exc:  # the Rust library raises plain Exception; its first line says what is wrong
        reason = str(exc).splitlines()[0][:200] if str(exc) else exc.__class__.__name__
        problems.append(detail(["tokenizer.json"], f"does not load with the tokenizers library: {reason}",
                               "invalid_tokenizer"))
        tokenizer_vocab = None
    try:
        tensors = read_safetensors_header(path / "model.safetensors")
    except ValueError as exc:
        problems.append(detail(["model.safetensors"], str(exc), "invalid_safetensors"))
        tensors = {}
    if problems:
        raise refuse(problems)

    distilbert = architecture == "distilbert"
    vocab_size = _config_int(config, ("vocab_size",), problems)
    hidden_size = _config_int(config, ("dim",) if distilbert else ("hidden_size",), problems)
    num_layers = _config_int(config, ("n_layers",) if distilbert else ("num_hidden_layers",), problems)
    positions = _config_int(config, ("max_position_embeddings",), problems)
    # ELECTRA and DeBERTa-v2 may embed words narrower than the hidden size (projected up after the embeddings).
    embedding_size = config.get("embedding_size") or hidden_size
    if problems:
        raise refuse(problems)

    embeddings = {n: t.shape for n, t in tensors.items() if n.endswith("word_embeddings.weight")}
    if not embeddings:
        problems.append(detail(["model.safetensors"], "has no tensor named *word_embeddings.weight",
                               "shape_mismatch"))
    for tensor, shape in sorted(embeddings.items()):
        if shape != (vocab_size, embedding_size):
            problems.append(detail(["model.safetensors", tensor], f"has shape {list(shape)}, but config.json says "
                                   f"[{vocab_size}, {embedding_size}] (vocab_size, hidden size)", "shape_mismatch"))
    if tokenizer_vocab > vocab_size:
        problems.append(detail(["tokenizer.json"], f"has {tokenizer_vocab} tokens, more than config.json's "
                               f"vocab_size {vocab_size}", "vocab_mismatch"))
    # RoBERTa-style models number positions from padding_idx + 1: two of their position embeddings are not usable.
    max_length = positions - 2 if architecture in ("roberta", "xlm-roberta") else positions
    declared = tokenizer_config.get("model_max_length")
    if type(declared) is int and 0 < declared < min(max_length, _SANE_MAX_LENGTH):
        max_length = declared
    if max_length <= 0:
        problems.append(detail(["config.json", "max_position_embeddings"], "leaves no room for tokens",
                               "invalid_config"))
    if problems:
        raise refuse(problems)

    files = tuple(name for name in (*REQUIRED_FILES, *OPTIONAL_FILES) if (path / name).is_file())
    return BaseModelInfo(
        name=path.name, architecture=architecture, sha256=sha256_file(path / "model.safetensors"),
        num_parameters=sum(math.prod(t.shape) for t in tensors.values()), hidden_size=hidden_size,
        num_layers=num_layers, vocab_size=vocab_size, max_length=max_length,
        size_bytes=sum((path / name).stat().st_size for name in files), files=files)


# ---------------------------------------------------------------------------------------------------------
# a zip of a folder (POST /v1/base-models)


def extract_zip(stream: IO[bytes], dest: Path, *, max_bytes: int) -> Path:
    """Unpack a zip of a base-model folder into the empty folder `dest`, and return the folder holding the files:
    `dest` itself, or the one top-level folder every file is in. Refused before anything is written: not a zip
    (422), entries that are links, encrypted, or named outside `dest` (absolute, '..'; 422), and more than
    `max_bytes` unpacked (413). Only regular files are written (no links, no permissions from the archive)."""
    try:
        archive = zipfile.ZipFile(stream)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError):
        raise refuse([detail(["file"], "is not a zip archive", "bad_zip")]) from None
    with archive:
        members: list[tuple[tuple[str, ...], zipfile.ZipInfo]] = []
        problems = []
        for info in archive.infolist():
            name = info.filename
            if name.startswith("__MACOSX/") or info.is_dir():  # Finder's resource forks; folders come with files
                continue
            parts = PurePosixPath(name).parts
            if not parts:
                continue
            if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name) or ".." in parts or "\\" in name:
                problems.append(detail(["file", name], "is an absolute path or climbs out of the folder ('..')",
                                       "path_traversal"))
            elif stat.S_ISLNK(info.external_attr >> 16):
                problems.append(detail(["file", name], "is a symbolic link", "zip_link"))
            elif info.flag_bits & 0x1:
                problems.append(detail(["file", name], "is encrypted", "zip_encrypted"))
            else:
                members.append((parts, info))
        if len(members) > MAX_ZIP_ENTRIES:
            problems.append(detail(["file"], f"holds {len(members)} files; at most {MAX_ZIP_ENTRIES}", "zip_entries"))
        if len({parts for parts, _ in members}) < len(members):
            problems.append(detail(["file"], "names a file twice", "zip_duplicate"))
        if problems:
            raise refuse(problems)
        unpacked = sum(info.file_size for _, info in members)
        if unpacked > max_bytes:
            raise ServiceError(ErrorCode.payload_too_large, f"The zip unpacks to {unpacked} bytes, over the limit of "
                               f"{max_bytes} (BASE_MODEL_MAX_UPLOAD_MB).", 413)
        try:
            for parts, info in members:
                target = dest.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                # zipfile stops at the size the entry declares and checks its CRC: what is written is what was summed.
                with archive.open(info) as src, open(target, "xb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
        except (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError) as exc:
            raise refuse([detail(["file", info.filename], f"cannot be unpacked ({exc.__class__.__name__})",
                                 "bad_zip")]) from None
        except (FileExistsError, NotADirectoryError, IsADirectoryError):  # a file "a" and a file "a/b"
            raise refuse([detail(["file", info.filename], "clashes with another entry's name", "bad_zip")]) from None
    tops = {parts[0] for parts, _ in members}
    if len(tops) == 1 and all(len(parts) > 1 for parts, _ in members):
        return dest / tops.pop()
    return dest
