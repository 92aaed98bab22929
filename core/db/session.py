"""Engines and sessions for PostgreSQL (production) and SQLite (embedded default)."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str) -> Engine:
    """An engine tuned for the database behind `url`."""
    if url.startswith("sqlite"):
        # The API and the worker are separate processes sharing one file: WAL lets readers run beside
        # the writer, and busy_timeout makes a writer wait instead of failing with "database is locked".
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    # pre_ping: a connection dropped by a PostgreSQL restart is replaced, not handed to a request.
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose objects stay readable after commit (views serialise after committing)."""
    return sessionmaker(bind=engine, expire_on_commit=False)


def begin_write(session: Session) -> None:
    """Make the session's transaction a writer now, before it reads what it will decide on.

    SQLite has no row locks, and pysqlite begins a transaction only at the first INSERT/UPDATE/DELETE: the reads
    before it see whatever is committed at that instant, and another writer may commit between such a read and
    the write that depends on it. BEGIN IMMEDIATE takes the database's one write lock first (waiting up to
    busy_timeout for it), so the reads that follow stay true until commit. On PostgreSQL this does nothing: the
    caller locks the rows it reads (SELECT ... FOR UPDATE / FOR KEY SHARE).
    """
    connection = session.connection()
    if connection.dialect.name == "sqlite" and not connection.connection.dbapi_connection.in_transaction:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
