"""Model registry data functions: models and the aliases that point at them."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from core.db.base import utcnow
from core.db.tables import Model, ModelAlias

# The alias POST /v1/predict follows when it is set; otherwise the newest model serves.
DEFAULT_ALIAS = "default"


def get_model(*, session: Session, model_id: uuid.UUID) -> Model | None:
    return session.get(Model, model_id)


def next_version(*, session: Session, name: str) -> int:
    """The version number the next model called `name` gets: 1 for a new name."""
    return (session.scalar(select(func.max(Model.version)).where(Model.name == name)) or 0) + 1


def list_models(*, session: Session, limit: int, offset: int) -> tuple[list[Model], int]:
    total = session.scalar(select(func.count()).select_from(Model)) or 0
    rows = session.scalars(select(Model).order_by(Model.created_at.desc(), Model.id).limit(limit).offset(offset))
    return list(rows), total


def resolve_alias(*, session: Session, name: str) -> Model | None:
    alias = session.get(ModelAlias, name)
    return alias.model if alias else None


def default_model(*, session: Session) -> Model | None:
    """The model behind the `default` alias, else the newest registered model."""
    model = resolve_alias(session=session, name=DEFAULT_ALIAS)
    if model is not None:
        return model
    return session.scalars(select(Model).order_by(Model.created_at.desc(), Model.id).limit(1)).first()


def set_alias(*, session: Session, name: str, model_id: uuid.UUID) -> ModelAlias:
    """Point alias `name` at the model, creating the alias if it is new. One upsert (INSERT ... ON CONFLICT DO
    UPDATE), not a read then an insert: concurrent requests creating the same new name do not collide on its
    primary key, and the last to commit wins."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    now = utcnow()
    session.execute(insert(ModelAlias).values(name=name, model_id=model_id, updated_at=now)
                    .on_conflict_do_update(index_elements=[ModelAlias.name],
                                           set_={"model_id": model_id, "updated_at": now}))
    return session.get(ModelAlias, name, populate_existing=True)


def list_aliases(*, session: Session) -> list[ModelAlias]:
    return list(session.scalars(select(ModelAlias).order_by(ModelAlias.name)))


def delete_alias(*, session: Session, name: str) -> bool:
    alias = session.get(ModelAlias, name)
    if alias is None:
        return False
    session.delete(alias)
    session.flush()
    return True
