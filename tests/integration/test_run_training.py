"""worker.training.run_training against the real PostgreSQL: claim once, train, export, register."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from app import ingest
from app.db import jobs
from app.db.datasets import add_dataset
from app.db.models import Model
from app.db.session import make_engine, make_sessionmaker
from app.spec import TrainingSpec
from tests.conftest import make_settings, tiny_dataset_csv
from worker.training import run_training

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def pg(tmp_path: Path, pg_url: str):
    settings = make_settings(tmp_path, DATABASE_URL=pg_url)
    engine = make_engine(pg_url)
    yield settings, make_sessionmaker(engine)
    engine.dispose()


def queue_job(settings, sm, **spec_fields) -> uuid.UUID:
    parsed = ingest.parse_upload(tiny_dataset_csv(), filename="d.csv", content_type=None,
                                 limits=ingest.Limits(max_rows=1000, max_text_chars=1000, max_labels=10))
    with sm.begin() as s:
        ds = add_dataset(session=s, settings=settings, name="tiny", parsed=parsed)
        spec = TrainingSpec.model_validate({"dataset_id": str(ds.id), "epochs": 1, "batch_size": 8, **spec_fields})
        return jobs.create_job(session=s, spec=spec).id


def test_a_redelivered_message_trains_nothing_twice(pg):
    settings, sm = pg
    job_id = queue_job(settings, sm)
    assert run_training(sessionmaker=sm, settings=settings, job_id=job_id) == "succeeded"
    assert run_training(sessionmaker=sm, settings=settings, job_id=job_id) == "skipped"
    with sm() as s:
        job = jobs.get_job(session=s, job_id=job_id)
        assert job.status == "succeeded" and job.attempts == 1
        assert s.query(Model).filter_by(job_id=job_id).count() == 1
        model_dir = settings.models_dir / str(job.model_id)
        assert {"model.onnx", "tokenizer.json", "labels.json", "spec.json", "metrics.json"} <= {
            p.name for p in model_dir.iterdir()}
        assert job.metrics["onnx_parity"]["max_abs_diff"] <= 1e-4
        assert len(job.history) == 1 and job.progress["stage"] == "done"
    # no half-written folders are left behind
    assert not [p for p in settings.models_dir.iterdir() if p.name.startswith(".tmp-")]


def test_a_missing_dataset_file_fails_the_job_with_a_stable_code(pg):
    settings, sm = pg
    job_id = queue_job(settings, sm)
    with sm() as s:
        dataset_id = jobs.get_job(session=s, job_id=job_id).dataset_id
    (settings.datasets_dir / f"{dataset_id}.jsonl").unlink()
    assert run_training(sessionmaker=sm, settings=settings, job_id=job_id) == "failed"
    with sm() as s:
        job = jobs.get_job(session=s, job_id=job_id)
        assert job.error == {"code": "dataset_missing", "message": job.error_message}
        assert job.model_id is None


def test_divergence_is_a_failed_job_not_a_crash(pg):
    settings, sm = pg
    # Plain SGD at lr 10 with no clipping sends TextCNN's loss to NaN within the first epoch (seed 0).
    job_id = queue_job(settings, sm, optimizer={"name": "sgd", "lr": 10.0}, grad_clip=None,
                       scheduler={"name": "constant"}, epochs=3)
    assert run_training(sessionmaker=sm, settings=settings, job_id=job_id) == "failed"
    with sm() as s:
        job = jobs.get_job(session=s, job_id=job_id)
    assert job.error_code == "training_diverged" and "learning rate" in job.error_message
    assert job.model_id is None
