"""Fixtures for the HTTP API through Flask's test client (tests/helpers.py: Api, KeyedApi, running_api)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Api, KeyedApi, db_settings, running_api, sqlite_settings


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    """The embedded default: SQLite and the filesystem broker."""
    with running_api(sqlite_settings(tmp_path)) as (client, _):
        yield client


@pytest.fixture(params=["sqlite", "postgresql"])
def any_api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    """The same checks on both databases; the PostgreSQL one is shared by the session, so compare counts."""
    with running_api(db_settings(request, tmp_path)) as (client, _):
        yield client


@pytest.fixture(params=["sqlite", "postgresql"])
def keyed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeyedApi]:
    """An API on either database with AUTH_REQUIRED on."""
    with running_api(db_settings(request, tmp_path, AUTH_REQUIRED=True)) as (api, sessionmaker):
        yield KeyedApi(api, sessionmaker)
