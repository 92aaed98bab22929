"""Base models on a real database: the registry (core/db/base_models.py), /v1/base-models through Flask's test
client, and `textclf base-models`. On SQLite and PostgreSQL; the PostgreSQL database is shared by the session, so
names are unique per test and listings are checked for what a test added. The tiny BERT: tests/tiny_bert.py."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.datastructures import FileStorage
from werkzeug.test import encode_multipart

from app.cli import main
from core.base_models import base_model_dir
from core.config import Settings, get_settings
from core.db import base_models
from core.db.session import make_engine, make_sessionmaker
from core.db.tables import TrainingJob
from core.errors import ServiceError
from core.spec import JobStatus
from tests.helpers import Api, KeyedApi, assert_error, db_settings, running_api, sqlite_settings
from tests.tiny_bert import zip_folder, zip_of

pytestmark = pytest.mark.integration


def unique(prefix: str = "tiny") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def installed_files(settings: Settings) -> set[str]:
    """Every entry under BASE_MODELS_DIR, staging and upload folders included."""
    folder = settings.base_models_dir
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


@pytest.fixture(params=["sqlite", "postgresql"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Settings, sessionmaker[Session]]]:
    settings = db_settings(request, tmp_path)
    engine = make_engine(settings.database_url)
    yield settings, make_sessionmaker(engine)
    engine.dispose()


def install(settings: Settings, maker: sessionmaker[Session], src: Path, name: str | None) -> Any:
    with maker.begin() as session:
        return base_models.install_base_model(session=session, settings=settings, src=src, name=name)


def add_job(maker: sessionmaker[Session], base_model: str, status: JobStatus) -> Any:
    """A job row whose stored spec fine-tunes `base_model`, as core/db/jobs.py create_job stores specs."""
    with maker.begin() as session:
        job = TrainingJob(status=status, spec={"model": {"name": "encoder", "base_model": base_model}},
                          progress={"stage": "queued"}, history=[], attempts=0)
        session.add(job)
    return job.id


def set_status(maker: sessionmaker[Session], job_id: Any, status: JobStatus) -> None:
    with maker.begin() as session:
        session.get(TrainingJob, job_id).status = status


# ---------------------------------------------------------------------------------------------------------
# the registry


def test_install_list_get_and_a_taken_name(registry, tiny_bert_dir: Path):
    settings, maker = registry
    name = unique()
    row = install(settings, maker, tiny_bert_dir, name)
    assert (row.name, row.architecture, row.hidden_size, row.num_layers, row.max_length) == (name, "bert", 32, 2, 64)
    folder = base_model_dir(settings, name)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "special_tokens_map.json",
                                                         "tokenizer.json", "tokenizer_config.json", "vocab.txt"]
    assert row.size_bytes == sum(p.stat().st_size for p in folder.iterdir())
    assert installed_files(settings) == {name}  # no staging folder left
    with maker() as session:
        assert base_models.get_base_model(session=session, name=name).sha256 == row.sha256
        assert name in [r.name for r in base_models.list_base_models(session=session)]
        assert base_models.get_base_model(session=session, name=unique()) is None
        assert base_models.get_base_model(session=session, name="../x\x00") is None

    with pytest.raises(ServiceError) as caught:
        install(settings, maker, tiny_bert_dir, name)
    assert caught.value.status == 409 and caught.value.code == "conflict"
    assert installed_files(settings) == {name}


def test_name_defaults_to_the_folder_and_a_refused_folder_leaves_nothing(registry, tiny_bert_dir: Path):
    settings, maker = registry
    named = tiny_bert_dir.rename(tiny_bert_dir.parent / unique("folder"))
    assert install(settings, maker, named, None).name == named.name
    (named / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ServiceError) as caught:
        install(settings, maker, named, unique())
    assert caught.value.status == 422 and caught.value.details[0]["type"] == "pickle_file"
    bad_name = named.rename(named.parent / "not a name")
    (bad_name / "pytorch_model.bin").unlink()
    with pytest.raises(ServiceError) as caught:
        install(settings, maker, bad_name, None)
    assert caught.value.status == 422 and caught.value.details[0]["loc"] == ["name"]
    assert installed_files(settings) == {named.name}


def test_first_base_model_is_the_oldest(tmp_path: Path, tiny_bert_dir: Path):
    settings = sqlite_settings(tmp_path)  # a database of its own: "first" is about every row
    engine = make_engine(settings.database_url)
    maker = make_sessionmaker(engine)
    with maker() as session:
        assert base_models.first_base_model(session=session) is None
    install(settings, maker, tiny_bert_dir, "zeta")
    install(settings, maker, tiny_bert_dir, "alpha")
    with maker() as session:
        assert base_models.first_base_model(session=session).name == "zeta"
        assert [r.name for r in base_models.list_base_models(session=session)] == ["zeta", "alpha"]
    engine.dispose()


def test_delete_is_404_for_none_409_while_an_active_job_uses_it_then_204(registry, tiny_bert_dir: Path):
    settings, maker = registry
    name = unique()
    install(settings, maker, tiny_bert_dir, name)
    with pytest.raises(ServiceError) as caught, maker.begin() as session:
        base_models.delete_base_model(session=session, name=unique())
    assert caught.value.status == 404

    finished = add_job(maker, name, JobStatus.succeeded)  # a finished job does not hold it
    other = add_job(maker, unique(), JobStatus.running)   # nor does a job on another base model
    running = add_job(maker, name, JobStatus.running)
    try:
        with maker() as session:
            assert base_models.base_model_in_use(session=session, name=name)
        with pytest.raises(ServiceError) as caught, maker.begin() as session:
            base_models.delete_base_model(session=session, name=name)
        assert caught.value.status == 409 and "queued or running job" in caught.value.message
        assert base_model_dir(settings, name).is_dir()
    finally:  # the PostgreSQL database is shared: leave no active job behind for other tests
        set_status(maker, running, JobStatus.cancelled)
        set_status(maker, other, JobStatus.cancelled)

    with maker.begin() as session:
        base_models.delete_base_model(session=session, name=name)
    with maker() as session:
        assert base_models.get_base_model(session=session, name=name) is None
    assert finished is not None


# ---------------------------------------------------------------------------------------------------------
# the API


def post_zip(api: Api, data: bytes, filename: str = "model.zip", **form: str):
    # Encoded here, in memory: the test client spools a body over 500 KB to a temporary file that it never
    # closes when the view does not read the body (the 413), and unclosed files are errors in these tests.
    boundary, body = encode_multipart({"file": FileStorage(io.BytesIO(data), filename), **form})
    return api.post("/v1/base-models", data=body, content_type=f"multipart/form-data; boundary={boundary}")


def test_install_read_list_and_delete_over_the_api(any_api: Api, tiny_bert_dir: Path):
    name = unique()
    resp = post_zip(any_api, zip_folder(tiny_bert_dir), name=name)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    body = resp.get_json()
    assert resp.headers["Location"] == f"/v1/base-models/{name}"
    assert set(body) == {"id", "name", "architecture", "sha256", "num_parameters", "hidden_size", "num_layers",
                         "vocab_size", "max_length", "size_bytes", "created_at"}
    assert (body["name"], body["architecture"], body["max_length"]) == (name, "bert", 64)
    assert any_api.get(f"/v1/base-models/{name}").get_json() == body
    assert body in any_api.get("/v1/base-models").get_json()["items"]
    assert_error(post_zip(any_api, zip_folder(tiny_bert_dir), name=name), 409, "conflict", says=(name,))

    assert any_api.delete(f"/v1/base-models/{name}").status_code == 204
    assert not base_model_dir(any_api.settings, name).exists()
    assert_error(any_api.get(f"/v1/base-models/{name}"), 404, "not_found", says=(name,))
    assert_error(any_api.delete(f"/v1/base-models/{name}"), 404, "not_found")
    assert_error(any_api.get("/v1/base-models/..%2Fetc"), 404, "not_found")
    assert installed_files(any_api.settings) == set()


def test_name_defaults_to_the_zips_folder_else_the_zips_name(api: Api, tiny_bert_dir: Path):
    assert post_zip(api, zip_folder(tiny_bert_dir, top="mini-bert")).get_json()["name"] == "mini-bert"
    assert post_zip(api, zip_folder(tiny_bert_dir), filename="other-bert.zip").get_json()["name"] == "other-bert"
    error = assert_error(post_zip(api, zip_folder(tiny_bert_dir), filename="my bert.zip"), 422, "validation_error")
    assert error["details"][0]["loc"] == ["name"]
    assert installed_files(api.settings) == {"mini-bert", "other-bert"}


def test_delete_while_a_job_fine_tunes_it_is_409(any_api: Api, tiny_bert_dir: Path):
    name = unique()
    assert post_zip(any_api, zip_folder(tiny_bert_dir), name=name).status_code == 201
    maker = make_sessionmaker(engine := make_engine(any_api.settings.database_url))
    job = add_job(maker, name, JobStatus.queued)
    try:
        assert_error(any_api.delete(f"/v1/base-models/{name}"), 409, "conflict", says=("job",))
    finally:
        set_status(maker, job, JobStatus.cancelled)
        engine.dispose()
    assert any_api.delete(f"/v1/base-models/{name}").status_code == 204


def test_refused_uploads_answer_in_the_error_shape_and_leave_nothing(any_api: Api, tiny_bert_dir: Path):
    good = {p.name: p.read_bytes() for p in tiny_bert_dir.iterdir()}
    cases = [
        (b"not a zip at all", 422, "invalid_base_model", "bad_zip"),
        (zip_of({**good, "../escape.txt": b"x"}), 422, "invalid_base_model", "path_traversal"),
        (zip_of({**good, "/abs/escape.txt": b"x"}), 422, "invalid_base_model", "path_traversal"),
        (zip_of({**good, "pytorch_model.bin": b"x"}), 422, "invalid_base_model", "pickle_file"),
        (zip_of({k: v for k, v in good.items() if k != "tokenizer.json"}), 422, "invalid_base_model",
         "missing_file"),
        (zip_of({"a/config.json": good["config.json"], "b/model.safetensors": good["model.safetensors"]}), 422,
         "invalid_base_model", "missing_file"),
    ]
    for data, status, code, kind in cases:
        error = assert_error(post_zip(any_api, data, name=unique()), status, code)
        assert error["details"][0]["type"] == kind, error
    assert_error(post_zip(any_api, zip_folder(tiny_bert_dir), name="../etc"), 422, "validation_error")
    assert_error(any_api.post("/v1/base-models", data={"name": "x"}, content_type="multipart/form-data"),
                 400, "bad_request", says=("'file'",))
    assert_error(any_api.post("/v1/base-models", data=zip_folder(tiny_bert_dir), content_type="application/zip"),
                 415, "unsupported_media_type")
    assert installed_files(any_api.settings) == set()
    assert not (tiny_bert_dir.parent / "escape.txt").exists()


def test_the_upload_limit_is_its_own_and_answers_413(tmp_path: Path, tiny_bert_dir: Path):
    # MAX_UPLOAD_BYTES (datasets) does not apply; BASE_MODEL_MAX_UPLOAD_MB does.
    settings = sqlite_settings(tmp_path, MAX_UPLOAD_BYTES=1024, BASE_MODEL_MAX_UPLOAD_MB=1)
    with running_api(settings) as (api, _):
        data = zip_folder(tiny_bert_dir)
        assert 1024 < len(data) < 2**20
        assert post_zip(api, data, name="fits").status_code == 201
        big = zip_of({"padding.txt": uuid.uuid4().bytes * 80_000})  # 1.3 MB, stored: incompressible enough
        error = assert_error(post_zip(api, big, name="big"), 413, "payload_too_large",
                             says=("BASE_MODEL_MAX_UPLOAD_MB", "1 MiB"))
        assert error["details"] is None
        assert installed_files(settings) == {"fits"}


def test_only_admin_keys_install_or_remove_and_read_keys_list(keyed: KeyedApi, tiny_bert_dir: Path):
    admin, reader, trainer = keyed.make_key("admin"), keyed.make_key("read"), keyed.make_key("train")
    name = unique()
    data = {"file": (io.BytesIO(zip_folder(tiny_bert_dir)), "m.zip"), "name": name}
    for key in (reader, trainer):
        resp = keyed.call("POST", "/v1/base-models", key, data=dict(data, file=(io.BytesIO(b"x"), "m.zip")),
                          content_type="multipart/form-data")
        assert_error(resp, 403, "forbidden", says=("'admin'",))
    assert_error(keyed.call("GET", "/v1/base-models", None), 401, "unauthorized")
    resp = keyed.call("POST", "/v1/base-models", admin, data=data, content_type="multipart/form-data")
    assert resp.status_code == 201, resp.get_data(as_text=True)
    assert keyed.call("GET", f"/v1/base-models/{name}", reader).status_code == 200
    assert name in [m["name"] for m in keyed.call("GET", "/v1/base-models", reader).get_json()["items"]]
    assert_error(keyed.call("DELETE", f"/v1/base-models/{name}", trainer), 403, "forbidden")
    assert keyed.call("DELETE", f"/v1/base-models/{name}", admin).status_code == 204


# ---------------------------------------------------------------------------------------------------------
# the CLI


@pytest.fixture(params=["sqlite", "postgresql"])
def cli_settings(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch) -> Iterator[Settings]:
    settings = db_settings(request, tmp_path)
    for name, value in {"TEXTCLF_DATA_DIR": str(settings.data_dir), "DATABASE_URL": settings.database_url,
                        "BASE_MODELS_DIR": str(settings.base_models_dir)}.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()  # the CLI reads the environment through the cached get_settings()
    yield settings
    get_settings.cache_clear()


def test_cli_add_list_remove(cli_settings: Settings, tiny_bert_dir: Path):
    runner = CliRunner()
    name = unique()
    added = runner.invoke(main, ["base-models", "add", str(tiny_bert_dir), "--name", name])
    assert added.exit_code == 0, added.output
    assert f"installed base model {name}" in added.output and "bert" in added.output
    assert (base_model_dir(cli_settings, name) / "model.safetensors").is_file()

    listing = runner.invoke(main, ["base-models", "list"])
    assert listing.exit_code == 0, listing.output
    vocab = json.loads((tiny_bert_dir / "config.json").read_text())["vocab_size"]
    line = next(line for line in listing.stdout.splitlines() if line.endswith(f"  {name}"))
    assert line.split()[:6] == ["bert", "0.0M", "2", "32", str(vocab), "64"]

    again = runner.invoke(main, ["base-models", "add", str(tiny_bert_dir), "--name", name])
    assert again.exit_code == 1 and "already installed" in again.output
    (tiny_bert_dir / "pytorch_model.bin").write_bytes(b"pickle")
    refused = runner.invoke(main, ["base-models", "add", str(tiny_bert_dir), "--name", unique()])
    assert refused.exit_code == 1 and "pytorch_model.bin: is a pickle file" in refused.output

    removed = runner.invoke(main, ["base-models", "remove", name])
    assert removed.exit_code == 0, removed.output
    assert not base_model_dir(cli_settings, name).exists()
    missing = runner.invoke(main, ["base-models", "remove", name])
    assert missing.exit_code == 1 and "No base model named" in missing.output
    assert runner.invoke(main, ["base-models", "add", str(tiny_bert_dir / "nowhere")]).exit_code == 2


def test_cli_works_in_a_fresh_folder(tmp_path: Path, tiny_bert_dir: Path, monkeypatch):
    """Before `textclf serve` ever ran there (no data folder, no database): the embedded database is made and
    migrated, as the server would at start, instead of a traceback."""
    monkeypatch.chdir(tmp_path)
    for name in ("TEXTCLF_DATA_DIR", "DATABASE_URL", "BASE_MODELS_DIR", "ARTIFACT_DIR"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        added = runner.invoke(main, ["base-models", "add", str(tiny_bert_dir)])
        assert added.exit_code == 0, added.output
        assert (tmp_path / "textclf-data" / "base-models" / "tiny-bert" / "model.safetensors").is_file()
        assert runner.invoke(main, ["keys", "list"]).exit_code == 0
        assert runner.invoke(main, ["migrate"]).exit_code == 0
    finally:
        get_settings.cache_clear()
