"""API key data functions: create, find by secret, list, revoke, note use."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from core.api_keys import generate_key, hash_key
from core.db.base import utcnow
from core.db.tables import ApiKey

# last_used_at is written at most this often per key: a write per request would serialise reads on SQLite.
TOUCH_EVERY = timedelta(minutes=1)


def create_key(*, session: Session, name: str, scopes: list[str]) -> tuple[ApiKey, str]:
    """A new key row (flushed, not committed) and its secret, which is not stored anywhere."""
    secret, prefix = generate_key()
    key = ApiKey(name=name, prefix=prefix, key_hash=hash_key(secret), scopes=sorted(set(scopes)))
    session.add(key)
    session.flush()
    return key, secret


def find_active_key(*, session: Session, secret: str) -> ApiKey | None:
    """The unrevoked key with this secret, if any."""
    return session.scalars(select(ApiKey).where(ApiKey.key_hash == hash_key(secret),
                                                ApiKey.revoked_at.is_(None))).first()


def get_key(*, session: Session, key_id: uuid.UUID) -> ApiKey | None:
    return session.get(ApiKey, key_id)


def list_keys(*, session: Session, limit: int = 1000, offset: int = 0) -> tuple[list[ApiKey], int]:
    total = session.scalar(select(func.count()).select_from(ApiKey)) or 0
    rows = session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id).limit(limit).offset(offset))
    return list(rows), total


def count_keys(*, session: Session) -> int:
    """All keys ever made, revoked ones included."""
    return session.scalar(select(func.count()).select_from(ApiKey)) or 0


def revoke_key(*, session: Session, key_id: uuid.UUID) -> ApiKey | None:
    """Mark the key revoked (a second revoke keeps the first time); None if there is no such key."""
    key = session.get(ApiKey, key_id)
    if key is not None and key.revoked_at is None:
        key.revoked_at = utcnow()
        session.flush()
    return key


def touch_key(*, session: Session, key: ApiKey, now: datetime | None = None) -> bool:
    """Set last_used_at if it is older than TOUCH_EVERY; True if a row was written (caller commits)."""
    now = now or utcnow()
    if key.last_used_at is not None and now - key.last_used_at < TOUCH_EVERY:
        return False
    # Conditional, so concurrent requests of one key write the row once per interval.
    result = session.execute(
        update(ApiKey).where(ApiKey.id == key.id, or_(ApiKey.last_used_at.is_(None),
                                                      ApiKey.last_used_at < now - TOUCH_EVERY))
        .values(last_used_at=now).execution_options(synchronize_session=False))
    set_committed_value(key, "last_used_at", now)  # already written: not a pending change
    return result.rowcount == 1
