"""A database connection cut between a view's reply and the session's close (a PostgreSQL restart does this).

Closing the session rolls back on the connection after the view has made its reply. On a connection the server
has just terminated that rollback fails; it must not turn the finished reply into a 500, and the next request
must get a fresh connection. Found by tests/e2e/test_outages.py, where it surfaced as 1 reply in ~200.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from app import create_app
from app.extensions import get_session
from tests.helpers import make_settings

pytestmark = pytest.mark.integration


def test_a_connection_terminated_before_teardown_still_gives_the_reply_and_the_next_request_recovers(
        tmp_path: Path, pg_url: str):
    app = create_app(make_settings(tmp_path, DATABASE_URL=pg_url))
    admin = create_engine(pg_url)

    @app.get("/test/cut-my-connection")
    def cut_my_connection():
        pid = get_session().execute(text("SELECT pg_backend_pid()")).scalar_one()
        with admin.connect() as conn:  # what a fast shutdown of the server does to every session
            assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one()
        return {"pid": pid}

    client = app.test_client()
    try:
        reply = client.get("/test/cut-my-connection")
        assert reply.status_code == 200, reply.get_data(as_text=True)
        first_pid = reply.get_json()["pid"]
        # The pool dropped the dead connection: the next request reads through a new one.
        assert client.get("/v1/datasets").status_code == 200
        again = client.get("/test/cut-my-connection")
        assert again.status_code == 200 and again.get_json()["pid"] != first_pid
    finally:
        admin.dispose()
