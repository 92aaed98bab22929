"""core/base_models.py on folders and zips the tests write: what a base model must hold, what is refused (every
problem listed, in the one error shape), and how a zip is unpacked. The tiny BERT: tests/tiny_bert.py."""

from __future__ import annotations

import hashlib
import io
import json
import stat
import zipfile
from pathlib import Path

import pytest

from core.base_models import (
    SUPPORTED_ARCHITECTURES,
    base_model_dir,
    check_name,
    extract_zip,
    inspect_folder,
    read_safetensors_header,
)
from core.errors import ErrorCode, ServiceError
from tests.helpers import make_settings
from tests.tiny_bert import bert_tensors, build_tiny_bert, write_safetensors, zip_folder, zip_of

pytestmark = pytest.mark.unit


def refused(folder: Path) -> list[dict]:
    """The details of the 422 inspect_folder answers for `folder`."""
    with pytest.raises(ServiceError) as caught:
        inspect_folder(folder)
    error = caught.value
    assert error.code == ErrorCode.invalid_base_model and error.status == 422, error.message
    assert error.message.startswith("Not a base model this service can install: ")
    assert str(folder.parent) not in error.message + json.dumps(error.details)  # no server paths
    return error.details


def kinds(details: list[dict]) -> list[tuple[list, str]]:
    return [(d["loc"], d["type"]) for d in details]


def edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))


# ---------------------------------------------------------------------------------------------------------
# a good folder


def test_the_tiny_bert_is_described_from_its_files(tiny_bert_dir: Path):
    info = inspect_folder(tiny_bert_dir)
    config = json.loads((tiny_bert_dir / "config.json").read_text())
    assert info.name == "tiny-bert" and info.architecture == "bert"
    assert (info.hidden_size, info.num_layers, info.max_length) == (32, 2, 64)
    assert info.vocab_size == config["vocab_size"] >= 150
    assert info.sha256 == hashlib.sha256((tiny_bert_dir / "model.safetensors").read_bytes()).hexdigest()
    assert info.num_parameters == sum(a.size for a in bert_tensors(info.vocab_size).values())
    assert info.files == ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                          "special_tokens_map.json", "vocab.txt")
    assert info.size_bytes == sum((tiny_bert_dir / f).stat().st_size for f in info.files)


def test_the_numpy_writer_makes_the_layout_transformers_would(tmp_path: Path):
    folder = build_tiny_bert(tmp_path / "np-bert", use_transformers=False)
    header = read_safetensors_header(folder / "model.safetensors")
    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    assert {name: t.shape for name, t in header.items()} == {n: a.shape for n, a in bert_tensors(vocab).items()}
    assert header["embeddings.word_embeddings.weight"] == ("F32", (vocab, 32))
    assert inspect_folder(folder).num_parameters == sum(a.size for a in bert_tensors(vocab).values())


def test_other_files_are_left_behind_and_sentencepiece_files_are_kept(tiny_bert_dir: Path):
    (tiny_bert_dir / "README.md").write_text("# tiny")
    (tiny_bert_dir / "sentencepiece.bpe.model").write_bytes(b"\x00spm")
    assert "README.md" not in inspect_folder(tiny_bert_dir).files
    assert "sentencepiece.bpe.model" in inspect_folder(tiny_bert_dir).files


def test_distilbert_reads_dim_and_n_layers(tiny_bert_dir: Path):
    edit_config(tiny_bert_dir, model_type="distilbert", dim=32, n_layers=3, hidden_size=None, num_hidden_layers=None)
    info = inspect_folder(tiny_bert_dir)
    assert (info.architecture, info.hidden_size, info.num_layers) == ("distilbert", 32, 3)


def test_roberta_positions_lose_two_and_a_smaller_model_max_length_caps_max_length(tiny_bert_dir: Path):
    edit_config(tiny_bert_dir, model_type="roberta", max_position_embeddings=66)
    (tiny_bert_dir / "tokenizer_config.json").write_text(json.dumps({"model_max_length": int(1e30)}))
    assert inspect_folder(tiny_bert_dir).max_length == 64  # the unset marker 1e30 is no limit
    (tiny_bert_dir / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 40}))
    assert inspect_folder(tiny_bert_dir).max_length == 40


def test_supported_architectures_are_one_list():
    assert SUPPORTED_ARCHITECTURES == ("bert", "distilbert", "roberta", "xlm-roberta", "electra", "deberta-v2")


# ---------------------------------------------------------------------------------------------------------
# folders that are refused


@pytest.mark.parametrize("pickle_name", ["pytorch_model.bin", "weights.pt", "onnx/extra.pth", "x.pkl", "last.ckpt"])
def test_any_pickle_file_is_refused(tiny_bert_dir: Path, pickle_name: str):
    (tiny_bert_dir / pickle_name).parent.mkdir(exist_ok=True)
    (tiny_bert_dir / pickle_name).write_bytes(b"\x80\x04K\x01.")
    details = refused(tiny_bert_dir)
    assert kinds(details) == [([pickle_name], "pickle_file")]
    assert "only model.safetensors is read" in details[0]["msg"]


def test_missing_safetensors_is_refused_even_beside_a_pickle_checkpoint(tiny_bert_dir: Path):
    (tiny_bert_dir / "model.safetensors").rename(tiny_bert_dir / "pytorch_model.bin")
    assert kinds(refused(tiny_bert_dir)) == [(["pytorch_model.bin"], "pickle_file"),
                                             (["model.safetensors"], "missing_file")]


def test_every_missing_file_is_named(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    assert kinds(refused(tmp_path / "empty")) == [(["config.json"], "missing_file"),
                                                  (["model.safetensors"], "missing_file"),
                                                  (["tokenizer.json"], "missing_file")]


@pytest.mark.parametrize("model_type", ["gpt2", "t5", None])
def test_unsupported_model_type_is_refused(tiny_bert_dir: Path, model_type):
    config = json.loads((tiny_bert_dir / "config.json").read_text())
    config["model_type"] = model_type
    (tiny_bert_dir / "config.json").write_text(json.dumps(config))
    details = refused(tiny_bert_dir)
    assert kinds(details) == [(["config.json", "model_type"], "unsupported_architecture")]
    assert "deberta-v2" in details[0]["msg"]


def test_config_that_is_not_json_is_refused(tiny_bert_dir: Path):
    (tiny_bert_dir / "config.json").write_text("{'model_type': 'bert'")
    assert kinds(refused(tiny_bert_dir)) == [(["config.json"], "invalid_json")]


def test_broken_tokenizer_json_is_refused(tiny_bert_dir: Path):
    text = (tiny_bert_dir / "tokenizer.json").read_text()
    (tiny_bert_dir / "tokenizer.json").write_text(text[: len(text) // 2])
    details = refused(tiny_bert_dir)
    assert kinds(details) == [(["tokenizer.json"], "invalid_tokenizer")]
    assert "tokenizers library" in details[0]["msg"]


@pytest.mark.parametrize("change", [{"vocab_size": 300}, {"hidden_size": 64}])
def test_word_embeddings_that_disagree_with_config_are_refused(tiny_bert_dir: Path, change: dict):
    edit_config(tiny_bert_dir, **change)
    details = refused(tiny_bert_dir)
    assert kinds(details) == [(["model.safetensors", "embeddings.word_embeddings.weight"], "shape_mismatch")]
    assert "config.json says" in details[0]["msg"]


def test_a_tokenizer_larger_than_the_embeddings_is_refused(tiny_bert_dir: Path):
    vocab = json.loads((tiny_bert_dir / "config.json").read_text())["vocab_size"]
    write_safetensors(tiny_bert_dir / "model.safetensors", bert_tensors(vocab - 10))
    edit_config(tiny_bert_dir, vocab_size=vocab - 10)
    details = refused(tiny_bert_dir)
    assert kinds(details) == [(["tokenizer.json"], "vocab_mismatch")]
    assert f"{vocab} tokens" in details[0]["msg"]


def test_no_word_embeddings_is_refused(tiny_bert_dir: Path):
    write_safetensors(tiny_bert_dir / "model.safetensors", {
        name.replace("word_embeddings", "words"): array for name, array in bert_tensors(200).items()})
    assert kinds(refused(tiny_bert_dir)) == [(["model.safetensors"], "shape_mismatch")]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "huge_header"])
def test_a_damaged_safetensors_file_is_refused(tiny_bert_dir: Path, damage: str):
    path = tiny_bert_dir / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) - 100], "garbage": b"\x10\x00\x00\x00\x00\x00\x00\x00not json"
                                                                         b" at all!" + b"\x00" * 64,
                      "empty": b"", "huge_header": (2**40).to_bytes(8, "little") + data[8:]}[damage])
    assert kinds(refused(tiny_bert_dir)) == [(["model.safetensors"], "invalid_safetensors")]


def test_several_problems_are_reported_together(tiny_bert_dir: Path):
    edit_config(tiny_bert_dir, model_type="gpt2")
    (tiny_bert_dir / "tokenizer.json").write_text("{}")
    details = refused(tiny_bert_dir)
    assert [d["type"] for d in details] == ["unsupported_architecture", "invalid_tokenizer"]


# ---------------------------------------------------------------------------------------------------------
# names


@pytest.mark.parametrize("name", ["tiny-bert", "all-MiniLM-L6-v2", "xlm-roberta-base", "bert_base.v2", "a" * 100])
def test_plain_names_are_accepted(name: str):
    assert check_name(name) == name
    assert base_model_dir(make_settings(Path("/tmp/x")), name).name == name


@pytest.mark.parametrize("name", ["", ".", "..", "../etc", "a/b", ".hidden", "-x", "a b", "bert\u202e", "a" * 101,
                                  "mod\u00e8le"])
def test_names_that_could_not_be_a_folder_or_url_segment_are_refused(name: str):
    with pytest.raises(ServiceError) as caught:
        check_name(name)
    assert caught.value.status == 422 and caught.value.code == ErrorCode.validation_error
    assert caught.value.details[0]["loc"] == ["name"]
    with pytest.raises(ValueError):
        base_model_dir(make_settings(Path("/tmp/x")), name)


# ---------------------------------------------------------------------------------------------------------
# zips


def unpack(data: bytes, dest: Path, max_bytes: int = 10**8) -> Path:
    dest.mkdir()
    return extract_zip(io.BytesIO(data), dest, max_bytes=max_bytes)


def test_a_zip_with_files_at_its_root_unpacks_into_dest(tiny_bert_dir: Path, tmp_path: Path):
    folder = unpack(zip_folder(tiny_bert_dir), tmp_path / "up")
    assert folder == tmp_path / "up"
    assert inspect_folder(folder).sha256 == inspect_folder(tiny_bert_dir).sha256


def test_a_zip_of_one_folder_unpacks_to_that_folder(tiny_bert_dir: Path, tmp_path: Path):
    data = zip_folder(tiny_bert_dir, top="my-bert")
    with zipfile.ZipFile(io.BytesIO(data), "a") as archive:  # what macOS Finder adds
        archive.writestr("__MACOSX/my-bert/._config.json", b"\x00")
    folder = unpack(data, tmp_path / "up")
    assert folder == tmp_path / "up" / "my-bert"
    assert inspect_folder(folder).name == "my-bert"
    assert not (tmp_path / "up" / "__MACOSX").exists()


@pytest.mark.parametrize("entry", ["../evil.txt", "/etc/evil.txt", "a/../../evil.txt", "C:/evil.txt", "a\\..\\evil"])
def test_entries_outside_the_folder_are_refused_before_anything_is_written(tmp_path: Path, entry: str):
    with pytest.raises(ServiceError) as caught:
        unpack(zip_of({"config.json": b"{}", entry: b"x"}), tmp_path / "up")
    assert caught.value.status == 422 and caught.value.details == [
        {"loc": ["file", entry], "msg": "is an absolute path or climbs out of the folder ('..')",
         "type": "path_traversal"}]
    assert list((tmp_path / "up").iterdir()) == [] and not (tmp_path / "evil.txt").exists()


def test_a_symbolic_link_entry_is_refused(tmp_path: Path):
    link = zipfile.ZipInfo("tokenizer.json")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr(link, "/etc/passwd")
    with pytest.raises(ServiceError) as caught:
        unpack(out.getvalue(), tmp_path / "up")
    assert caught.value.details[0]["type"] == "zip_link"


@pytest.mark.parametrize("data", [b"", b"PK\x03\x04 not really", b"just some text"])
def test_what_is_not_a_zip_is_422(tmp_path: Path, data: bytes):
    with pytest.raises(ServiceError) as caught:
        unpack(data, tmp_path / "up")
    assert caught.value.status == 422 and caught.value.details[0]["type"] == "bad_zip"


def test_a_zip_that_unpacks_past_the_limit_is_413(tmp_path: Path):
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("model.safetensors", b"\x00" * 2_000_000)  # a few kilobytes zipped
    assert len(out.getvalue()) < 100_000
    with pytest.raises(ServiceError) as caught:
        unpack(out.getvalue(), tmp_path / "up", max_bytes=1_000_000)
    assert caught.value.status == 413 and caught.value.code == ErrorCode.payload_too_large
    assert "BASE_MODEL_MAX_UPLOAD_MB" in caught.value.message
    assert list((tmp_path / "up").iterdir()) == []


def test_base_models_dir_defaults_under_the_data_dir_and_is_made_absolute(tmp_path: Path, monkeypatch):
    settings = make_settings(tmp_path)
    assert settings.base_models_dir == settings.data_dir / "base-models"
    assert settings.base_model_max_upload_mb == 2048
    monkeypatch.chdir(tmp_path)
    assert make_settings(tmp_path, BASE_MODELS_DIR="bm").base_models_dir == tmp_path / "bm"
