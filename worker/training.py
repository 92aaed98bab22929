"""One training job from claim to registered model: the orchestration around worker.ml."""

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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from core import ingest
from core.config import Settings
from core.db import jobs, registry, sweeps
from core.db.datasets import get_dataset, records_path
from core.db.tables import Model, Sweep
from core.dispatch import start_next_children
from core.errors import ErrorCode
from core.ml.predictor import OnnxPredictor
from core.spec import JobStatus, TrainingSpec
from core.sweeps import Pruning, prune_decision
from worker.ml.checkpoint import CheckpointStore, fingerprint
from worker.ml.evaluation import evaluate

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


def run_training(*, sessionmaker: sessionmaker[Session], settings: Settings, job_id: uuid.UUID,
                 worker_id: str = "worker", send: Callable[[uuid.UUID, int | None], None] | None = None) -> str:
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
        _next_children(sessionmaker, sweep_id, send)  # e.g. a child cancelled before it started freed a slot
        return "skipped"
    log.info("job %s: claimed", job_id)
    checkpoint = CheckpointStore(settings.jobs_dir / str(job_id),
                                 fingerprint(spec.model_dump(mode="json"), dataset_sha256))
    try:
        with JobHeartbeat(sessionmaker, job_id, owner, interval_s=settings.job_heartbeat_timeout / 5):
            status = _run(sessionmaker, settings, job_id, owner, spec, dataset_sha256, checkpoint, pruner)
    except OperationalError:
        raise  # infrastructure: the job is re-queued, and the next attempt resumes from the last checkpoint
    except BaseException:
        checkpoint.clear()
        raise
    # Every other way out is final (succeeded, failed, cancelled, pruned): the checkpoint is of no more use.
    # A SIGKILL never gets here, which is the point: the next attempt resumes from it.
    checkpoint.clear()
    _next_children(sessionmaker, sweep_id, send)
    return status


def _next_children(sm: sessionmaker[Session], sweep_id: uuid.UUID | None,
                   send: Callable[[uuid.UUID, int | None], None] | None) -> None:
    """This child's slot is free: start the sweep's next waiting children. Best effort: the reaper repeats it."""
    if sweep_id is None or send is None:
        return
    start_next_children(sessionmaker=sm, send=send, sweep_id=sweep_id)


class SweepPruner:
    """Successive halving for one sweep child: after each milestone epoch, compare the child with its siblings
    (core.sweeps.prune_decision) and, if it is clearly behind, ask training to stop."""

    def __init__(self, sm: sessionmaker[Session], job_id: uuid.UUID, sweep_id: uuid.UUID, metric: str,
                 pruning: Pruning, total_epochs: int) -> None:
        self.sm, self.job_id, self.sweep_id, self.metric = sm, job_id, sweep_id, metric
        self.pruning, self.total_epochs = pruning, total_epochs
        self.checked_epochs = 0
        self.reason: str | None = None

    @classmethod
    def for_job(cls, session: Session, job, spec: TrainingSpec, sm: sessionmaker[Session]) -> SweepPruner | None:
        sweep = session.get(Sweep, job.sweep_id) if job.sweep_id is not None else None
        if sweep is None or not sweep.request.get("pruning"):
            return None
        return cls(sm, job.id, sweep.id, sweep.metric, Pruning.model_validate(sweep.request["pruning"]), spec.epochs)

    def after_epoch(self, history: list[dict[str, Any]]) -> None:
        epoch = len(history)
        # Each epoch is judged once; the last epoch never (stopping a finished run saves nothing).
        if epoch <= self.checked_epochs or epoch >= self.total_epochs or self.reason is not None:
            return
        self.checked_epochs = epoch
        if epoch not in self.pruning.milestones:
            return
        try:
            with self.sm() as session:
                peers = sweeps.sibling_histories(session=session, sweep_id=self.sweep_id, job_id=self.job_id)
        except OperationalError:
            return  # a database blip: keep training rather than decide on nothing
        self.reason = prune_decision(history, peers, epoch=epoch, metric=self.metric, pruning=self.pruning)
        if self.reason:
            log.info("job %s: %s", self.job_id, self.reason)


def _run(sessionmaker: sessionmaker[Session], settings: Settings, job_id: uuid.UUID, owner: str,
         spec: TrainingSpec, dataset_sha256: str | None, checkpoint: CheckpointStore,
         pruner: SweepPruner | None = None) -> str:
    try:
        with memory_cap(settings.training_memory_limit_mb * MIB if _trains_on_cpu(spec) else None):
            model_id, metrics = _train_and_register(sessionmaker, settings, job_id, owner, spec, dataset_sha256,
                                                    checkpoint, pruner)
    except JobPruned as exc:
        with sessionmaker.begin() as session:
            jobs.finish_job(session=session, job_id=job_id, status=JobStatus.pruned, error_code=ErrorCode.pruned,
                            error_message=exc.reason, progress={"stage": "pruned"}, worker_id=owner)
        return JobStatus.pruned
    except JobCancelled:
        log.info("job %s cancelled", job_id)
        with sessionmaker.begin() as session:
            jobs.finish_job(session=session, job_id=job_id, status=JobStatus.cancelled,
                            progress={"stage": "cancelled"}, worker_id=owner)
        return JobStatus.cancelled
    except JobFailed as exc:
        log.warning("job %s failed: %s: %s", job_id, exc.code, exc.message)
        _fail(sessionmaker, job_id, owner, exc.code, exc.message)
        return JobStatus.failed
    except SoftTimeLimitExceeded:
        _fail(sessionmaker, job_id, owner, ErrorCode.time_limit_exceeded,
              f"The job ran past its time limit ({spec.max_runtime_seconds or settings.job_max_runtime_seconds} s; "
              "max_runtime_seconds in the spec, capped by JOB_MAX_RUNTIME_SECONDS).")
        return JobStatus.failed
    except OperationalError:
        raise  # infrastructure: Celery retries the task
    except Exception as exc:
        interrupt = interrupt_behind(exc)
        if interrupt is not None:
            # The process was told to stop (Celery terminates the task when the broker connection is lost) while
            # a library was mid-write, and the library's cleanup raised its own error over the exit: torch.save's
            # zip writer did ("unexpected pos"). Exit as told: the job is re-queued, not failed.
            raise interrupt from None
        if out_of_memory(exc):
            # Past the cap the allocation failed here, where a kernel OOM kill would have been re-queued to die
            # again; the cap is lifted again by now, so this write has memory to work with.
            log.warning("job %s ran out of memory: %s", job_id, exc)
            _fail(sessionmaker, job_id, owner, ErrorCode.out_of_memory,
                  f"Training ran out of memory: a job may use {settings.training_memory_limit_mb:,} MiB above its "
                  "process's own (TRAINING_MEMORY_LIMIT_MB). Lower batch_size, tokenizer.max_length, "
                  "model.embedding_dim or the model's width.")
            return JobStatus.failed
        log.exception("job %s: unexpected error", job_id)
        _fail(sessionmaker, job_id, owner, ErrorCode.training_error,
              f"Training failed unexpectedly ({type(exc).__name__}).")
        return JobStatus.failed
    log.info("job %s succeeded: model %s, val accuracy %.4f", job_id, model_id, metrics.get("val_accuracy", 0.0))
    return JobStatus.succeeded


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
    """The SystemExit or KeyboardInterrupt that `exc` was raised while handling, if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if not isinstance(current, Exception):
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


def _fail(sm: sessionmaker[Session], job_id: uuid.UUID, owner: str, code: ErrorCode, message: str) -> None:
    with sm.begin() as session:
        jobs.finish_job(session=session, job_id=job_id, status=JobStatus.failed, error_code=code,
                        error_message=message, progress={"stage": "failed"}, worker_id=owner)


def _train_and_register(sm: sessionmaker[Session], settings: Settings, job_id: uuid.UUID, owner: str,
                        spec: TrainingSpec,
                        dataset_sha256: str | None,
                        checkpoint: CheckpointStore,
                        pruner: SweepPruner | None = None) -> tuple[uuid.UUID, dict[str, Any]]:
    # torch is imported here, inside the task process, never in the Celery parent (CUDA and fork don't mix).
    import torch

    # Each of the worker's WORKER_CONCURRENCY processes gets its share of the cores: oversubscribed threads
    # made epochs several times slower on our 2-core machine.
    torch.set_num_threads(settings.training_threads())

    from worker.ml.export import ParityError, check_parity, export_onnx
    from worker.ml.train import (
        CudaUnavailable,
        SpecDataMismatch,
        TrainingCancelled,
        TrainingDiverged,
        resolve_device,
        stratified_split,
        train,
    )

    # data
    texts, labels, test_texts, test_labels = _load_data(settings, spec)
    label_names = sorted(set(labels))
    index = {name: i for i, name in enumerate(label_names)}
    try:
        device = resolve_device(spec.device)
    except CudaUnavailable:
        raise JobFailed(ErrorCode.cuda_unavailable, "The spec asks for CUDA but this worker has no usable GPU.") \
            from None
    device_name = _describe(device, torch)
    _write_progress(sm, job_id, owner, {"stage": "training", "total_epochs": spec.epochs}, device=device_name)

    # train
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
        _write_progress(sm, job_id, owner, shown, history=history)
        if new_epoch and pruner is not None:
            pruner.after_epoch(history)  # after the write: siblings judge this child by the stored history

    def should_stop() -> bool:
        return (pruner is not None and pruner.reason is not None) or _cancel_requested(sm, job_id)

    try:
        result = train(spec, texts, labels, label_names=label_names, device=device, on_progress=on_progress,
                       should_stop=should_stop, checkpoint=checkpoint)
    except TrainingDiverged as exc:
        raise JobFailed(ErrorCode.training_diverged,
                        f"Training diverged: {exc}; lower the learning rate or clip gradients.") from None
    except TrainingCancelled:
        if pruner is not None and pruner.reason is not None:
            raise JobPruned(pruner.reason) from None
        raise JobCancelled() from None
    except SpecDataMismatch as exc:
        raise JobFailed(ErrorCode.spec_data_mismatch, str(exc)) from None

    if result.metrics.get("resumed_from_epoch") is not None:
        log.info("job %s: resumed from the checkpoint of epoch %s", job_id, result.metrics["resumed_from_epoch"])

    # export: into a private folder first, renamed into place only once complete and checked. The folder is
    # named for the job, so an attempt killed mid-export leaves debris the next attempt sweeps away.
    _write_progress(sm, job_id, owner, {**_last_progress(result, spec), "stage": "exporting"})
    model_id = uuid.uuid4()
    final_dir = settings.models_dir / str(model_id)
    work_dir = settings.models_dir / f".tmp-job-{job_id}"
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        export_onnx(result.model, work_dir / "model.onnx", vocab_size=result.encoder.vocab_size)
        result.encoder.save(work_dir / "tokenizer.json")
        (work_dir / "labels.json").write_text(json.dumps(label_names, ensure_ascii=False))
        (work_dir / "spec.json").write_text(json.dumps(spec.model_dump(mode="json"), indent=2))
        val_idx = stratified_split([index[y] for y in labels], spec.validation_split, spec.seed)[1]
        val_texts, val_y = [texts[i] for i in val_idx], [index[labels[i]] for i in val_idx]
        try:
            parity = check_parity(result.model, work_dir / "model.onnx", result.encoder, val_texts[:PARITY_SAMPLE])
        except ParityError as exc:
            raise JobFailed(ErrorCode.onnx_parity_failed, str(exc)) from None  # the message says what disagreed

        # evaluate the exported model, i.e. exactly what will be served
        _write_progress(sm, job_id, owner, {**_last_progress(result, spec), "stage": "evaluating"})
        evaluation = _evaluate_exported(work_dir, label_names, (val_texts, val_y), (test_texts, test_labels))
        metrics = {**_flat_metrics(result.metrics), "onnx_parity": parity, "device": device_name,
                   "dataset_sha256": dataset_sha256, "seed": spec.seed,
                   **_summary(evaluation["test"], "test")}
        (work_dir / "evaluation.json").write_text(json.dumps(evaluation, indent=2))
        (work_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        os.replace(work_dir, final_dir)
    except BaseException:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise

    if _cancel_requested(sm, job_id):  # cancelled during export: register nothing
        shutil.rmtree(final_dir, ignore_errors=True)
        raise JobCancelled()

    # register: model row and job status in one transaction
    artifacts = {p.name: p.stat().st_size for p in sorted(final_dir.iterdir())}
    name = spec.name or f"model-{str(model_id)[:8]}"
    try:
        for attempt in range(REGISTER_ATTEMPTS):
            try:
                with sm.begin() as session:
                    session.add(Model(id=model_id, name=name, version=registry.next_version(session=session, name=name),
                                      job_id=job_id, dataset_id=spec.dataset_id, labels=label_names,
                                      spec=spec.model_dump(mode="json"), metrics=metrics, artifacts=artifacts,
                                      evaluation=evaluation, abstain_threshold=spec.abstain_threshold))
                    session.flush()
                    done = jobs.finish_job(session=session, job_id=job_id, status=JobStatus.succeeded,
                                           metrics=metrics, model_id=model_id, worker_id=owner,
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
        shutil.rmtree(final_dir, ignore_errors=True)
        raise
    return model_id, metrics


def _write_progress(sm: sessionmaker[Session], job_id: uuid.UUID, owner: str, progress: dict[str, Any],
                    history: list[dict[str, Any]] | None = None, device: str | None = None) -> None:
    try:
        with sm.begin() as session:
            jobs.update_progress(session=session, job_id=job_id, progress=progress, history=history, device=device,
                                 worker_id=owner)
    except OperationalError:
        # A database blip must not kill hours of training; the next write will carry the news.
        log.warning("job %s: could not write progress (database unavailable)", job_id)


def _last_progress(result, spec: TrainingSpec) -> dict[str, Any]:
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


def _load_data(settings: Settings, spec: TrainingSpec) -> tuple[list[str], list[str], list[str], list[str]]:
    """(texts, labels, test_texts, test_labels): the test set is a separate dataset, or a stratified share of
    the training data held out here, so train() never sees it."""
    from worker.ml.train import stratified_split  # torch: task process only

    texts, labels = _load_records(settings, spec.dataset_id)
    if spec.test_dataset_id is not None:
        return (texts, labels, *_load_records(settings, spec.test_dataset_id))
    if spec.test_split > 0:
        index = {name: i for i, name in enumerate(sorted(set(labels)))}
        keep, held_out = stratified_split([index[y] for y in labels], spec.test_split, spec.seed + 1)
        return ([texts[i] for i in keep], [labels[i] for i in keep],
                [texts[i] for i in held_out], [labels[i] for i in held_out])
    return texts, labels, [], []


def _evaluate_exported(model_dir: Path, label_names: list[str], validation: tuple[list[str], list[int]],
                       test: tuple[list[str], list[str]]) -> dict[str, Any]:
    """Evaluate the ONNX model in `model_dir` (what will be served) on validation and, if any, test data."""
    predictor = OnnxPredictor(model_dir)
    val_texts, val_y = validation
    evaluation = {"validation": evaluate(predictor.predict_proba(val_texts), val_y, label_names, val_texts),
                  "test": None}
    index = {name: i for i, name in enumerate(label_names)}
    test_texts, test_labels = test
    known = [i for i, y in enumerate(test_labels) if y in index]
    if known:
        kept = [test_texts[i] for i in known]
        evaluation["test"] = evaluate(predictor.predict_proba(kept), [index[test_labels[i]] for i in known],
                                      label_names, kept)
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

