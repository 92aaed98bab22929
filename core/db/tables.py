"""The tables: datasets, training jobs, sweeps, models, aliases, base models and API keys."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint, Uuid
from sqlalchemy.orm import Mapped, mapped_column, relationship

from core.db.base import Base, JSONType, UTCDateTime, utcnow
from core.spec import JobStatus


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(200))
    format: Mapped[str] = mapped_column(String(16))
    row_count: Mapped[int] = mapped_column(Integer)
    labels: Mapped[dict[str, int]] = mapped_column(JSONType)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    warnings: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    # Share of letters per writing system; NULL for datasets uploaded before it was recorded.
    scripts: Mapped[dict[str, float] | None] = mapped_column(JSONType, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class TrainingJob(Base):
    __tablename__ = "training_jobs"
    __table_args__ = (Index("ix_training_jobs_status_created_at", "status", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    # SET NULL: a finished job outlives its dataset; a running one blocks the delete (API checks).
    dataset_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL"), index=True)
    # The evaluation set, if the spec names one: a delete of it is refused while the job is active, too.
    test_dataset_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL"), index=True)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.queued)
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType)
    progress: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    history: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    device: Mapped[str | None] = mapped_column(String(64))
    model_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # What makes two jobs the same run (core.sweeps.spec_hash): a sweep reuses an identical succeeded job.
    spec_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    # A sweep's child: its sweep and place in it. Children are sent to the broker only as slots free up
    # (max_parallel); sent_at says which queued children already were.
    sweep_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("sweeps.id", ondelete="SET NULL"), index=True)
    sweep_index: Mapped[int | None] = mapped_column(Integer)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    @property
    def error(self) -> dict[str, str] | None:
        if self.error_code is None:
            return None
        return {"code": self.error_code, "message": self.error_message or ""}


class Sweep(Base):
    """Many jobs from one request (core/sweeps.py). Its status is derived from its children's, not stored."""

    __tablename__ = "sweeps"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str | None] = mapped_column(String(200))
    dataset_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"), index=True)
    # The request as validated (SweepCreate), for showing the grid/space back and re-running it.
    request: Mapped[dict[str, Any]] = mapped_column(JSONType)
    metric: Mapped[str] = mapped_column(String(32))
    max_parallel: Mapped[int] = mapped_column(Integer)
    # [{"params": {...}, "job_id": str, "duplicate_of": int | None, "reused": bool}] in child order.
    children: Mapped[list[dict[str, Any]]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Written by every dispatch first: the row lock makes concurrent dispatchers of one sweep take turns.
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Model(Base):
    __tablename__ = "models"
    # Versions count up per name: "trec" v1, v2, ... (registry.next_version); the pair names one model.
    __table_args__ = (UniqueConstraint("name", "version", name="uq_models_name_version"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("training_jobs.id"), unique=True)
    dataset_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    labels: Mapped[list[str]] = mapped_column(JSONType)
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType)
    artifacts: Mapped[dict[str, int]] = mapped_column(JSONType)
    # {"validation": {...}, "test": {...} | None}: see worker/ml/evaluation.py; served by GET .../evaluation.
    evaluation: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    # Predictions whose best score is under this abstain (label null): a float for every class, or
    # {label: float} for some; null never abstains. Set from the spec, changed with PATCH /v1/models/{id}.
    abstain_threshold: Mapped[float | dict[str, float] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)

    alias_rows: Mapped[list[ModelAlias]] = relationship(back_populates="model", lazy="selectin")

    @property
    def aliases(self) -> list[str]:
        return sorted(a.name for a in self.alias_rows)


class ModelAlias(Base):
    __tablename__ = "model_aliases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    model: Mapped[Model] = relationship(back_populates="alias_rows")


class PretrainedModel(Base):
    """An installed base model: a pretrained encoder (Hugging Face folder) that `encoder` jobs fine-tune. Its files
    are in core.base_models.base_model_dir(settings, name); the row says what they hold (core.base_models).
    Named PretrainedModel, not BaseModel: that is pydantic's class, which most modules import."""

    __tablename__ = "base_models"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    # Unique: jobs name the base model they fine-tune by it (spec model.base_model), and it names the folder.
    name: Mapped[str] = mapped_column(String(200), unique=True)
    architecture: Mapped[str] = mapped_column(String(32))  # config.json model_type
    sha256: Mapped[str] = mapped_column(String(64))  # of model.safetensors
    num_parameters: Mapped[int] = mapped_column(BigInteger)
    hidden_size: Mapped[int] = mapped_column(Integer)
    num_layers: Mapped[int] = mapped_column(Integer)
    vocab_size: Mapped[int] = mapped_column(Integer)
    max_length: Mapped[int] = mapped_column(Integer)  # longest input in tokens, special tokens included
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class IdempotencyKey(Base):
    """The first reply to a POST sent with an Idempotency-Key; the same caller, key and body get it again."""

    __tablename__ = "idempotency_keys"

    endpoint: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The id of the API key that sent it ("" with auth off): another key sending the same Idempotency-Key is
    # another request, never handed this one's reply.
    owner: Mapped[str] = mapped_column(String(36), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response: Mapped[dict[str, Any]] = mapped_column(JSONType)
    location: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WorkerHeartbeat(Base):
    """A training worker's last sign of life: /readyz wants at least one seen recently."""

    __tablename__ = "worker_heartbeats"

    worker_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class ApiKey(Base):
    """An API key: only the SHA-256 of its secret is stored; the secret is shown once, at creation."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(32))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
