"""Alembic environment: the URL comes from the settings unless the caller set one on the config."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from core.config import get_settings
from core.db import tables  # noqa: F401  (registers the tables on Base.metadata)
from core.db.base import Base
from core.db.session import make_engine

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or get_settings().database_url


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True,
                      render_as_batch=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        engine = make_engine(_url())
        try:
            with engine.connect() as connection:
                _run(connection)
        finally:
            engine.dispose()  # one-shot: leave no pooled connections behind
    else:
        _run(connection)


def _run(connection) -> None:
    # render_as_batch: SQLite can only ALTER through table copies; batch mode does that portably.
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True,
                      compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
