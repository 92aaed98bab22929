"""A run killed after any epoch and resumed from its checkpoint ends exactly where the uninterrupted run does."""

from __future__ import annotations

import pytest
import torch

from tests.unit.test_train_export import CPU, LABELS, TEXTS, Y, tiny_spec
from worker.ml.checkpoint import CheckpointStore, fingerprint
from worker.ml.train import train

pytestmark = pytest.mark.unit


class Crash(Exception):
    """Stands for the SIGKILL: raised right after the checkpoint of epoch `after` is on disk."""


class CrashingStore(CheckpointStore):
    def __init__(self, folder, fp, after: int):
        super().__init__(folder, fp)
        self.after = after

    def save(self, state):
        super().save(state)
        if len(state["history"]) == self.after:
            raise Crash()


def strip(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def assert_same_run(a, b):
    assert strip(a.history) == strip(b.history)
    for key in ("accuracy", "macro_f1", "loss", "best_epoch", "steps", "epochs_run", "stopped_early"):
        assert a.metrics[key] == b.metrics[key], key
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb), ka
    assert a.encoder.to_json() == b.encoder.to_json()


@pytest.mark.parametrize(("overrides", "crash_after"), [
    # dropout + per-batch cosine schedule + Adam state
    ({"model": {"name": "textcnn", "dropout": 0.5}, "scheduler": {"name": "cosine", "warmup_ratio": 0.2}}, 2),
    # augmentation's own random stream, momentum buffers, a per-epoch step schedule, a subword tokenizer
    ({"model": {"name": "fasttext"}, "optimizer": {"name": "momentum", "lr": 0.1},
      "scheduler": {"name": "step", "step_size": 1, "gamma": 0.5},
      "augment": {"deletion": 0.1, "swap": 0.1, "mask": 0.1}, "tokenizer": {"kind": "bpe", "vocab_size": 120}}, 1),
    # one-cycle and batch norm running statistics
    ({"model": {"name": "textcnn", "batch_norm": True}, "optimizer": {"name": "adamw"},
      "scheduler": {"name": "onecycle"}}, 3),
    # plateau scheduler state and early stopping counters
    ({"model": {"name": "bigru"}, "scheduler": {"name": "plateau", "patience": 0},
      "early_stopping": {"patience": 1, "metric": "val_loss"}}, 2),
])
def test_resume_after_a_crash_matches_the_uninterrupted_run(tmp_path, overrides, crash_after):
    spec = tiny_spec(epochs=4, **overrides)
    fp = fingerprint(spec.model_dump(mode="json"), "data")
    whole = train(spec, TEXTS, Y, label_names=LABELS, device=CPU)

    with pytest.raises(Crash):
        train(spec, TEXTS, Y, label_names=LABELS, device=CPU,
              checkpoint=CrashingStore(tmp_path / "ckpt", fp, after=crash_after))
    store = CheckpointStore(tmp_path / "ckpt", fp)
    resumed = train(spec, TEXTS, Y, label_names=LABELS, device=CPU, checkpoint=store)

    assert resumed.metrics["resumed_from_epoch"] == min(crash_after, whole.metrics["epochs_run"])
    assert whole.metrics["resumed_from_epoch"] is None
    assert_same_run(whole, resumed)


def test_a_finished_run_resumes_straight_to_the_end(tmp_path):
    """Killed after the last epoch (e.g. during export): nothing is trained again."""
    spec = tiny_spec(epochs=3)
    store = CheckpointStore(tmp_path / "ckpt", fingerprint(spec.model_dump(mode="json"), "data"))
    first = train(spec, TEXTS, Y, label_names=LABELS, device=CPU, checkpoint=store)
    again = train(spec, TEXTS, Y, label_names=LABELS, device=CPU, checkpoint=store,
                  on_progress=lambda p: pytest.fail(f"trained again: {p}"))
    assert again.metrics["resumed_from_epoch"] == 3
    assert_same_run(first, again)


def test_a_checkpoint_of_another_spec_or_a_broken_file_is_ignored(tmp_path):
    spec = tiny_spec(epochs=2)
    folder = tmp_path / "ckpt"
    train(spec, TEXTS, Y, label_names=LABELS, device=CPU,
          checkpoint=CheckpointStore(folder, fingerprint(spec.model_dump(mode="json"), "data")))
    other = CheckpointStore(folder, fingerprint(spec.model_dump(mode="json"), "other data"))
    assert other.load() is None
    fresh = train(spec, TEXTS, Y, label_names=LABELS, device=CPU, checkpoint=other)
    assert fresh.metrics["resumed_from_epoch"] is None

    (folder / "checkpoint.pt").write_bytes(b"\x80\x04 not a checkpoint")
    assert CheckpointStore(folder, other.fingerprint).load() is None


def test_checkpoints_load_without_unpickling_code(tmp_path):
    """weights_only=True: a file carrying an arbitrary object is refused, not executed."""
    store = CheckpointStore(tmp_path, "fp")
    torch.save({"fingerprint": "fp", "payload": Crash()}, store.path)
    assert store.load() is None
    store.clear()
    assert not tmp_path.exists()


def test_the_worker_modules_do_not_load_torch_at_import():
    """The Celery parent imports worker.training; torch (and CUDA) must wait for the task process."""
    import subprocess
    import sys

    code = "import sys, worker.training, worker.ml.checkpoint; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_stop_signal_masked_by_a_library_error_still_stops_the_job_process(monkeypatch, tmp_path):
    """Celery terminates the task (SystemExit in the process) when the broker connection is lost. Arriving inside
    torch.save, the zip writer's cleanup raised RuntimeError("unexpected pos ...") over it, and the job was
    marked failed instead of being re-queued (seen in tests/e2e/test_outages.py). The exit must win."""
    import uuid

    from core.spec import TrainingSpec
    from tests.helpers import make_settings
    from worker import training

    def interrupted(*_args, **_kwargs):
        try:
            raise SystemExit(-241)  # what billiard raises on SIGTERM
        except SystemExit:
            # implicitly chained, as the library's own cleanup raises it
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 416896 vs 416800")  # noqa: B904

    monkeypatch.setattr(training, "_train_export_register", interrupted)
    # No sessionmaker: marking the job failed would need one, so any attempt to do so fails this test.
    run = training.JobRun(sessionmaker=None, settings=make_settings(tmp_path), job_id=uuid.uuid4(), owner="worker-1",
                          spec=TrainingSpec(dataset_id=uuid.uuid4(), device="cpu"), dataset_sha256=None,
                          checkpoint=None)
    with pytest.raises(SystemExit) as stopped:
        training._run(run)
    assert stopped.value.code == -241

    plain = RuntimeError("a real bug")
    assert training.interrupt_behind(plain) is None
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise ValueError("cleanup failed")  # noqa: B904 (implicit chaining is the point)
    except ValueError as masked:
        assert isinstance(training.interrupt_behind(masked), KeyboardInterrupt)


def test_a_soft_time_limit_masked_by_a_library_error_fails_the_job_as_time_limit_exceeded(monkeypatch, tmp_path):
    """Celery's soft time limit is a signal too: arriving inside torch.save, the zip writer's error masked it and
    the job failed as training_error (seen in tests/e2e/test_faults.py). It must fail as time_limit_exceeded."""
    import uuid

    from celery.exceptions import SoftTimeLimitExceeded

    from core.errors import ErrorCode
    from core.spec import JobStatus, TrainingSpec
    from tests.helpers import make_settings
    from worker import training

    def interrupted(*_args, **_kwargs):
        try:
            raise SoftTimeLimitExceeded()
        except SoftTimeLimitExceeded:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 416896 vs 416800")  # noqa: B904

    failures = []
    monkeypatch.setattr(training, "_train_export_register", interrupted)
    monkeypatch.setattr(training.JobRun, "fail", lambda self, code, message: failures.append((code, message)))
    run = training.JobRun(sessionmaker=None, settings=make_settings(tmp_path), job_id=uuid.uuid4(), owner="worker-1",
                          spec=TrainingSpec(dataset_id=uuid.uuid4(), device="cpu", max_runtime_seconds=10),
                          dataset_sha256=None, checkpoint=None)
    assert training._run(run) == JobStatus.failed
    assert [code for code, _ in failures] == [ErrorCode.time_limit_exceeded] and "10 s" in failures[0][1]
