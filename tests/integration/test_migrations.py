"""Alembic: upgrade from empty works on SQLite and PostgreSQL, and the models and migrations agree."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect

from core.db.base import Base
from core.db.migrate import alembic_config, upgrade

pytestmark = pytest.mark.integration


def assert_no_diff(url: str) -> None:
    engine = create_engine(url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "render_as_batch": True})
        diff = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert diff == [], f"models and migrations disagree; run alembic revision --autogenerate:\n{diff}"


def test_sqlite_upgrade_from_empty_and_no_autogenerate_diff(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    engine = create_engine(url)
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    assert {"datasets", "training_jobs", "models", "model_aliases", "alembic_version"} <= tables
    assert_no_diff(url)


def test_postgresql_upgrade_from_empty_and_no_autogenerate_diff(pg_url: str):
    assert_no_diff(pg_url)


def test_single_head():
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert len(script.get_heads()) == 1
