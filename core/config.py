"""Settings from the environment: the only module that reads os.environ."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Seconds between the soft time limit (the job fails cleanly) and the hard one (the process is killed).
HARD_LIMIT_GRACE_S = 60


class Settings(BaseSettings):
    """Every knob of the service. Defaults give the embedded mode: SQLite, a filesystem broker, local artifacts."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    data_dir: Path = Field(
        Path("textclf-data"),
        validation_alias="TEXTCLF_DATA_DIR",
        description="Root of everything the embedded default keeps on disk.",
    )
    database_url: str = Field(
        "", validation_alias="DATABASE_URL",
        description="SQLAlchemy URL; empty means SQLite at DATA_DIR/textclf.db.",
    )
    celery_broker_url: str = Field(
        "", validation_alias="CELERY_BROKER_URL",
        description="Celery broker; empty means kombu's filesystem transport under DATA_DIR/broker.",
    )
    artifact_dir: Path | None = Field(
        None, validation_alias="ARTIFACT_DIR",
        description="Where datasets, models and checkpoints are written; default DATA_DIR/artifacts.",
    )
    base_models_dir: Path | None = Field(
        None, validation_alias="BASE_MODELS_DIR",
        description="Where installed base models (pretrained encoders to fine-tune) live, one folder each; "
                    "default DATA_DIR/base-models. The API writes it, the workers read it.",
    )
    # Redis re-delivers a message not acked within this many seconds; it must outlast the longest job.
    broker_visibility_timeout: int = Field(
        48 * 3600, ge=60, validation_alias="BROKER_VISIBILITY_TIMEOUT",
        description="Seconds before Redis re-delivers an unacknowledged task.",
    )

    job_max_runtime_seconds: int = Field(
        24 * 3600, ge=60, validation_alias="JOB_MAX_RUNTIME_SECONDS",
        description="Ceiling on any job's run time (the spec's max_runtime_seconds may only lower it).")
    worker_seen_within: int = Field(
        90, ge=10, validation_alias="WORKER_SEEN_WITHIN",
        description="/readyz needs a training worker heartbeat (sent every 15 s) this recent, in seconds.")
    job_heartbeat_timeout: int = Field(
        300, ge=10, validation_alias="JOB_HEARTBEAT_TIMEOUT",
        description="Seconds without a heartbeat before a running job counts as lost and is re-queued.")
    reaper_interval: float = Field(30.0, gt=0, le=3600, validation_alias="REAPER_INTERVAL",
                                   description="Seconds between the reaper's passes over running jobs.")
    job_max_attempts: int = Field(3, ge=1, le=100, validation_alias="JOB_MAX_ATTEMPTS",
                                  description="Times a lost job is started before it fails with worker_lost.")
    max_upload_bytes: int = Field(
        100 * 1024 * 1024, ge=1024, validation_alias="MAX_UPLOAD_BYTES",
        description="Largest request body accepted (413 above it).",
    )
    # bert-base's weights are about 440 MB; 2 GiB leaves room for large ones (bert-large: 1.3 GB).
    base_model_max_upload_mb: int = Field(
        2048, ge=1, validation_alias="BASE_MODEL_MAX_UPLOAD_MB",
        description="Largest base model upload (POST /v1/base-models), in MiB, zipped and unpacked alike (413 above "
                    "it); MAX_UPLOAD_BYTES does not apply to it.")
    max_dataset_rows: int = Field(2_000_000, ge=10, validation_alias="MAX_DATASET_ROWS",
                                  description="Most rows one dataset may have.")
    max_text_chars: int = Field(100_000, ge=10, validation_alias="MAX_TEXT_CHARS",
                                description="Longest text, in characters, in a dataset or a prediction request.")
    max_labels: int = Field(1_000, ge=2, validation_alias="MAX_LABELS",
                            description="Most distinct labels one dataset may have.")
    # Every prediction, model card and dataset listing repeats the labels: 64 KiB is 1,000 labels of 65 bytes.
    max_labels_total_bytes: int = Field(
        64 * 1024, ge=1024, validation_alias="MAX_LABELS_TOTAL_BYTES",
        description="Most bytes (UTF-8) a dataset's distinct labels may take together.")
    max_predict_texts: int = Field(1_000, ge=1, validation_alias="MAX_PREDICT_TEXTS",
                                   description="Most texts in one prediction request.")
    max_epochs: int = Field(200, ge=1, le=200, validation_alias="MAX_EPOCHS",
                            description="Most epochs one job may ask for (422 above it).")
    # A float32 parameter is 4 bytes: 100 M parameters is a 400 MB model, far above anything the presets make.
    max_model_params: int = Field(100_000_000, ge=10_000, validation_alias="MAX_MODEL_PARAMS",
                                  description="Largest model, in parameters estimated from the spec, a job may train.")
    # Counted above the training process's own footprint (torch and the training code loaded). The largest spec
    # the schema allows would take far more than most machines have; a kernel OOM kill would be re-queued.
    training_memory_limit_mb: int = Field(
        4096, ge=1, validation_alias="TRAINING_MEMORY_LIMIT_MB",
        description="Memory, in MiB, one training job may use above its process's own: a spec estimated over it is "
                    "refused (422), and a job that reaches it fails with out_of_memory instead of being killed.")
    max_sweep_children: int = Field(64, ge=1, le=10_000, validation_alias="MAX_SWEEP_CHILDREN",
                                    description="Most children (jobs) one sweep may have (422 above it).")
    worker_concurrency: int = Field(
        1, ge=1, le=64, validation_alias="WORKER_CONCURRENCY",
        description="Jobs one `textclf worker` (and `textclf serve`) trains at once, each in its own process; "
                    "sweeps use them for children in parallel. Keep 1 per GPU.")
    torch_threads: int = Field(
        0, ge=0, le=256, validation_alias="TORCH_THREADS",
        description="CPU threads per training process; 0 means cores / WORKER_CONCURRENCY (two processes with a "
                    "thread per core each would fight over the cores).")
    auth_required: bool = Field(
        True, validation_alias="AUTH_REQUIRED",
        description="Every endpoint but the health probes, the documents and the dashboard shell needs an API key; "
                    "false serves everyone (printed loudly at start).")
    auth_cache_seconds: float = Field(
        5.0, ge=0.0, le=300.0, validation_alias="AUTH_CACHE_SECONDS",
        description="Seconds each API process trusts a key it verified (no database read per request); a key "
                    "revoked elsewhere works in a process for at most this long. 0 checks every request.")
    cors_origins: str = Field(
        "", validation_alias="CORS_ORIGINS",
        description="Comma-separated browser origins (e.g. https://app.example.com) allowed to call /v1 from their "
                    "pages; empty (the default) sends no CORS headers, so browsers allow same-origin calls only.")
    rate_limit_enabled: bool = Field(True, validation_alias="RATE_LIMIT_ENABLED",
                                     description="Per-key rate limits (RATE_LIMIT_*); false turns them off.")
    rate_limit_storage_url: str = Field(
        "memory://", validation_alias="RATE_LIMIT_STORAGE_URL",
        description="Where rate-limit counters live: memory:// counts per API process; redis://... shares them.")
    rate_limit_default: str = Field("1200 per minute", validation_alias="RATE_LIMIT_DEFAULT",
                                    description="Per key: reads and admin requests (one shared budget).")
    rate_limit_predict: str = Field("6000 per minute", validation_alias="RATE_LIMIT_PREDICT",
                                    description="Per key: prediction requests.")
    rate_limit_train: str = Field("60 per minute", validation_alias="RATE_LIMIT_TRAIN",
                                  description="Per key: uploads, deletes, new jobs and cancels.")
    model_cache_size: int = Field(
        8, ge=1, validation_alias="MODEL_CACHE_SIZE",
        description="onnxruntime sessions kept per API process (least recently used evicted).",
    )
    predict_batching: bool = Field(
        True, validation_alias="PREDICT_BATCHING",
        description="Merge concurrent predict requests for one model in one API process into one onnxruntime call.")
    predict_max_batch_texts: int = Field(
        256, ge=1, validation_alias="PREDICT_MAX_BATCH_TEXTS",
        description="Most texts in one merged call (a larger request still runs, alone).")
    predict_max_wait_ms: float = Field(
        2.0, ge=0.0, le=1_000.0, validation_alias="PREDICT_MAX_WAIT_MS",
        description="Longest a batch waits for requests already inside the route; it never waits when none are.")
    predict_max_queue: int = Field(
        1_024, ge=1, validation_alias="PREDICT_MAX_QUEUE",
        description="Predict requests queued per model per API process before new ones get a 503.")
    predict_timeout_seconds: float = Field(
        30.0, gt=0.0, validation_alias="PREDICT_TIMEOUT_SECONDS",
        description="A predict request still queued after this long gets a 503.")
    ort_intra_op_threads: int = Field(
        0, ge=0, validation_alias="ORT_INTRA_OP_THREADS",
        description="onnxruntime threads per session; 0 means cores / API workers.",
    )
    api_workers: int = Field(2, ge=1, validation_alias="API_WORKERS",
                             description="API worker processes (Granian) started by `textclf serve` and `textclf api`.")
    # Granian's default for WSGI is backpressure / 2 = 256 threads per process: at 64 connections that many
    # threads fight over the GIL and a predict costs about a third more CPU (bench/README.md).
    api_threads: int = Field(16, ge=1, le=512, validation_alias="API_THREADS",
                             description="Threads per API worker process that run requests (Granian's blocking "
                             "threads); concurrent predicts in one process are batched together up to this many.")
    model_refresh_seconds: float = Field(
        1.0, ge=0.0, le=3600, validation_alias="MODEL_REFRESH_SECONDS",
        description="How long an API process trusts what it read about an alias or a model (target, abstain "
                    "threshold) before reading the database again.")
    log_level: str = Field("INFO", validation_alias="LOG_LEVEL", description="Python logging level.")
    log_format: Literal["text", "json"] = Field(
        "text", validation_alias="LOG_FORMAT",
        description="text: one readable line per record; json: one JSON object per line with request and job ids.")
    metrics_dir: Path | None = Field(
        None, validation_alias="PROMETHEUS_MULTIPROC_DIR",
        description="Where the API's worker processes share Prometheus counters; default DATA_DIR/prometheus. "
                    "Emptied when the API starts.")

    @field_validator("rate_limit_default", "rate_limit_predict", "rate_limit_train")
    @classmethod
    def _parse_rate_limit(cls, value: str) -> str:
        # Checked here so a typo stops the service at start instead of failing every request.
        from limits import parse_many

        try:
            parse_many(value)
        except ValueError:
            raise ValueError(f"not a rate limit: {value!r} (e.g. '60 per minute' or '10/second;1000/day')") from None
        return value

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        self.data_dir = self.data_dir.expanduser().absolute()
        if self.artifact_dir is None:
            self.artifact_dir = self.data_dir / "artifacts"
        self.artifact_dir = self.artifact_dir.expanduser().absolute()
        self.base_models_dir = (self.base_models_dir or self.data_dir / "base-models").expanduser().absolute()
        self.metrics_dir = (self.metrics_dir or self.data_dir / "prometheus").expanduser().absolute()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'textclf.db'}"
        if not self.celery_broker_url:
            self.celery_broker_url = "filesystem://"
        # Redis re-delivers a message still unacknowledged after visibility_timeout: a job that may legally run
        # longer would get a second copy (celery#5935).
        if self.broker_visibility_timeout <= self.job_max_runtime_seconds + HARD_LIMIT_GRACE_S:
            raise ValueError("BROKER_VISIBILITY_TIMEOUT must exceed JOB_MAX_RUNTIME_SECONDS + "
                             f"{HARD_LIMIT_GRACE_S} (the hard time limit)")
        return self

    def time_limits(self, requested: int | None) -> tuple[int, int]:
        """(soft, hard) Celery time limits for a job: the spec's wish, capped by the server's ceiling."""
        soft = min(requested or self.job_max_runtime_seconds, self.job_max_runtime_seconds)
        return soft, soft + HARD_LIMIT_GRACE_S

    def training_threads(self) -> int:
        """torch's CPU threads in each training process."""
        if self.torch_threads:
            return self.torch_threads
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, cores // self.worker_concurrency)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def broker_dir(self) -> Path:
        """Folder of kombu's filesystem transport (embedded mode only)."""
        return self.data_dir / "broker"

    @property
    def datasets_dir(self) -> Path:
        return self.artifact_dir / "datasets"

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    @property
    def models_dir(self) -> Path:
        return self.artifact_dir / "models"

    @property
    def jobs_dir(self) -> Path:
        return self.artifact_dir / "jobs"


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings()
