"""worker.training.run_training against the real PostgreSQL: claim once, train, export, register."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from core import ingest
from core.db import jobs
from core.db.datasets import add_dataset
from core.db.session import make_engine, make_sessionmaker
from core.db.tables import Model
from core.spec import TrainingSpec
from tests.helpers import make_settings, tiny_dataset_csv
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


def test_held_out_test_split_is_evaluated_on_the_exported_model(pg):
    settings, sm = pg
    job_id = queue_job(settings, sm, test_split=0.25, epochs=2, model={"tfidf": {"refit": True}})
    assert run_training(sessionmaker=sm, settings=settings, job_id=job_id) == "succeeded"
    with sm() as s:
        job = jobs.get_job(session=s, job_id=job_id)
        model = s.get(Model, job.model_id)
        evaluation = model.evaluation
    val, test = evaluation["validation"], evaluation["test"]
    # 72 rows: 18 held out for test (stratified), then 10% of the remaining 54 for validation.
    assert test["examples"] == 18 and val["examples"] == 6
    assert sum(map(sum, test["confusion_matrix"]["matrix"])) == 18
    assert [c["support"] for c in test["per_class"]] == [9, 9]
    # The validation scores are the blend's before its TF-IDF member was refit on those rows, the same figures
    # training reports; the test rows are scored by the exported model itself.
    assert val["scored"] == "before_refit" and test["scored"] == "served_model"
    assert val["accuracy"] == pytest.approx(job.metrics["val_accuracy"])
    assert job.metrics["test_accuracy"] == test["accuracy"] and "test_macro_f1" in job.metrics
    assert job.metrics["dataset_sha256"] and job.metrics["seed"] == 0
    assert (settings.models_dir / str(job.model_id) / "evaluation.json").exists()


def test_a_separate_test_dataset_with_an_unseen_label(pg):
    settings, sm = pg
    job_id = queue_job(settings, sm)
    parsed = ingest.parse_records(
        [{"text": "the goalkeeper saved a penalty", "label": "sports"},
         {"text": "boil the pasta in salted water", "label": "cooking"},
         {"text": "the election results are in", "label": "politics"}],
        limits=ingest.Limits(max_rows=1000, max_text_chars=1000, max_labels=10))
    with sm.begin() as s:
        test_ds = add_dataset(session=s, settings=settings, name="test", parsed=parsed)
        job = jobs.get_job(session=s, job_id=job_id)
        job.spec = {**job.spec, "test_dataset_id": str(test_ds.id)}
        job.test_dataset_id = test_ds.id
        assert jobs.dataset_in_use(session=s, dataset_id=test_ds.id)
    assert run_training(sessionmaker=sm, settings=settings, job_id=job_id) == "succeeded"
    with sm() as s:
        model = s.get(Model, jobs.get_job(session=s, job_id=job_id).model_id)
    assert model.evaluation["test"]["examples"] == 2
    assert model.evaluation["test"]["unknown_label_examples"] == 1


def test_cancel_a_queued_job_then_its_message_trains_nothing(pg):
    settings, sm = pg
    job_id = queue_job(settings, sm)
    with sm.begin() as s:
        assert jobs.request_cancel(session=s, job_id=job_id) == "cancelled"
    assert run_training(sessionmaker=sm, settings=settings, job_id=job_id) == "skipped"
    with sm() as s:
        job = jobs.get_job(session=s, job_id=job_id)
        assert job.status == "cancelled" and job.model_id is None and job.attempts == 0


def test_cancel_a_running_job_stops_it_within_seconds(pg, monkeypatch):
    import threading
    import time

    from worker import training
    from worker.ml import train

    settings, sm = pg
    job_id = queue_job(settings, sm, epochs=200, early_stopping=None)  # minutes of training if nothing stopped it
    # Injected order, whatever the machine's speed: the loop checks for a cancel at every step, and its 30th
    # check (two epochs in) waits until the test has asked to cancel.
    monkeypatch.setattr(train, "CANCEL_CHECK_EVERY_S", 0.0)
    real_check, calls = training._cancel_requested, []
    paused, asked_to_cancel = threading.Event(), threading.Event()

    def check_after_the_request(sm_, job_id_) -> bool:
        calls.append(1)
        if len(calls) == 30:
            paused.set()
            asked_to_cancel.wait(30)
        return real_check(sm_, job_id_)

    monkeypatch.setattr(training, "_cancel_requested", check_after_the_request)
    result: list[str] = []
    thread = threading.Thread(target=lambda: result.append(
        run_training(sessionmaker=sm, settings=settings, job_id=job_id)))
    thread.start()
    assert paused.wait(60), "training never reached its 30th cancel check"
    with sm.begin() as s:
        assert jobs.request_cancel(session=s, job_id=job_id) == "cancelling"
    asked = time.monotonic()
    asked_to_cancel.set()
    thread.join(timeout=30)
    assert result == ["cancelled"] and time.monotonic() - asked < 10
    with sm() as s:
        job = jobs.get_job(session=s, job_id=job_id)
        assert job.status == "cancelled" and job.model_id is None and len(job.history) < 200
        assert s.query(Model).filter_by(job_id=job_id).count() == 0


def test_class_weights_that_do_not_fit_the_data_fail_with_a_stable_code(pg):
    settings, sm = pg
    job_id = queue_job(settings, sm, class_weights={"weather": 2.0})  # the API refuses this; the worker must too
    assert run_training(sessionmaker=sm, settings=settings, job_id=job_id) == "failed"
    with sm() as s:
        job = jobs.get_job(session=s, job_id=job_id)
    assert job.error_code == "spec_data_mismatch" and "weather" in job.error_message


def test_the_reaper_requeues_a_job_whose_worker_died_and_it_then_trains(pg):
    from datetime import timedelta

    from app.reaper import reap_once
    from core.broker import make_celery
    from core.db.base import utcnow

    settings, sm = pg
    celery = make_celery(settings)  # the embedded filesystem broker: messages are files we can count
    job_id = queue_job(settings, sm)
    with sm.begin() as s:  # a worker claimed it, then was SIGKILLed: its heartbeat is an hour old
        assert jobs.claim_job(session=s, job_id=job_id, worker_id="dead:1")
        jobs.get_job(session=s, job_id=job_id).heartbeat_at = utcnow() - timedelta(hours=1)
    queue = settings.broker_dir / "queue"
    before = set(queue.iterdir())
    assert reap_once(sessionmaker=sm, celery=celery, settings=settings) == (1, 0)
    assert len(set(queue.iterdir()) - before) == 1
    assert reap_once(sessionmaker=sm, celery=celery, settings=settings) == (0, 0)  # nothing stale now
    assert run_training(sessionmaker=sm, settings=settings, job_id=job_id) == "succeeded"
    with sm() as s:
        job = jobs.get_job(session=s, job_id=job_id)
        assert job.attempts == 2 and job.model_id is not None


def test_the_reaper_fails_a_job_that_keeps_losing_its_worker(pg):
    from datetime import timedelta

    from app.reaper import reap_once
    from core.broker import make_celery
    from core.db.base import utcnow

    settings, sm = pg
    job_id = queue_job(settings, sm)
    with sm.begin() as s:
        job = jobs.get_job(session=s, job_id=job_id)
        job.status, job.attempts = "running", settings.job_max_attempts
        job.heartbeat_at = utcnow() - timedelta(hours=1)
    assert reap_once(sessionmaker=sm, celery=make_celery(settings), settings=settings) == (0, 1)
    with sm() as s:
        job = jobs.get_job(session=s, job_id=job_id)
    assert job.status == "failed" and job.error_code == "worker_lost"


def test_a_worker_presumed_dead_cannot_write_over_the_attempt_that_replaced_it(pg):
    """Worker A stalls past the heartbeat timeout, the reaper re-queues, worker B claims: A's late writes
    (progress, heartbeat, success) change nothing, so no second model is ever registered for the job."""
    from datetime import timedelta

    from app.reaper import reap_once
    from core.broker import make_celery
    from core.db.base import utcnow

    settings, sm = pg
    job_id = queue_job(settings, sm)
    with sm.begin() as s:
        assert jobs.claim_job(session=s, job_id=job_id, worker_id="a:1")
        jobs.get_job(session=s, job_id=job_id).heartbeat_at = utcnow() - timedelta(hours=1)
    assert reap_once(sessionmaker=sm, celery=make_celery(settings), settings=settings) == (1, 0)
    with sm.begin() as s:
        assert jobs.claim_job(session=s, job_id=job_id, worker_id="b:2")
    with sm.begin() as s:
        assert not jobs.touch_job(session=s, job_id=job_id, worker_id="a:1")
        jobs.update_progress(session=s, job_id=job_id, progress={"stage": "stale"}, worker_id="a:1")
        assert not jobs.finish_job(session=s, job_id=job_id, status="succeeded", worker_id="a:1")
        assert jobs.touch_job(session=s, job_id=job_id, worker_id="b:2")
    with sm() as s:
        job = jobs.get_job(session=s, job_id=job_id)
        assert job.status == "running" and job.worker_id == "b:2" and job.progress["stage"] != "stale"


def test_the_heartbeat_thread_keeps_a_long_step_alive_and_stops_with_the_job(pg):
    import time
    from datetime import timedelta

    from core.db.base import utcnow
    from worker.training import JobHeartbeat

    settings, sm = pg
    job_id = queue_job(settings, sm)
    with sm.begin() as s:
        assert jobs.claim_job(session=s, job_id=job_id, worker_id="w:1")
        jobs.get_job(session=s, job_id=job_id).heartbeat_at = old = utcnow() - timedelta(hours=1)
    with JobHeartbeat(sm, job_id, "w:1", interval_s=0.1):
        time.sleep(0.5)  # a long export: no progress is written, the thread beats
    with sm() as s:
        assert jobs.get_job(session=s, job_id=job_id).heartbeat_at > old + timedelta(minutes=59)


def queue_sweep(settings, sm, *, grid: dict, **fields):
    """A sweep on the tiny dataset, stored the way POST /v1/sweeps stores it (children queued, none sent)."""
    from core.db import sweeps
    from core.sweeps import SweepCreate, child_specs

    parsed = ingest.parse_upload(tiny_dataset_csv(), filename="d.csv", content_type=None,
                                 limits=ingest.Limits(max_rows=1000, max_text_chars=1000, max_labels=10))
    with sm.begin() as s:
        ds = add_dataset(session=s, settings=settings, name="tiny", parsed=parsed)
        request = SweepCreate.model_validate({"dataset_id": str(ds.id), "grid": grid, **fields})
        sweep = sweeps.create_sweep(session=s, request=request, children=child_specs(request))
        return sweep.id, [uuid.UUID(c["job_id"]) for c in sweep.children]


def test_a_sweep_child_clearly_behind_at_a_milestone_is_pruned_and_the_next_child_is_sent(pg):
    settings, sm = pg
    # Children 1 and 2 stand for siblings that already reached epoch 1 with a validation loss no real run
    # reaches (0.0), so child 0, trained for real, is behind them whatever its loss: the decision is certain.
    sweep_id, ids = queue_sweep(settings, sm, grid={"seed": [0, 1, 2, 3]}, base={"epochs": 4, "batch_size": 8},
                                metric="val_loss", max_parallel=1,
                                pruning={"milestones": [1], "keep_fraction": 0.5, "min_peers": 2})
    with sm.begin() as s:
        for job_id in ids[1:3]:
            job = jobs.get_job(session=s, job_id=job_id)
            job.status, job.history = "succeeded", [{"epoch": 1, "train_loss": 0.1, "val_loss": 0.0,
                                                     "val_accuracy": 1.0, "val_macro_f1": 1.0, "lr": 0.1,
                                                     "seconds": 1.0}]
    sent: list[uuid.UUID] = []
    status = run_training(sessionmaker=sm, settings=settings, job_id=ids[0], send=lambda j, r: sent.append(j))
    assert status == "pruned"
    with sm() as s:
        job = jobs.get_job(session=s, job_id=ids[0])
        assert job.status == "pruned" and job.error_code == "pruned" and job.model_id is None
        assert "epoch 1" in job.error_message and "val_loss" in job.error_message
        assert len(job.history) == 1 and job.progress["stage"] == "pruned"
        assert s.query(Model).filter_by(job_id=ids[0]).count() == 0
    assert not (settings.jobs_dir / str(ids[0])).exists()  # no checkpoint left behind
    assert sent == [ids[3]]  # its slot went to the next waiting child


def test_a_sweep_child_that_leads_is_not_pruned(pg):
    settings, sm = pg
    sweep_id, ids = queue_sweep(settings, sm, grid={"seed": [0, 1, 2]}, base={"epochs": 2, "batch_size": 8},
                                metric="val_loss", max_parallel=1,
                                pruning={"milestones": [1], "keep_fraction": 0.5, "min_peers": 2})
    with sm.begin() as s:  # siblings far behind: a loss no run starts from
        for job_id in ids[1:]:
            job = jobs.get_job(session=s, job_id=job_id)
            job.status, job.history = "succeeded", [{"epoch": 1, "train_loss": 9.0, "val_loss": 1e6,
                                                     "val_accuracy": 0.0, "val_macro_f1": 0.0, "lr": 0.1,
                                                     "seconds": 1.0}]
    assert run_training(sessionmaker=sm, settings=settings, job_id=ids[0], send=lambda j, r: None) == "succeeded"


def test_a_job_past_its_memory_cap_fails_with_out_of_memory_and_is_not_retried(tmp_path: Path, pg_url: str):
    import resource

    # Loaded before the cap, as the worker's parent preloads them for its job processes: an import cut short by
    # the cap would leave half a module behind for the rest of this test process.
    import worker.ml.export  # noqa: F401
    import worker.ml.train  # noqa: F401

    # A 64 MiB allowance and a 256 MB bigram table: building the model fails inside the cap, deterministically.
    settings = make_settings(tmp_path, DATABASE_URL=pg_url, TRAINING_MEMORY_LIMIT_MB=64)
    engine = make_engine(pg_url)
    sm = make_sessionmaker(engine)
    limits = resource.getrlimit(resource.RLIMIT_DATA)
    try:
        job_id = queue_job(settings, sm, model={"name": "fasttext", "embedding_dim": 64, "ngram_buckets": 1_000_000},
                           device="cpu")
        assert run_training(sessionmaker=sm, settings=settings, job_id=job_id) == "failed"
        with sm() as s:
            job = jobs.get_job(session=s, job_id=job_id)
        assert job.error_code == "out_of_memory" and "TRAINING_MEMORY_LIMIT_MB" in job.error_message
        assert job.status == "failed" and job.attempts == 1 and job.model_id is None
        assert resource.getrlimit(resource.RLIMIT_DATA) == limits  # the cap ends with the job
    finally:
        engine.dispose()


def test_an_exploding_finite_loss_fails_as_training_diverged(pg):
    settings, sm = pg
    # Adam at lr 10 without clipping: TextCNN's training loss is ~1.8e6 in epoch 1 (seed 0), finite, so the job
    # went on to export and failed as onnx_parity_failed (or, under SGD, registered a model at chance accuracy).
    job_id = queue_job(settings, sm, optimizer={"name": "adam", "lr": 10.0}, grad_clip=None,
                       scheduler={"name": "constant"}, epochs=2, model={"tfidf": None})
    assert run_training(sessionmaker=sm, settings=settings, job_id=job_id) == "failed"
    with sm() as s:
        job = jobs.get_job(session=s, job_id=job_id)
    assert job.error_code == "training_diverged", job.error_message
    assert "in epoch 1" in job.error_message and "learning rate" in job.error_message
    assert job.model_id is None


def test_progress_stays_under_100_percent_with_no_eta_until_the_model_is_registered(pg, monkeypatch):
    settings, sm = pg
    job_id = queue_job(settings, sm)
    written = []
    real_write = jobs.update_progress

    def record(**kwargs):  # the real write, with what it wrote kept
        written.append(dict(kwargs["progress"]))
        return real_write(**kwargs)

    monkeypatch.setattr(jobs, "update_progress", record)
    status = run_training(sessionmaker=sm, settings=settings, job_id=job_id)
    with sm() as s:
        job = jobs.get_job(session=s, job_id=job_id)
    assert status == "succeeded", job.error_message
    after_training = [p for p in written if p["stage"] in ("exporting", "evaluating")]
    assert [p["stage"] for p in after_training] == ["exporting", "evaluating"]
    assert all(p["percent"] < 100 and p["eta_seconds"] is None for p in after_training)
    assert all(p.get("percent", 0) < 100 for p in written)
    assert job.progress["percent"] == 100.0
