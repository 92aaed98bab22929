"""The schemas: the training spec and the API's request/response bodies (pydantic v2).

TrainingSpec is the single source of truth: the API validates with it, the worker re-validates the stored
spec with it, and the OpenAPI document embeds its JSON schema.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator


# Names are shown and stored as text: no control characters (PostgreSQL cannot even store U+0000).
NAME_PATTERN = r"^[^\x00-\x1f\x7f]+$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TokenizerSpec(_Strict):
    lowercase: bool = Field(True, description="Lower-case (and NFKC-normalise) text before splitting.")
    vocab_size: int = Field(30_000, ge=100, le=500_000, description="Largest vocabulary kept (most frequent words).")
    min_frequency: int = Field(1, ge=1, le=1_000, description="Words seen fewer times become the unknown token.")
    max_length: int = Field(256, ge=8, le=4_096, description="Tokens kept per text; longer texts are truncated.")


class ModelSpec(_Strict):
    name: Literal["textcnn", "fasttext"] = Field(
        "textcnn", description="textcnn: Kim (2014) convolutions; fasttext: bag of words + hashed bigrams.")
    embedding_dim: int = Field(128, ge=8, le=1_024, description="Size of the word embeddings.")
    filter_sizes: tuple[int, ...] = Field(
        (3, 4, 5), min_length=1, max_length=8, description="textcnn: convolution widths in tokens.")
    num_filters: int = Field(100, ge=1, le=1_024, description="textcnn: feature maps per width.")
    ngram_buckets: int = Field(
        20_000, ge=1_000, le=10_000_000, description="fasttext: hash buckets for word bigrams.")
    dropout: float = Field(0.5, ge=0.0, lt=1.0, description="Dropout before the output layer.")
    batch_norm: bool = Field(False, description="Batch normalisation on the pooled features.")

    @model_validator(mode="after")
    def _check_filters(self) -> ModelSpec:
        if any(not 1 <= w <= 16 for w in self.filter_sizes):
            raise ValueError("filter_sizes must each be between 1 and 16")
        return self


OptimizerName = Literal["sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad", "adadelta"]

# Learning rates that work out of the box for each method on these models (Adadelta's 1.0 is Zeiler's).
DEFAULT_LR: dict[str, float] = {
    "sgd": 0.1, "momentum": 0.05, "nesterov": 0.05, "adam": 1e-3, "adamw": 1e-3,
    "rmsprop": 1e-3, "adagrad": 0.05, "adadelta": 1.0,
}


class OptimizerSpec(_Strict):
    name: OptimizerName = Field("adam", description="Optimization method.")
    lr: float | None = Field(None, gt=0.0, le=10.0, description="Peak learning rate; null picks the method's default.")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="momentum, nesterov and rmsprop only.")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="L2 penalty (decoupled for adamw).")
    betas: tuple[float, float] = Field((0.9, 0.999), description="adam and adamw: moment decay rates.")
    eps: float = Field(1e-8, gt=0.0, le=1.0, description="Numerical stability term.")

    @model_validator(mode="before")
    @classmethod
    def _default_lr(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("lr") is None:
            data = {**data, "lr": DEFAULT_LR.get(data.get("name", "adam"), 1e-3)}
        return data

    @model_validator(mode="after")
    def _check(self) -> OptimizerSpec:
        if self.name in ("momentum", "nesterov") and self.momentum <= 0.0:
            raise ValueError(f"{self.name} needs momentum > 0")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError("betas must each be in [0, 1)")
        return self


class SchedulerSpec(_Strict):
    name: Literal["constant", "step", "cosine", "onecycle", "linear_warmup", "plateau"] = Field(
        "linear_warmup", description="Learning-rate schedule.")
    warmup_ratio: float = Field(0.1, ge=0.0, le=0.5, description="cosine, linear_warmup: share of steps warming up.")
    step_size: int = Field(3, ge=1, le=1_000, description="step: epochs between decays.")
    gamma: float = Field(0.5, gt=0.0, lt=1.0, description="step: decay factor.")
    patience: int = Field(1, ge=0, le=100, description="plateau: epochs without improvement before decaying.")
    factor: float = Field(0.5, gt=0.0, lt=1.0, description="plateau: decay factor.")
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0, description="cosine, linear_warmup: final lr / peak lr.")


class TrainingSpec(_Strict):
    """What to train. `{"dataset_id": ...}` alone is a complete, good spec."""

    dataset_id: UUID = Field(description="The uploaded dataset to train on.")
    name: str | None = Field(None, min_length=1, max_length=200, pattern=NAME_PATTERN,
                             description="A name for the resulting model.")
    model: ModelSpec = Field(default_factory=ModelSpec)
    tokenizer: TokenizerSpec = Field(default_factory=TokenizerSpec)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    epochs: int = Field(10, ge=1, le=200, description="Passes over the training set.")
    batch_size: int = Field(64, ge=1, le=4_096, description="Examples per optimization step.")
    grad_clip: float | None = Field(5.0, gt=0.0, le=1_000.0, description="Clip the gradient norm; null disables.")
    validation_split: float = Field(0.1, gt=0.0, le=0.5, description="Share of the data held out for validation.")
    test_split: float = Field(0.0, ge=0.0, le=0.5,
                              description="Share of the dataset held out (stratified) as a test set; 0 for none.")
    test_dataset_id: UUID | None = Field(None, description="A separately uploaded dataset to evaluate on.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seeds the split, initialisation and shuffling.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto uses CUDA when present.")
    max_steps: int | None = Field(None, ge=1, le=10_000_000, description="Stop after this many steps (for smoke tests).")

    @model_validator(mode="after")
    def _one_test_set(self) -> TrainingSpec:
        if self.test_split > 0 and self.test_dataset_id is not None:
            raise ValueError("give test_split or test_dataset_id, not both")
        return self


# ---------------------------------------------------------------------------------------------------------
# response bodies


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    cancelling = "cancelling"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL_STATUSES = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled})


class _Read(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class DatasetRead(_Read):
    id: UUID
    name: str
    format: str
    row_count: int
    labels: dict[str, int] = Field(description="Examples per label.")
    sha256: str = Field(description="Hash of the normalised records (text and label).")
    warnings: list[dict[str, Any]]
    created_at: datetime


class Progress(BaseModel):
    stage: str = "queued"
    epoch: int = 0
    total_epochs: int = 0
    step: int = 0
    total_steps: int = 0
    percent: float = 0.0
    eta_seconds: float | None = None


class EpochRecord(BaseModel):
    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    val_macro_f1: float
    lr: float
    seconds: float


class JobError(BaseModel):
    code: str
    message: str


class JobRead(_Read):
    id: UUID
    dataset_id: UUID | None
    status: JobStatus
    spec: dict[str, Any]
    progress: Progress
    history: list[EpochRecord]
    metrics: dict[str, Any] | None
    device: str | None
    model_id: UUID | None
    error: JobError | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class ModelRead(_Read):
    id: UUID
    name: str
    job_id: UUID
    dataset_id: UUID | None
    labels: list[str]
    spec: dict[str, Any]
    metrics: dict[str, Any]
    artifacts: dict[str, int] = Field(description="Artifact file name -> size in bytes.")
    aliases: list[str] = []
    created_at: datetime
    providers: list[str] | None = Field(None, description="onnxruntime providers in use in this API process.")


# ---------------------------------------------------------------------------------------------------------
# request bodies


class Record(_Strict):
    text: str
    label: Annotated[StrictStr, Field(min_length=1)] | StrictInt


class DatasetCreate(_Strict):
    name: str = Field(min_length=1, max_length=200, pattern=NAME_PATTERN)
    records: list[Record] = Field(min_length=1)


class PredictRequest(_Strict):
    texts: list[str] = Field(min_length=1, description="Texts to classify.")
    top_k: int = Field(1, ge=1, le=100, description="Labels returned per text, best first.")


class LabelScore(BaseModel):
    label: str
    score: float


class Prediction(BaseModel):
    label: str
    score: float
    top_k: list[LabelScore]


class PredictResponse(BaseModel):
    model_id: UUID
    predictions: list[Prediction]


class ClassMetrics(BaseModel):
    label: str
    precision: float
    recall: float
    f1: float
    support: int


class Misclassified(BaseModel):
    text: str
    label: str
    predicted: str
    score: float
    label_score: float


class SplitEvaluation(BaseModel):
    examples: int
    accuracy: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    micro_precision: float
    micro_recall: float
    micro_f1: float
    weighted_precision: float
    weighted_recall: float
    weighted_f1: float
    per_class: list[ClassMetrics]
    confusion_matrix: dict[str, Any] = Field(description="labels, and matrix[true][predicted] counts.")
    log_loss: float
    ece: float = Field(description="Expected calibration error (15 equal-width confidence bins).")
    misclassified: list[Misclassified] = Field(description="The most confident mistakes first.")
    unknown_label_examples: int | None = Field(None, description="Test rows whose label the model never saw.")


class EvaluationRead(BaseModel):
    model_id: UUID
    validation: SplitEvaluation | None
    test: SplitEvaluation | None


class AliasSet(_Strict):
    model_id: UUID


class AliasRead(_Read):
    name: str
    model_id: UUID
    updated_at: datetime


class Page(BaseModel):
    items: list[Any]
    total: int
    limit: int
    offset: int
