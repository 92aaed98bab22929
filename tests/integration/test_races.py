"""Requests that race each other, on SQLite and PostgreSQL, made deterministic: one side is held inside its
transaction (an engine hook stops it just before a statement) while the other runs until it ends or reaches the
lock where it must wait; only then does the first go on. Every step waits on an event, never on the clock.

- a job (or sweep) created while its dataset is deleted: one of the two wins cleanly, whichever comes first;
- one new alias created by two clients at once: the last writer wins, no unique-constraint 500.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select
from werkzeug.test import TestResponse

from core.db import registry
from core.db.tables import Model, ModelAlias, TrainingJob
from tests.helpers import Api, assert_error, locs, make_settings, running_api, sqlite_settings

pytestmark = pytest.mark.integration

# Statements where a request waits for another's transaction: SQLite's write lock, PostgreSQL's row locks.
LOCKING = ("BEGIN IMMEDIATE", "FOR UPDATE", "FOR KEY SHARE")
WAIT_S = 60  # only a bound against a hang: every wait below ends on an event


@pytest.fixture(params=["sqlite", "postgresql"])
def db_api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Api, Any]]:
    if request.param == "sqlite":
        settings = sqlite_settings(tmp_path)
    else:
        settings = make_settings(tmp_path, DATABASE_URL=request.getfixturevalue("pg_url"))
    with running_api(settings) as (api, sessionmaker):
        yield api, sessionmaker


Request = tuple[str, str, dict | None]  # method, url, JSON body


def first_holds(api: Api, sessionmaker: Any, first: Request, second: Request,
                hold_before: str) -> tuple[TestResponse, TestResponse]:
    """Run `first` until just before its first statement that starts with `hold_before` and hold it there, inside
    its transaction; run `second` until it ends or reaches a statement that waits for a lock; then let `first`
    go on. Both replies, once both have ended."""
    engine = sessionmaker.kw["bind"]
    held, go, second_stopped = threading.Event(), threading.Event(), threading.Event()

    def on_statement(_conn, _cursor, statement, *_args):
        who = threading.current_thread().name
        if who == "first" and statement.startswith(hold_before) and not held.is_set():
            held.set()
            go.wait(WAIT_S)
        elif who == "second" and any(word in statement for word in LOCKING):
            second_stopped.set()

    replies: dict[str, TestResponse] = {}

    def send(name: str, req: Request) -> None:
        method, url, body = req
        try:
            replies[name] = api.client.application.test_client().open(url, method=method, json=body)
        finally:
            (held if name == "first" else second_stopped).set()

    threads = [threading.Thread(target=send, args=(name, req), name=name)
               for name, req in (("first", first), ("second", second))]
    event.listen(engine, "before_cursor_execute", on_statement)
    try:
        threads[0].start()
        assert held.wait(WAIT_S) and "first" not in replies, replies["first"].get_data(as_text=True)
        threads[1].start()
        assert second_stopped.wait(WAIT_S)
        go.set()
        for thread in threads:
            thread.join(WAIT_S)
    finally:
        go.set()
        event.remove(engine, "before_cursor_execute", on_statement)
    return replies["first"], replies["second"]


# The two ways to create jobs on a dataset: one job, or a sweep's children.
CREATORS = {
    "job": ("/v1/jobs", lambda dataset_id: {"dataset_id": dataset_id, "epochs": 1}),
    "sweep": ("/v1/sweeps", lambda dataset_id: {"dataset_id": dataset_id, "base": {"epochs": 1},
                                                "grid": {"optimizer.name": ["sgd", "adam"]}}),
}


def created_job_ids(kind: str, reply: dict) -> list[str]:
    return [reply["id"]] if kind == "job" else [child["job_id"] for child in reply["children"]]


@pytest.mark.parametrize("kind", CREATORS)
def test_a_delete_while_jobs_are_created_on_the_dataset_is_409(db_api: tuple[Api, Any], kind: str):
    api, sessionmaker = db_api
    dataset_id = api.create_dataset()
    url, body = CREATORS[kind]
    created, deleted = first_holds(api, sessionmaker, ("POST", url, body(dataset_id)),
                                   ("DELETE", f"/v1/datasets/{dataset_id}", None), hold_before="INSERT INTO")
    assert created.status_code == 202, created.get_data(as_text=True)
    assert_error(deleted, 409, "conflict", says=("job",))
    assert api.get(f"/v1/datasets/{dataset_id}").status_code == 200
    for job_id in created_job_ids(kind, created.get_json()):
        assert api.get(f"/v1/jobs/{job_id}").get_json()["dataset_id"] == dataset_id


@pytest.mark.parametrize("kind", CREATORS)
def test_jobs_created_while_their_dataset_is_deleted_are_422(db_api: tuple[Api, Any], kind: str):
    api, sessionmaker = db_api
    dataset_id = api.create_dataset()
    url, body = CREATORS[kind]
    before = api.total("/v1/jobs"), api.total("/v1/sweeps")
    deleted, created = first_holds(api, sessionmaker, ("DELETE", f"/v1/datasets/{dataset_id}", None),
                                   ("POST", url, body(dataset_id)), hold_before="DELETE FROM datasets")
    assert deleted.status_code == 204, deleted.get_data(as_text=True)
    error = assert_error(created, 422, "validation_error", says=(dataset_id,))
    assert locs(error) == ([["dataset_id"]] if kind == "job" else [["children", 0, "dataset_id"]])
    assert (api.total("/v1/jobs"), api.total("/v1/sweeps")) == before
    assert api.get(f"/v1/datasets/{dataset_id}").status_code == 404


def test_deleting_a_jobs_test_dataset_while_the_job_is_created_is_409(db_api: tuple[Api, Any]):
    api, sessionmaker = db_api
    dataset_id, test_id = api.create_dataset(), api.create_dataset()
    created, deleted = first_holds(api, sessionmaker,
                                   ("POST", "/v1/jobs", {"dataset_id": dataset_id, "test_dataset_id": test_id}),
                                   ("DELETE", f"/v1/datasets/{test_id}", None), hold_before="INSERT INTO")
    assert created.status_code == 202, created.get_data(as_text=True)
    assert_error(deleted, 409, "conflict", says=("job",))
    with sessionmaker() as session:
        assert str(session.get(TrainingJob, uuid.UUID(created.get_json()["id"])).test_dataset_id) == test_id


# ---------------------------------------------------------------------------------------------------------
# aliases


def make_model(sessionmaker: Any) -> uuid.UUID:
    """A registered model row (its job too); no files: the registry's data functions need none."""
    with sessionmaker.begin() as session:
        job = TrainingJob(status="succeeded", spec={})
        session.add(job)
        session.flush()
        model = Model(name=f"m-{job.id.hex[:8]}", version=1, job_id=job.id, labels=["a", "b"], spec={}, metrics={},
                      artifacts={})
        session.add(model)
        session.flush()
        return model.id


def test_two_clients_creating_one_new_alias_last_writer_wins(db_api: tuple[Api, Any]):
    _, sessionmaker = db_api
    mine, theirs = make_model(sessionmaker), make_model(sessionmaker)
    name = f"new-{uuid.uuid4().hex[:8]}"
    engine = sessionmaker.kw["bind"]
    interleaved = threading.Event()

    def other_client_creates_it(_conn, _cursor, statement, *_args):
        # The other client creates the alias after anything this one read and just before this one writes.
        if statement.startswith("INSERT INTO model_aliases") and not interleaved.is_set():
            interleaved.set()
            with sessionmaker.begin() as other:
                registry.set_alias(session=other, name=name, model_id=theirs)

    event.listen(engine, "before_cursor_execute", other_client_creates_it)
    try:
        with sessionmaker.begin() as session:
            assert registry.set_alias(session=session, name=name, model_id=mine).model_id == mine
    finally:
        event.remove(engine, "before_cursor_execute", other_client_creates_it)
    assert interleaved.is_set()
    with sessionmaker() as session:
        assert list(session.scalars(select(ModelAlias.model_id).where(ModelAlias.name == name))) == [mine]
        # an existing alias moves the same way
        registry.set_alias(session=session, name=name, model_id=theirs)
        session.commit()
        assert registry.resolve_alias(session=session, name=name).id == theirs
