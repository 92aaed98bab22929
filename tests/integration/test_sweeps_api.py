"""Sweeps through the HTTP API on SQLite and PostgreSQL, with the filesystem broker's messages counted.

No worker runs here: a worker's part (claiming a child, finishing it) is played with the same data functions the
worker calls, so what the tests check is the API's and the dispatcher's part: what is stored, what is sent, and
that max_parallel holds however often dispatch runs. tests/e2e/test_sweeps.py trains sweeps for real.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.db import jobs as jobs_db
from core.dispatch import dispatch_sweeps
from core.spec import JobStatus
from tests.helpers import HUGE_SPEC, LONG_TEXTS_CSV, Api, assert_error, make_settings, running_api, sqlite_settings

pytestmark = pytest.mark.integration

GRID = {"optimizer.name": ["sgd", "momentum", "adam"], "scheduler.name": ["step", "cosine"]}


@pytest.fixture(params=["sqlite", "postgresql"])
def sweep_api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Api, Any]]:
    overrides = {"MAX_SWEEP_CHILDREN": 8, "MAX_EPOCHS": 50}
    if request.param == "sqlite":
        settings = sqlite_settings(tmp_path, **overrides)
    else:
        settings = make_settings(tmp_path, DATABASE_URL=request.getfixturevalue("pg_url"), **overrides)
    with running_api(settings) as (client, sessionmaker):
        yield client, sessionmaker


def create(api: Api, dataset_id: str, **body: Any) -> dict:
    resp = api.post("/v1/sweeps", json={"dataset_id": dataset_id, "base": {"epochs": 2}, **body})
    assert resp.status_code == 202, resp.get_data(as_text=True)
    assert resp.headers["Location"] == f"/v1/sweeps/{resp.get_json()['id']}"
    return resp.get_json()


def sent_jobs(api: Api, names: set[str]) -> set[str]:
    """The job ids carried by these broker messages (the filesystem transport's files)."""
    folder = api.settings.broker_dir / "queue"
    return {json.loads((folder / name).read_text())["headers"]["id"] for name in names}


def run_child(sessionmaker, job_id: str, status: JobStatus = JobStatus.succeeded) -> None:
    """What a worker does to a child, minus the training: claim it, write an epoch, end it."""
    uid = uuid.UUID(job_id)
    with sessionmaker.begin() as session:
        assert jobs_db.claim_job(session=session, job_id=uid, worker_id="test:1")
    with sessionmaker.begin() as session:
        jobs_db.finish_job(session=session, job_id=uid, status=status, worker_id="test:1",
                           history=[{"epoch": 1, "train_loss": 0.5, "val_loss": 0.4, "val_accuracy": 0.8,
                                     "val_macro_f1": 0.75, "lr": 0.1, "seconds": 1.0}])


def dispatch(api: Api, sessionmaker, sweep_id: str) -> int:
    """The dispatcher as workers and the reaper run it, sending through the API's Celery client."""
    from app.extensions import State

    state: State = api.client.application.extensions["textclf"]
    return dispatch_sweeps(sessionmaker=sessionmaker, send=state.send_job, sweep_ids=[uuid.UUID(sweep_id)])


def test_a_sweep_stores_one_job_per_child_and_sends_only_max_parallel(sweep_api):
    api, _ = sweep_api
    dataset = api.create_dataset()
    jobs_before, messages_before = api.total("/v1/jobs"), api.queued_messages()
    sweep = create(api, dataset, name="opt", grid=GRID, max_parallel=2)

    assert sweep["status"] == "running" and sweep["search"] == "grid" and sweep["grid"] == GRID
    assert [c["params"] for c in sweep["children"]][:2] == [{"optimizer.name": "sgd", "scheduler.name": "step"},
                                                             {"optimizer.name": "sgd", "scheduler.name": "cosine"}]
    assert all(c["status"] == "queued" and c["rank"] is None for c in sweep["children"])
    assert sweep["counts"]["queued"] == 6 and sweep["leaderboard"] == [] and sweep["best"] is None
    assert api.total("/v1/jobs") == jobs_before + 6
    # the first two children; the others wait for a free slot
    assert sent_jobs(api, api.queued_messages() - messages_before) == {c["job_id"] for c in sweep["children"][:2]}
    # Children are ordinary jobs carrying the resolved spec and the sweep's name.
    child = api.get(f"/v1/jobs/{sweep['children'][5]['job_id']}").get_json()
    assert child["spec"]["optimizer"] == {**child["spec"]["optimizer"], "name": "adam", "lr": 0.002}
    assert child["spec"]["scheduler"]["name"] == "cosine" and child["spec"]["name"] == "opt"
    assert child["spec"]["epochs"] == 2
    assert api.get(f"/v1/sweeps/{sweep['id']}").get_json()["children"] == sweep["children"]


def test_slots_free_up_as_children_end_and_dispatch_never_exceeds_max_parallel(sweep_api):
    api, sessionmaker = sweep_api
    sweep = create(api, api.create_dataset(), grid=GRID, max_parallel=2)
    ids = [c["job_id"] for c in sweep["children"]]
    messages = api.queued_messages()
    assert dispatch(api, sessionmaker, sweep["id"]) == 0  # both slots taken by sent messages
    run_child(sessionmaker, ids[0])
    assert dispatch(api, sessionmaker, sweep["id"]) == 1
    assert dispatch(api, sessionmaker, sweep["id"]) == 0
    assert sent_jobs(api, api.queued_messages() - messages) == {ids[2]}
    run_child(sessionmaker, ids[1], JobStatus.failed)  # a failed child frees its slot too
    run_child(sessionmaker, ids[2], JobStatus.pruned)
    assert dispatch(api, sessionmaker, sweep["id"]) == 2
    body = api.get(f"/v1/sweeps/{sweep['id']}").get_json()
    assert body["counts"] == {"queued": 3, "running": 0, "cancelling": 0, "succeeded": 1, "failed": 1,
                              "cancelled": 0, "pruned": 1}
    # Children with an epoch are ranked (the one that succeeded first); history comes with each child.
    assert [c["index"] for c in body["leaderboard"]] == [0, 1, 2] and body["best"]["index"] == 0
    assert body["children"][0]["history"][0]["val_macro_f1"] == 0.75
    assert api.get(f"/v1/sweeps/{sweep['id']}?history=false").get_json()["children"][0]["history"] is None


def test_identical_children_train_once_and_an_earlier_identical_job_is_reused(sweep_api):
    api, sessionmaker = sweep_api
    dataset = api.create_dataset()
    jobs_before = api.total("/v1/jobs")
    # adam's default rate is 0.002: lr null and lr 0.002 are the same run
    first = create(api, dataset, grid={"optimizer.name": ["adam"], "optimizer.lr": [None, 0.002, 0.01]})
    children = first["children"]
    assert children[1]["duplicate_of"] == 0 and children[1]["job_id"] == children[0]["job_id"]
    assert children[2]["duplicate_of"] is None and api.total("/v1/jobs") == jobs_before + 2
    assert first["counts"]["queued"] == 2  # counts are of distinct jobs
    run_child(sessionmaker, children[0]["job_id"])

    second = create(api, dataset, grid={"optimizer.name": ["adam"], "optimizer.lr": [0.002, 0.05]},
                    base={"epochs": 2, "name": "again"})
    assert second["children"][0]["reused"] and second["children"][0]["job_id"] == children[0]["job_id"]
    assert second["children"][0]["status"] == "succeeded"
    assert not second["children"][1]["reused"] and api.total("/v1/jobs") == jobs_before + 3


@pytest.mark.parametrize(("body", "loc", "says"), [
    ({"grid": {"optimizer.nme": ["sgd"]}}, ["grid", "optimizer.nme"], "optimizer.nme"),
    ({"grid": {"dataset_id": [str(uuid.uuid4())]}}, ["grid", "dataset_id"], "dataset_id"),
    ({"grid": {"optimizer.name": ["sgd", "nesterov"], "optimizer.momentum": [0.0]}},
     ["children", 1, "optimizer"], "Child 1"),
    ({"grid": {"seed": [1, 2, 3], "epochs": [1, 2, 3]}}, ["grid"], "MAX_SWEEP_CHILDREN"),
    ({"space": {"seed": [1, 2]}, "samples": 9}, ["samples"], "MAX_SWEEP_CHILDREN"),
    ({"grid": {"epochs": [10, 60]}}, ["children", 1, "epochs"], "MAX_EPOCHS"),
    ({"grid": {"class_weights": [{"nope": 2.0}]}}, ["children", 0, "class_weights", "nope"], "labels"),
    ({"grid": {"seed": [1]}, "base": {"optimizer": {"name": "gd"}}}, ["base", "optimizer", "name"], "base"),
])
def test_bad_sweeps_are_422_naming_the_problem_and_queue_nothing(sweep_api, body, loc, says):
    api, _ = sweep_api
    dataset = api.create_dataset()
    sweeps_before = api.total("/v1/sweeps")
    with api.writes_nothing():
        error = assert_error(api.post("/v1/sweeps", json={"dataset_id": dataset, **body}), 422, "validation_error",
                             says=(says,))
    assert loc in [d["loc"] for d in error["details"]], error
    assert api.total("/v1/sweeps") == sweeps_before


def test_every_child_is_checked_against_the_training_memory_ceiling(sweep_api):
    api, _ = sweep_api
    dataset = api.create_dataset(LONG_TEXTS_CSV)
    base = {**HUGE_SPEC, "epochs": 2}
    with api.writes_nothing():
        error = assert_error(api.post("/v1/sweeps", json={"dataset_id": dataset, "base": base,
                                                          "grid": {"batch_size": [2, 4096]}}),
                             422, "validation_error", says=("TRAINING_MEMORY_LIMIT_MB",))
    assert ["children", 1, "batch_size"] in [d["loc"] for d in error["details"]], error


def test_an_unknown_dataset_is_422_and_an_unknown_sweep_404(sweep_api):
    api, _ = sweep_api
    with api.writes_nothing():
        assert_error(api.post("/v1/sweeps", json={"dataset_id": str(uuid.uuid4()), "grid": {"seed": [1, 2]}}),
                     422, "validation_error", says=("No dataset",))
    for path in (f"/v1/sweeps/{uuid.uuid4()}", "/v1/sweeps/not-a-uuid"):
        assert api.get(path).status_code == 404
    assert_error(api.post(f"/v1/sweeps/{uuid.uuid4()}/cancel"), 404, "not_found")


def test_cancel_stops_queued_children_at_once_asks_running_ones_to_stop_and_starts_nothing_more(sweep_api):
    api, sessionmaker = sweep_api
    sweep = create(api, api.create_dataset(), grid=GRID, max_parallel=2)
    ids = [c["job_id"] for c in sweep["children"]]
    with sessionmaker.begin() as session:  # child 0 is training; child 1's message is still on the broker
        assert jobs_db.claim_job(session=session, job_id=uuid.UUID(ids[0]), worker_id="test:1")
    resp = api.post(f"/v1/sweeps/{sweep['id']}/cancel")
    assert resp.status_code == 202
    body = resp.get_json()
    assert body["status"] == "cancelling"
    assert [c["status"] for c in body["children"]] == ["cancelling"] + ["cancelled"] * 5
    messages = api.queued_messages()
    assert dispatch(api, sessionmaker, sweep["id"]) == 0 and api.queued_messages() == messages
    with sessionmaker.begin() as session:  # the worker notices and stops
        jobs_db.finish_job(session=session, job_id=uuid.UUID(ids[0]), status=JobStatus.cancelled)
    assert api.get(f"/v1/sweeps/{sweep['id']}").get_json()["status"] == "cancelled"


def test_cancelling_one_waiting_child_leaves_the_rest_running(sweep_api):
    api, sessionmaker = sweep_api
    sweep = create(api, api.create_dataset(), grid=GRID, max_parallel=2)
    ids = [c["job_id"] for c in sweep["children"]]
    assert api.post(f"/v1/jobs/{ids[4]}/cancel").status_code == 200
    for job_id in ids[:2]:
        run_child(sessionmaker, job_id)
    assert dispatch(api, sessionmaker, sweep["id"]) == 2  # children 2 and 3; 4 is cancelled
    run_child(sessionmaker, ids[2])
    run_child(sessionmaker, ids[3])
    assert dispatch(api, sessionmaker, sweep["id"]) == 1  # child 5
    run_child(sessionmaker, ids[5])
    body = api.get(f"/v1/sweeps/{sweep['id']}").get_json()
    assert body["status"] == "succeeded" and body["counts"]["cancelled"] == 1 and body["finished_at"]
    assert body["wall_seconds"] is not None and body["wall_seconds"] >= 0
    # an ended sweep stays what it was
    assert_error(api.post(f"/v1/sweeps/{sweep['id']}/cancel"), 409, "conflict", says=("already ended",))
    assert api.get(f"/v1/sweeps/{sweep['id']}").get_json()["status"] == "succeeded"


def test_promote_needs_a_succeeded_child_and_a_valid_alias(sweep_api):
    api, _ = sweep_api
    sweep = create(api, api.create_dataset(), grid={"seed": [1, 2]})
    assert_error(api.post(f"/v1/sweeps/{sweep['id']}/promote", json={"alias": "prod"}), 409, "conflict",
                 says=("succeeded",))
    error = assert_error(api.post(f"/v1/sweeps/{sweep['id']}/promote", json={"alias": "no spaces"}), 422,
                         "validation_error")
    assert ["alias"] in [d["loc"] for d in error["details"]]
    assert "prod" not in [a["name"] for a in api.get("/v1/aliases").get_json()["items"]]


def test_sweeps_are_listed_newest_first_without_histories(sweep_api):
    api, _ = sweep_api
    dataset = api.create_dataset()
    older, newer = create(api, dataset, grid={"seed": [1]}), create(api, dataset, grid={"seed": [2]})
    page = api.get("/v1/sweeps?limit=2").get_json()
    assert [s["id"] for s in page["items"]] == [newer["id"], older["id"]] and page["limit"] == 2
    assert all(c.get("history") is None for s in page["items"] for c in s["children"])


def test_children_waiting_for_a_slot_are_not_resent_when_the_broker_lost_its_messages(sweep_api):
    api, sessionmaker = sweep_api
    sweep = create(api, api.create_dataset(), grid=GRID, max_parallel=2)
    with sessionmaker() as session:
        queued = {str(job_id) for job_id, _ in jobs_db.queued_jobs(session=session)}
    ids = [c["job_id"] for c in sweep["children"]]
    assert set(ids[:2]) <= queued and not set(ids[2:]) & queued


def test_the_reaper_sends_children_whose_message_could_not_be_sent(sweep_api):
    api, sessionmaker = sweep_api
    sweep = create(api, api.create_dataset(), grid={"seed": [1, 2, 3]}, max_parallel=3)
    ids = [c["job_id"] for c in sweep["children"]]
    run_child(sessionmaker, ids[0])

    def broker_down(job_id, max_runtime):
        raise ConnectionError("broker unreachable")

    # A slot is free but the message cannot go out: the child goes back to waiting instead of holding the slot.
    from core.db.sweeps import release_slots
    with sessionmaker.begin() as session:
        release_slots(session=session, job_ids=[uuid.UUID(ids[1])])  # as if its first send had failed
    with contextlib.suppress(ConnectionError):
        dispatch_sweeps(sessionmaker=sessionmaker, send=broker_down, sweep_ids=None)
    sent = []
    assert dispatch_sweeps(sessionmaker=sessionmaker, send=lambda j, r: sent.append(str(j)), sweep_ids=None) >= 1
    assert ids[1] in sent
