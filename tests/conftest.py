"""Shared fixtures: settings in a temp folder, databases (SQLite and a fresh PostgreSQL database), processes.
The helper functions they use, and that tests import, are in tests/helpers.py."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.config import Settings
from tests.helpers import Processes, make_settings, tiny_dataset_csv

# Still importable from here for test files written before tests/helpers.py (and edited concurrently);
# new code imports them from tests.helpers.
__all__ = ["make_settings", "tiny_dataset_csv"]

PG_ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Embedded-default settings in a private folder (SQLite + filesystem broker)."""
    return make_settings(tmp_path)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test session, dropped at the end."""
    from sqlalchemy import create_engine, text

    from core.db.migrate import upgrade

    name = f"textclf_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    upgrade(url)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def _tiny_bert_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_bert import build_tiny_bert

    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert-source") / "tiny-bert")


@pytest.fixture
def tiny_bert_dir(_tiny_bert_source: Path, tmp_path: Path) -> Path:
    """A tiny random BERT folder (tests/tiny_bert.py) of this test's own, named tiny-bert: change it freely."""
    return Path(shutil.copytree(_tiny_bert_source, tmp_path / "tiny-bert"))


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A Redis database of its own, emptied first so stale messages from other runs don't reach our workers."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    client.close()
    return REDIS_URL


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Child processes a test starts (tests.helpers.Processes), all stopped at teardown."""
    procs = Processes(tmp_path)
    yield procs
    procs.stop()
