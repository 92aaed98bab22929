"""Base model data functions: an inspected folder becomes a row plus a folder under BASE_MODELS_DIR.

They add, delete and flush; the caller owns the transaction (and removes the folder once a delete commits, or
once an install's commit fails: core.base_models.remove_base_model_files).
"""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.base_models import NAME_PATTERN, base_model_dir, check_name, inspect_folder
from core.config import Settings
from core.db.session import begin_write
from core.db.tables import PretrainedModel, TrainingJob
from core.errors import ErrorCode, ServiceError
from core.spec import ACTIVE_STATUSES


def _taken(name: str) -> ServiceError:
    return ServiceError(ErrorCode.conflict, f"A base model named {name!r} is already installed; remove it first or "
                        "choose another name.", 409)


def install_base_model(*, session: Session, settings: Settings, src: Path, name: str | None = None,
                       move: bool = False) -> PretrainedModel:
    """Inspect the folder `src`, put its files in BASE_MODELS_DIR/<name> (default: the folder's name) and add the
    row (flushed, not committed). 422 for a folder refused or a bad name, 409 for a name taken; on any error
    nothing is left behind. `move` moves the files instead of copying them (the API's unpacked upload, which lies
    on the same volume). The caller commits, and calls remove_base_model_files if that fails."""
    info = inspect_folder(src)
    name = check_name(info.name if name is None else name)
    if get_base_model(session=session, name=name) is not None:  # before copying gigabytes for nothing
        raise _taken(name)
    settings.base_models_dir.mkdir(parents=True, exist_ok=True)
    # Staged beside the final folder (same filesystem), so the last step is one atomic rename. Names never start
    # with '.', so a staging folder is never taken for a base model. mkdir, not mkdtemp: mkdtemp's mode 0700
    # would keep a worker running as another user out of the installed folder.
    staging = settings.base_models_dir / f".install-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        for file in info.files:
            if move:
                shutil.move(src / file, staging / file)
            else:
                shutil.copyfile(src / file, staging / file)
        row = PretrainedModel(name=name, architecture=info.architecture, sha256=info.sha256,
                              num_parameters=info.num_parameters, hidden_size=info.hidden_size,
                              num_layers=info.num_layers, vocab_size=info.vocab_size, max_length=info.max_length,
                              size_bytes=info.size_bytes)
        session.add(row)
        try:
            session.flush()
        except IntegrityError:  # installed under this name since the check above
            raise _taken(name) from None
        # The name is ours until the caller's transaction ends (a concurrent install of it waits on the unique
        # index, or on SQLite's write lock), so a folder already there was left by an install whose commit failed.
        target = base_model_dir(settings, name)
        if target.exists():
            shutil.rmtree(target)
        staging.replace(target)
        return row
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already when it became the model's folder


def get_base_model(*, session: Session, name: str) -> PretrainedModel | None:
    if not re.fullmatch(NAME_PATTERN, name):  # cannot exist (and PostgreSQL refuses some strings outright)
        return None
    return session.scalars(select(PretrainedModel).where(PretrainedModel.name == name)).first()


def list_base_models(*, session: Session) -> list[PretrainedModel]:
    """Every installed base model, oldest first."""
    return list(session.scalars(select(PretrainedModel).order_by(PretrainedModel.created_at, PretrainedModel.name)))


def first_base_model(*, session: Session) -> PretrainedModel | None:
    """The oldest installed base model (ties by name): what an encoder spec without model.base_model trains."""
    query = select(PretrainedModel).order_by(PretrainedModel.created_at, PretrainedModel.name).limit(1)
    return session.scalars(query).first()


def lock_base_model(*, session: Session, name: str, exclusive: bool = False) -> PretrainedModel | None:
    """The base model, locked until the caller's transaction ends, or None.

    As core.db.datasets.lock_dataset: a job being created on it takes it shared (FOR KEY SHARE), a delete
    exclusive (FOR UPDATE), so the second waits for the first and sees its outcome: never a job stored on a base
    model deleted under it. SQLite has no row locks: begin_write takes its write lock instead.
    """
    if not re.fullmatch(NAME_PATTERN, name):
        return None
    begin_write(session)
    query = select(PretrainedModel).where(PretrainedModel.name == name)
    query = query.with_for_update() if exclusive else query.with_for_update(read=True, key_share=True)
    return session.scalars(query).first()


def base_model_in_use(*, session: Session, name: str) -> bool:
    """True while a queued or running job fine-tunes this base model (its spec's model.base_model)."""
    # Filtered here rather than in SQL: JSON paths differ between SQLite and PostgreSQL, and active jobs are few.
    specs = session.scalars(select(TrainingJob.spec).where(TrainingJob.status.in_(ACTIVE_STATUSES)))
    return any(((spec or {}).get("model") or {}).get("base_model") == name for spec in specs)


def delete_base_model(*, session: Session, name: str) -> PretrainedModel:
    """Delete the row (flushed, not committed): 404 if there is none, 409 while an active job uses it. The caller
    commits, then removes the folder (remove_base_model_files): a failed commit leaves both in place."""
    row = lock_base_model(session=session, name=name, exclusive=True)
    if row is None:
        raise ServiceError(ErrorCode.not_found, f"No base model named {name[:200]!r}.", 404)
    if base_model_in_use(session=session, name=name):
        raise ServiceError(ErrorCode.conflict, f"A queued or running job fine-tunes base model {name!r}; wait for it "
                           "or cancel it.", 409)
    session.delete(row)
    session.flush()
    return row
