"""Dataset data functions: a parsed upload becomes a row plus a records file on the artifact volume."""

from __future__ import annotations

import uuid
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core import ingest
from core.config import Settings
from core.db.session import begin_write
from core.db.tables import Dataset


def records_path(settings: Settings, dataset_id: uuid.UUID) -> Path:
    """Where a dataset's records live (named by id: never by anything the user sent)."""
    return settings.datasets_dir / f"{dataset_id}.jsonl"


def add_dataset(*, session: Session, settings: Settings, name: str, parsed: ingest.ParsedDataset) -> Dataset:
    """Add the row and write the records file; the caller commits, and removes the file if that fails."""
    dataset = Dataset(name=name, format=parsed.format, row_count=len(parsed.texts), labels=parsed.label_counts,
                      sha256=parsed.sha256, warnings=parsed.warnings, scripts=parsed.scripts)
    session.add(dataset)
    session.flush()
    ingest.write_records(records_path(settings, dataset.id), parsed)
    return dataset


def get_dataset(*, session: Session, dataset_id: uuid.UUID) -> Dataset | None:
    return session.get(Dataset, dataset_id)


def lock_dataset(*, session: Session, dataset_id: uuid.UUID, exclusive: bool = False) -> Dataset | None:
    """The dataset, locked until the caller's transaction ends, or None.

    A job (or sweep) being created takes it shared (FOR KEY SHARE: jobs on one dataset do not wait for each
    other), a delete exclusive (FOR UPDATE). Whichever comes second waits for the first to commit and then sees
    its outcome: the new job, so the delete is refused; or no dataset, so the job is. Never a job stored on a
    dataset deleted under it. SQLite has no row locks: begin_write takes its write lock instead.
    """
    begin_write(session)
    query = select(Dataset).where(Dataset.id == dataset_id)
    query = query.with_for_update() if exclusive else query.with_for_update(read=True, key_share=True)
    return session.scalars(query).first()


def list_datasets(*, session: Session, limit: int, offset: int) -> tuple[list[Dataset], int]:
    """A page of datasets, newest first, and the total count."""
    total = session.scalar(select(func.count()).select_from(Dataset)) or 0
    rows = session.scalars(select(Dataset).order_by(Dataset.created_at.desc(), Dataset.id).limit(limit).offset(offset))
    return list(rows), total
