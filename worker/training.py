"""One training job from claim to registered model: the orchestration around worker.ml.

run_training claims the job, then three steps run with no database session held: train, export (with the
ONNX parity check and the evaluation of the exported model) and register. Each step takes the JobRun, the
claimed attempt's context, and hands the next step what it made.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from core import ingest
from core.base_models import base_model_dir as base_model_dir_of
from core.base_models import sha256_file
from core.config import Settings
from core.db import base_models, jobs, registry
from core.db.datasets import get_dataset, records_path
from core.db.tables import Model
from core.dispatch import Send
from core.errors import ErrorCode
from core.ml.predictor import OnnxPredictor
from core.spec import TERMINAL_STATUSES, JobStatus, TrainingSpec
from worker.ml.checkpoint import CheckpointStore, fingerprint
from worker.ml.evaluation import evaluate
from worker.sweeps import SweepPruner, release_slot

if TYPE_CHECKING:  # torch: task process only
    from worker.ml.train import TrainResult

log = logging.getLogger(__name__)

# Progress is written at most this often (plus at every epoch end), so a fast loop doesn't hammer the database.
PROGRESS_INTERVAL_S = 2.0
# Validation texts used by the ONNX parity check.
PARITY_SAMPLE = 64
MIB = 1024 * 1024
# What progress.percent reads once every step is done and until the model is registered (100): the network's
# selection and TF-IDF fit, export, parity check and evaluation, for which there is no step count to go by.
AFTER_TRAINING_PERCENT = 99.0
# Tries at registering a model when concurrent registrations of one name race for a version number.
REGISTER_ATTEMPTS = 3


class JobCancelled(Exception):
    """The user cancelled the job while it ran."""


class JobPruned(Exception):
    """The job's sweep stopped it: it fell clearly behind its siblings at a milestone epoch."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class JobFailed(Exception):
    """A failure that belongs to the job (bad data, divergence, parity), not to the infrastructure."""

    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class JobRun:
    """One claimed attempt at a job: what every step after the claim works with. Each database write opens its
    own short transaction from `sessionmaker`, as `owner`, so a job taken over by another attempt is left alone."""

    sessionmaker: sessionmaker[Session]
    settings: Settings
    job_id: uuid.UUID
    owner: str  # worker_id:pid, written with every change to the job
    spec: TrainingSpec
    dataset_sha256: str | None
    checkpoint: CheckpointStore | None
    pruner: SweepPruner | None = None

    def write_progress(self, progress: dict[str, Any], *, history: list[dict[str, Any]] | None = None,
                       device: str | None = None) -> None:
        """Store the job's progress; a database blip is logged, not raised."""
        try:
            with self.sessionmaker.begin() as session:
                jobs.update_progress(session=session, job_id=self.job_id, progress=progress, history=history,
                                     device=device, worker_id=self.owner)
        except OperationalError:
            # A database blip must not kill hours of training; the next write will carry the news.
            log.warning("job %s: could not write progress (database unavailable)", self.job_id)

    def cancel_requested(self) -> bool:
        """True once the user asked to cancel."""
        return _cancel_requested(self.sessionmaker, self.job_id)

    def finish(self, status: JobStatus, **fields: Any) -> None:
        """End the job as `status` with `fields` (error, progress) in one transaction."""
        with self.sessionmaker.begin() as session:
            jobs.finish_job(session=session, job_id=self.job_id, status=status, worker_id=self.owner, **fields)

    def fail(self, code: ErrorCode, message: str) -> None:
        """End the job as failed with a stable `code` and a message for the user."""
        self.finish(JobStatus.failed, error_code=code, error_message=message, progress={"stage": "failed"})


@dataclass(frozen=True)
class JobData:
    """The job's rows: `texts`/`labels` for training (validation is split off inside train()), and the test
    rows, a separate dataset or a share held out here that train() never sees."""

    texts: list[str]
    labels: list[str]
    test_texts: list[str]
    test_labels: list[str]
    label_names: list[str]  # the training labels, sorted: the model's classes, in order


@dataclass(frozen=True)
class ExportedModel:
    """A checked, evaluated model directory in its final place, not yet registered."""

    model_id: uuid.UUID
    model_dir: Path
    metrics: dict[str, Any]
    evaluation: dict[str, Any]


def run_training(*, sessionmaker: sessionmaker[Session], settings: Settings, job_id: uuid.UUID,
                 worker_id: str = "worker", send: Send | None = None) -> str:
    """Claim, train, export, check and register; returns the job's final status (or 'skipped').

    `send` puts a job's message on the broker: when this job is a sweep's child, the next waiting children
    are sent with it as this one ends.
    """
    owner = f"{worker_id}:{os.getpid()}"
    with sessionmaker.begin() as session:
        claimed = jobs.claim_job(session=session, job_id=job_id, worker_id=owner)
        job = jobs.get_job(session=session, job_id=job_id)
        sweep_id = job.sweep_id if job is not None else None
        if claimed:
            spec = TrainingSpec.model_validate(job.spec)  # never trust a stored dict
            dataset = get_dataset(session=session, dataset_id=spec.dataset_id)
            dataset_sha256 = dataset.sha256 if dataset else None
            pruner = SweepPruner.for_job(session, job, spec, sessionmaker)
    if not claimed:
        log.info("job %s: not queued any more, skipping this delivery", job_id)
        # e.g. a child cancelled before it started freed a slot
        release_slot(sessionmaker=sessionmaker, sweep_id=sweep_id, send=send)
        return "skipped"
    log.info("job %s: claimed", job_id)
    checkpoint = CheckpointStore(settings.jobs_dir / str(job_id),
                                 fingerprint(spec.model_dump(mode="json"), dataset_sha256))
    run = JobRun(sessionmaker=sessionmaker, settings=settings, job_id=job_id, owner=owner, spec=spec,
                 dataset_sha256=dataset_sha256, checkpoint=checkpoint, pruner=pruner)
    try:
        with JobHeartbeat(sessionmaker, job_id, owner, interval_s=settings.job_heartbeat_timeout / 5):
            status = _run(run)
    except OperationalError:
        raise  # infrastructure: the job is re-queued, and the next attempt resumes from the last checkpoint
    except BaseException:
        checkpoint.clear()
        raise
    # A final status leaves the checkpoint of no more use. A SIGKILL never gets here, which is the point: the
    # next attempt resumes from it.
    if status in TERMINAL_STATUSES:
        checkpoint.clear()
    release_slot(sessionmaker=sessionmaker, sweep_id=sweep_id, send=send)
    return status


def _run(run: JobRun) -> str:
    """The three steps under the memory cap; every way the job ends is written here. Returns the status."""
    settings, spec = run.settings, run.spec
    try:
        with memory_cap(settings.training_memory_limit_mb * MIB if _trains_on_cpu(spec) else None):
            model_id, metrics = _train_export_register(run)
    except JobPruned as exc:
        run.finish(JobStatus.pruned, error_code=ErrorCode.pruned, error_message=exc.reason,
                   progress={"stage": "pruned"})
        return JobStatus.pruned
    except JobCancelled:
        log.info("job %s cancelled", run.job_id)
        run.finish(JobStatus.cancelled, progress={"stage": "cancelled"})
        return JobStatus.cancelled
    except JobFailed as exc:
        log.warning("job %s failed: %s: %s", run.job_id, exc.code, exc.message)
        run.fail(exc.code, exc.message)
        return JobStatus.failed
    except SoftTimeLimitExceeded:
        return _past_time_limit(run)
    except OperationalError:
        raise  # infrastructure: Celery retries the task
    except Exception as exc:
        # A stop arrives as a signal, anywhere: inside a library's write, the library's cleanup may raise its own
        # error over it (torch.save's zip writer did: "unexpected pos"). The stop wins.
        interrupt = interrupt_behind(exc)
        if isinstance(interrupt, SoftTimeLimitExceeded):
            return _past_time_limit(run)
        if interrupt is not None:
            # Told to exit (Celery terminates the task when the broker connection is lost): the job is
            # re-queued, not failed.
            raise interrupt from None
        if out_of_memory(exc):
            # Past the cap the allocation failed here, where a kernel OOM kill would have been re-queued to die
            # again; the cap is lifted again by now, so this write has memory to work with.
            log.warning("job %s ran out of memory: %s", run.job_id, exc)
            run.fail(ErrorCode.out_of_memory,
                     f"Training ran out of memory: a job may use {settings.training_memory_limit_mb:,} MiB above its "
                     "process's own (TRAINING_MEMORY_LIMIT_MB). Lower batch_size, tokenizer.max_length, "
                     "model.embedding_dim or the model's width.")
            return JobStatus.failed
        log.exception("job %s: unexpected error", run.job_id)
        run.fail(ErrorCode.training_error, f"Training failed unexpectedly ({type(exc).__name__}).")
        return JobStatus.failed
    log.info("job %s succeeded: model %s, val accuracy %.4f", run.job_id, model_id, metrics.get("val_accuracy", 0.0))
    return JobStatus.succeeded


def _past_time_limit(run: JobRun) -> str:
    """Fail the job as time_limit_exceeded (Celery's soft limit reached it)."""
    limit = run.spec.max_runtime_seconds or run.settings.job_max_runtime_seconds
    run.fail(ErrorCode.time_limit_exceeded, f"The job ran past its time limit ({limit} s; max_runtime_seconds in "
                                            "the spec, capped by JOB_MAX_RUNTIME_SECONDS).")
    return JobStatus.failed


def _train_export_register(run: JobRun) -> tuple[uuid.UUID, dict[str, Any]]:
    """Load the data, then train -> export -> register; returns the registered model's id and metrics."""
    # torch is imported here, inside the task process, never in the Celery parent (CUDA and fork don't mix).
    import torch

    # Each of the worker's WORKER_CONCURRENCY processes gets its share of the cores: oversubscribed threads
    # made epochs several times slower on our 2-core machine.
    torch.set_num_threads(run.settings.training_threads())
    data = _load_data(run.settings, run.spec)
    device, device_name = _resolve_device(run.spec)
    run.write_progress({"stage": "training", "total_epochs": run.spec.epochs}, device=device_name)
    result = _train(run, data=data, device=device)
    exported = _export(run, data=data, result=result, device_name=device_name)
    _register(run, exported=exported, result=result, label_names=data.label_names)
    return exported.model_id, exported.metrics


def _resolve_device(spec: TrainingSpec) -> tuple[Any, str]:
    """The torch device the spec asks for, and its name for the job's `device` field."""
    import torch

    from worker.ml.train import CudaUnavailable, resolve_device

    try:
        device = resolve_device(spec.device)
    except CudaUnavailable:
        raise JobFailed(ErrorCode.cuda_unavailable, "The spec asks for CUDA but this worker has no usable GPU.") \
            from None
    return device, _describe(device, torch)


def _train(run: JobRun, *, data: JobData, device: Any) -> TrainResult:
    """Step 1: train, writing progress as it goes and stopping for a cancel or the sweep's pruner; the loop's
    own failures become the job's (JobFailed, JobCancelled, JobPruned)."""
    from worker.ml.train import SpecDataMismatch, TrainingCancelled, TrainingDiverged, train

    pruner = run.pruner
    last_write, epochs_written = 0.0, 0

    def on_progress(progress: dict[str, Any]) -> None:
        nonlocal last_write, epochs_written
        history = progress.get("history") or []
        now = time.monotonic()
        if len(history) == epochs_written and now - last_write < PROGRESS_INTERVAL_S:
            return
        new_epoch = len(history) > epochs_written
        last_write, epochs_written = now, len(history)
        shown = {k: v for k, v in progress.items() if k != "history"}
        if shown.get("percent", 0.0) >= AFTER_TRAINING_PERCENT:  # the steps are done, the job is not
            shown.update(percent=AFTER_TRAINING_PERCENT, eta_seconds=None)
        run.write_progress(shown, history=history)
        if new_epoch and pruner is not None:
            pruner.after_epoch(history)  # after the write: siblings judge this child by the stored history

    def should_stop() -> bool:
        return (pruner is not None and pruner.reason is not None) or run.cancel_requested()

    base_model = _base_model(run) if run.spec.model.name == "encoder" else None
    base_model_dir = base_model_dir_of(run.settings, base_model["name"]) if base_model else None
    try:
        result = train(run.spec, data.texts, data.labels, label_names=data.label_names, device=device,
                       on_progress=on_progress, should_stop=should_stop, checkpoint=run.checkpoint,
                       base_model_dir=base_model_dir)
    except TrainingDiverged as exc:
        raise JobFailed(ErrorCode.training_diverged,
                        f"Training diverged: {exc}; lower the learning rate or clip gradients.") from None
    except TrainingCancelled:
        if pruner is not None and pruner.reason is not None:
            raise JobPruned(pruner.reason) from None
        raise JobCancelled() from None
    except SpecDataMismatch as exc:
        raise JobFailed(ErrorCode.spec_data_mismatch, str(exc)) from None
    if base_model is not None:  # the model reply names what it was fine-tuned from
        result.metrics["base_model"] = base_model
    if result.metrics.get("resumed_from_epoch") is not None:
        log.info("job %s: resumed from the checkpoint of epoch %s", run.job_id, result.metrics["resumed_from_epoch"])
    return result


def _base_model(run: JobRun) -> dict[str, str]:
    """The encoder's base model as registered ({name, sha256}), its files checked against the registry: a job
    never fine-tunes weights other than the ones the model reply names."""
    name = str(run.spec.model.base_model)
    with run.sessionmaker() as session:
        row = base_models.get_base_model(session=session, name=name)
        expected = row.sha256 if row is not None else None
    weights = base_model_dir_of(run.settings, name) / "model.safetensors"
    if expected is None or not weights.is_file():
        raise JobFailed(ErrorCode.base_model_missing, f"Base model {name!r} is no longer installed; add it again "
                        "(textclf base-models add, or POST /v1/base-models) and train again.")
    if sha256_file(weights) != expected:
        raise JobFailed(ErrorCode.base_model_missing, f"Base model {name!r}'s model.safetensors no longer matches "
                        f"the sha256 it was installed with ({expected}); install it again.")
    return {"name": name, "sha256": expected}


def _export(run: JobRun, *, data: JobData, result: TrainResult, device_name: str) -> ExportedModel:
    """Step 2: export the model, check the ONNX file's parity with torch and evaluate the exported model (exactly
    what will be served), all on the validation rows train() selected the model on (result.val_texts), then on
    the test rows. Written to a private folder, moved into place only once complete and checked."""
    spec = run.spec
    run.write_progress({**_last_progress(result, spec), "stage": "exporting"})
    model_id = uuid.uuid4()
    with _staged_dir(run.settings.models_dir, job_id=run.job_id, model_id=model_id) as work_dir:
        parity = _write_model(work_dir, result=result, spec=spec, label_names=data.label_names)
        run.write_progress({**_last_progress(result, spec), "stage": "evaluating"})
        evaluation = _evaluate_exported(work_dir, data.label_names, (result.val_texts, result.val_y),
                                        (data.test_texts, data.test_labels), val_proba=result.val_proba)
        metrics = {**_flat_metrics(result.metrics), "onnx_parity": parity, "device": device_name,
                   "dataset_sha256": run.dataset_sha256, "seed": spec.seed,
                   **_summary(evaluation["test"], "test")}
        (work_dir / "evaluation.json").write_text(json.dumps(evaluation, indent=2))
        (work_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return ExportedModel(model_id=model_id, model_dir=run.settings.models_dir / str(model_id), metrics=metrics,
                         evaluation=evaluation)


@contextlib.contextmanager
def _staged_dir(models_dir: Path, *, job_id: uuid.UUID, model_id: uuid.UUID) -> Iterator[Path]:
    """A private folder to write a model into, renamed to models_dir/<model_id> once the block completes and
    removed if it fails. It is named for the job, so an attempt killed mid-export leaves debris the next
    attempt sweeps away."""
    work_dir = models_dir / f".tmp-job-{job_id}"
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        yield work_dir
        os.replace(work_dir, models_dir / str(model_id))
    except BaseException:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise


def _write_model(model_dir: Path, *, result: TrainResult, spec: TrainingSpec, label_names: list[str]) -> dict:
    """The self-describing artifacts (model.onnx, tokenizer.json, labels.json, spec.json) in `model_dir`, and the
    parity check of model.onnx against torch on validation texts; returns the parity figures."""
    from worker.ml.export import ParityError, check_parity, export_onnx

    export_onnx(result.model, model_dir / "model.onnx", vocab_size=result.encoder.vocab_size)
    result.encoder.save(model_dir / "tokenizer.json")
    (model_dir / "labels.json").write_text(json.dumps(label_names, ensure_ascii=False))
    (model_dir / "spec.json").write_text(json.dumps(spec.model_dump(mode="json"), indent=2))
    try:
        return check_parity(result.model, model_dir / "model.onnx", result.encoder, result.val_texts[:PARITY_SAMPLE])
    except ParityError as exc:
        raise JobFailed(ErrorCode.onnx_parity_failed, str(exc)) from None  # the message says what disagreed


def _register(run: JobRun, *, exported: ExportedModel, result: TrainResult, label_names: list[str]) -> None:
    """Step 3: the model row and the job's success in one transaction. A job cancelled meanwhile registers
    nothing, and a failed registration leaves no model folder behind."""
    spec, model_id, model_dir = run.spec, exported.model_id, exported.model_dir
    if run.cancel_requested():  # cancelled during export: register nothing
        shutil.rmtree(model_dir, ignore_errors=True)
        raise JobCancelled()
    artifacts = {p.name: p.stat().st_size for p in sorted(model_dir.iterdir())}
    name = spec.name or f"model-{str(model_id)[:8]}"
    try:
        for attempt in range(REGISTER_ATTEMPTS):
            try:
                with run.sessionmaker.begin() as session:
                    session.add(Model(id=model_id, name=name, version=registry.next_version(session=session, name=name),
                                      job_id=run.job_id, dataset_id=spec.dataset_id, labels=label_names,
                                      spec=spec.model_dump(mode="json"), metrics=exported.metrics,
                                      artifacts=artifacts, evaluation=exported.evaluation,
                                      abstain_threshold=spec.abstain_threshold))
                    session.flush()
                    done = jobs.finish_job(session=session, job_id=run.job_id, status=JobStatus.succeeded,
                                           metrics=exported.metrics, model_id=model_id, worker_id=run.owner,
                                           # the whole history: epoch-end writes lost to a database
                                           # outage would otherwise leave it short
                                           history=result.history,
                                           progress={**_last_progress(result, spec), "stage": "done",
                                                     "percent": 100.0, "eta_seconds": 0.0})
                    if not done:
                        raise JobFailed(ErrorCode.training_error,
                                        "The job was changed by someone else while it trained.")
                break
            except IntegrityError:
                # Another model of the same name took this version number at the same moment: count again.
                if attempt == REGISTER_ATTEMPTS - 1:
                    raise
    except BaseException:
        shutil.rmtree(model_dir, ignore_errors=True)
        raise


def _trains_on_cpu(spec: TrainingSpec) -> bool:
    import torch

    return spec.device == "cpu" or (spec.device == "auto" and not torch.cuda.is_available())


def _vm_data() -> int | None:
    """This process's data segment in bytes (what RLIMIT_DATA counts), or None where /proc is not there."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@contextlib.contextmanager
def memory_cap(limit_bytes: int | None) -> Iterator[None]:
    """Let the process's data segment grow by at most `limit_bytes` while the block runs (None: no cap).

    A kernel OOM kill is a SIGKILL like any other, so the job would be re-queued to die again. Under the cap an
    allocation past it fails in the process instead (MemoryError, torch's "can't allocate memory"), and the job
    fails with out_of_memory. RLIMIT_DATA counts private writable memory, which is what training allocates; it
    is not applied on CUDA, where the driver's own mappings would count and the GPU's memory is what runs out
    (torch raises OutOfMemoryError there). Only the soft limit changes, and it is restored on the way out.
    """
    current = _vm_data()
    if limit_bytes is None or current is None:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    cap = current + limit_bytes
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def out_of_memory(exc: BaseException) -> bool:
    """True when `exc`, or an error it was raised while handling, is a failed allocation: Python's and numpy's
    MemoryError, torch's CPU allocator ("can't allocate memory") or CUDA's OutOfMemoryError."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, MemoryError) or type(current).__name__ == "OutOfMemoryError" \
                or "can't allocate memory" in str(current):
            return True
        seen.add(id(current))
        current = current.__context__
    return False


def interrupt_behind(exc: BaseException) -> BaseException | None:
    """The stop that `exc` was raised while handling, if any: a SystemExit or KeyboardInterrupt, or Celery's soft
    time limit."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if not isinstance(current, Exception) or isinstance(current, SoftTimeLimitExceeded):
            return current
        seen.add(id(current))
        current = current.__context__
    return None


class JobHeartbeat:
    """Touches the job's heartbeat every `interval_s` seconds from a thread, for as long as the attempt runs.

    Progress writes beat too, but export, evaluation or tokenising a large dataset can each outlast the
    reaper's JOB_HEARTBEAT_TIMEOUT; without this the reaper would re-queue a job that is alive.
    """

    def __init__(self, sm: sessionmaker[Session], job_id: uuid.UUID, owner: str, interval_s: float) -> None:
        self.sm, self.job_id, self.owner, self.interval_s = sm, job_id, owner, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"job-heartbeat-{job_id}", daemon=True)

    def __enter__(self) -> JobHeartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                with self.sm.begin() as session:
                    if not jobs.touch_job(session=session, job_id=self.job_id, worker_id=self.owner):
                        return  # the job ended or is no longer ours: nothing to keep alive
            except OperationalError:
                log.warning("job %s: heartbeat not written (database unavailable)", self.job_id)


def _last_progress(result: TrainResult, spec: TrainingSpec) -> dict[str, Any]:
    """Progress once the steps are done: export and evaluation (seconds, longer than training for a small BiGRU)
    still lie ahead, so under 100 % and no ETA; registration writes 100 %."""
    epochs = len(result.history)
    steps = int(result.metrics.get("steps", 0))
    return {"epoch": epochs, "total_epochs": spec.epochs, "step": steps, "total_steps": steps,
            "percent": AFTER_TRAINING_PERCENT, "eta_seconds": None}


def _flat_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Validation metrics under val_* names, run facts as they are."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if key in ("accuracy", "macro_f1", "loss"):
            out[f"val_{key}"] = value
        else:
            out[key] = value
    return out


def _load_data(settings: Settings, spec: TrainingSpec) -> JobData:
    """The job's rows. The test set is a separate dataset, or a stratified share of the training data held out
    here, so train() never sees it."""
    from worker.ml.train import stratified_split  # torch: task process only

    texts, labels = _load_records(settings, spec.dataset_id)
    test_texts: list[str] = []
    test_labels: list[str] = []
    if spec.test_dataset_id is not None:
        test_texts, test_labels = _load_records(settings, spec.test_dataset_id)
    elif spec.test_split > 0:
        index = {name: i for i, name in enumerate(sorted(set(labels)))}
        keep, held_out = stratified_split([index[y] for y in labels], spec.test_split, spec.seed + 1)
        test_texts, test_labels = [texts[i] for i in held_out], [labels[i] for i in held_out]
        texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
    return JobData(texts=texts, labels=labels, test_texts=test_texts, test_labels=test_labels,
                   label_names=sorted(set(labels)))


def _evaluate_exported(model_dir: Path, label_names: list[str], validation: tuple[list[str], list[int]],
                       test: tuple[list[str], list[str]], *, val_proba: np.ndarray | None = None) -> dict[str, Any]:
    """Evaluate the ONNX model in `model_dir` (what will be served) on validation and, if any, test data.

    `val_proba`: the validation probabilities to report instead, where the served model has seen the validation
    rows (its TF-IDF member refit on them): scored by the served model they would overstate it.
    """
    predictor = OnnxPredictor(model_dir)
    val_texts, val_y = validation
    refit = val_proba is not None
    validation_scores = evaluate(val_proba if refit else predictor.predict_proba(val_texts), val_y, label_names,
                                 val_texts)
    validation_scores["scored"] = "before_refit" if refit else "served_model"
    evaluation = {"validation": validation_scores, "test": None}
    index = {name: i for i, name in enumerate(label_names)}
    test_texts, test_labels = test
    known = [i for i, y in enumerate(test_labels) if y in index]
    if known:
        kept = [test_texts[i] for i in known]
        evaluation["test"] = evaluate(predictor.predict_proba(kept), [index[test_labels[i]] for i in known],
                                      label_names, kept)
        evaluation["test"]["scored"] = "served_model"
        # Test rows whose label the model never saw cannot be scored; say how many were left out.
        evaluation["test"]["unknown_label_examples"] = len(test_labels) - len(known)
    return evaluation


def _cancel_requested(sm: sessionmaker[Session], job_id: uuid.UUID) -> bool:
    """True once the user asked to cancel (train() calls this about once a second)."""
    try:
        with sm() as session:
            return jobs.get_status(session=session, job_id=job_id) == JobStatus.cancelling
    except OperationalError:
        return False  # a database blip is not a cancel


def _load_records(settings: Settings, dataset_id: uuid.UUID) -> tuple[list[str], list[str]]:
    path = records_path(settings, dataset_id)
    if not path.exists():
        raise JobFailed(ErrorCode.dataset_missing, f"Dataset {dataset_id} is gone; upload it again.")
    return ingest.read_records(path)


def _summary(evaluation: dict[str, Any] | None, prefix: str) -> dict[str, float]:
    if evaluation is None:
        return {}
    return {f"{prefix}_accuracy": evaluation["accuracy"], f"{prefix}_macro_f1": evaluation["macro_f1"]}


def _describe(device, torch) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return "cpu"

