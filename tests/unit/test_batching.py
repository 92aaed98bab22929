"""Dynamic batching (app/batching.py) with a stand-in model whose calls the tests hold and release: no timing
races; the only clock used is a deadline set in the past or 30 s ahead."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from app.batching import Batcher
from core.errors import ServiceError

pytestmark = pytest.mark.unit
LATER = 30.0  # a wait the tests would notice: nothing here may wait this long


class Model:
    """predict_proba stand-in: row i is [len(text_i), 1]; records each call's texts; can hold calls until
    released, and raise."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()
        self.release.set()
        self.fail: Exception | None = None

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        self.entered.release()
        assert self.release.wait(LATER)
        if self.fail is not None:
            raise self.fail
        return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)


def in_thread(fn, *args) -> dict:
    """Run fn(*args) in a thread; the dict gets "result" or "error" and "thread"."""
    out: dict = {}

    def target() -> None:
        try:
            out["result"] = fn(*args)
        except Exception as exc:  # noqa: BLE001
            out["error"] = exc

    out["thread"] = threading.Thread(target=target, daemon=True)
    out["thread"].start()
    return out


def wait_queued(batcher: Batcher, n: int) -> None:
    deadline = time.monotonic() + LATER
    while len(batcher._queue) < n:
        assert time.monotonic() < deadline
        time.sleep(0.001)


def hold_first_batch(batcher: Batcher, model: Model) -> dict:
    """Start a request whose batch is held inside the model until model.release is set."""
    model.release.clear()
    first = in_thread(batcher.run, ["held"], time.monotonic() + LATER, model)
    assert model.entered.acquire(timeout=LATER)
    return first


def test_an_idle_model_runs_a_request_at_once_in_its_own_thread():
    model, batcher = Model(), Batcher("m", max_wait_s=LATER)
    caller = threading.get_ident()
    seen = []
    start = time.monotonic()
    proba = batcher.run(["abc", "de"], time.monotonic() + LATER, lambda t: seen.append(threading.get_ident())
                        or model(t))
    assert time.monotonic() - start < LATER / 2  # no wait: nothing else was on its way
    assert proba.tolist() == [[3, 1], [2, 1]] and model.calls == [["abc", "de"]] and seen == [caller]


def test_requests_queued_behind_a_running_batch_run_together_and_get_their_own_rows():
    model, batcher = Model(), Batcher("m")
    first = hold_first_batch(batcher, model)
    others = [in_thread(batcher.run, ["x" * i] * i, time.monotonic() + LATER, model) for i in (1, 2, 3)]
    wait_queued(batcher, 3)
    model.release.set()
    for request in [first, *others]:
        request["thread"].join(LATER)
    assert first["result"].tolist() == [[4, 1]]
    for i, request in zip((1, 2, 3), others):
        assert request["result"].tolist() == [[i, 1]] * i
    assert len(model.calls) == 2 and len(model.calls[1]) == 6  # the three in one call


def test_a_waiting_thread_is_woken_only_for_its_rows_or_its_turn_to_lead():
    model, batcher = Model(), Batcher("m")
    first = hold_first_batch(batcher, model)
    waiting = [in_thread(batcher.run, [f"t{i}"], time.monotonic() + LATER, model) for i in range(3)]
    wait_queued(batcher, 3)
    wakes = [0, 0, 0]
    for i, request in enumerate(list(batcher._queue)):
        def counted(set_=request.wake.set, i=i) -> None:
            wakes[i] += 1
            set_()
        request.wake.set = counted
    late = in_thread(batcher.run, ["late"], time.monotonic() + LATER, model)
    wait_queued(batcher, 4)
    assert wakes == [0, 0, 0]  # another request queueing wakes nobody who waits
    model.release.set()
    for request in [first, *waiting, late]:
        request["thread"].join(LATER)
        assert "result" in request
    # The oldest: once to lead the next batch (its own among them), once for its rows; the others: their rows.
    assert wakes == [2, 1, 1] and len(model.calls) == 2


def test_a_batch_holds_at_most_max_batch_texts_unless_one_request_is_larger():
    model, batcher = Model(), Batcher("m", max_batch_texts=4)
    first = hold_first_batch(batcher, model)
    others = [in_thread(batcher.run, texts, time.monotonic() + LATER, model)
              for texts in (["a"] * 3, ["b"] * 2, ["c"] * 9, ["d"])]
    wait_queued(batcher, 4)
    model.release.set()
    for request in [first, *others]:
        request["thread"].join(LATER)
        assert "error" not in request
    sizes = sorted(len(call) for call in model.calls[1:])
    assert sum(sizes) == 15 and max(sizes) == 9 and all(s <= 4 for s in sizes if s != 9)


def test_a_failed_batch_fails_each_of_its_requests_and_the_next_batch_runs():
    model, batcher = Model(), Batcher("m")
    first = hold_first_batch(batcher, model)
    others = [in_thread(batcher.run, [t], time.monotonic() + LATER, model) for t in ("a", "b")]
    wait_queued(batcher, 2)
    model.fail = RuntimeError("onnxruntime broke")
    model.release.set()
    for request in [first, *others]:
        request["thread"].join(LATER)
        assert isinstance(request["error"], RuntimeError)
    model.fail = None
    assert batcher.run(["ok"], time.monotonic() + LATER, model).tolist() == [[2, 1]]


def test_a_request_still_queued_at_its_deadline_fails_alone():
    model, batcher = Model(), Batcher("m")
    first = hold_first_batch(batcher, model)
    late = in_thread(batcher.run, ["late"], time.monotonic() - 1.0, model)  # its deadline has passed
    late["thread"].join(LATER)
    assert isinstance(late["error"], ServiceError) and late["error"].status == 503
    assert "PREDICT_TIMEOUT_SECONDS" in late["error"].message and not batcher._queue
    model.release.set()
    first["thread"].join(LATER)
    assert first["result"].tolist() == [[4, 1]] and model.calls == [["held"]]


def test_a_full_queue_refuses_with_503():
    model, batcher = Model(), Batcher("m", max_queue=1)
    first = hold_first_batch(batcher, model)
    queued = in_thread(batcher.run, ["q"], time.monotonic() + LATER, model)
    wait_queued(batcher, 1)
    with pytest.raises(ServiceError) as refused:
        batcher.run(["r"], time.monotonic() + LATER, model)
    assert refused.value.status == 503 and "PREDICT_MAX_QUEUE" in refused.value.message
    model.release.set()
    for request in (first, queued):
        request["thread"].join(LATER)
        assert "result" in request


def test_a_leader_waits_for_a_request_already_in_the_route():
    """A request counted as arriving (inside the route, parsing) is waited for, so both run as one batch."""
    model, batcher = Model(), Batcher("m", max_wait_s=LATER)
    arrival = batcher.arriving().__enter__()
    leader = in_thread(batcher.run, ["a"], time.monotonic() + LATER, model)
    wait_queued(batcher, 1)
    assert model.calls == []  # waiting for the arriving one
    batcher.run(["bb"], time.monotonic() + LATER, model, arrival)
    leader["thread"].join(LATER)
    assert model.calls == [["a", "bb"]] and leader["result"].tolist() == [[1, 1]]


def test_a_request_that_leaves_the_route_early_stops_the_wait():
    model, batcher = Model(), Batcher("m", max_wait_s=LATER)
    with batcher.arriving():  # e.g. a 422 before its texts queue
        pass
    assert batcher._arriving == 0
    start = time.monotonic()
    batcher.run(["a"], time.monotonic() + LATER, model)
    assert time.monotonic() - start < LATER / 2
