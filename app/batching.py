"""Dynamic batching: concurrent predict requests for one model in one API process become one onnxruntime call.

Granian runs the WSGI app in a pool of threads per process, so requests for the same model overlap. Each one
queues its texts here; a request thread that finds the model idle becomes the *leader*: it takes every queued
request (up to PREDICT_MAX_BATCH_TEXTS texts), runs them as one batch and hands each request its own rows, while
the others wait; then it hands the lead to the oldest request still queued. There is no batching thread: a
request that arrives at an idle model runs at once in its own thread, as without batching. Under load, requests
queue while a batch runs, so batches grow with the load by themselves (continuous batching). Each waiting thread
is woken alone, when its rows are ready or the lead is its turn.

The wait adapts to load the way BentoML's adaptive batching means it to, with what a process can know for
sure: a leader waits (at most PREDICT_MAX_WAIT_MS) only while other requests for the same model are already
inside the route, parsing their JSON, and about to queue; when none are, it waits for nothing.

A request's deadline (PREDICT_TIMEOUT_SECONDS) is honoured while it waits: one still queued at its deadline is
taken out and fails alone with a 503; one already in a running batch gets that batch's answer. A batch that
fails (onnxruntime raised) fails each of its requests with the same error.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from app import metrics
from core.errors import ErrorCode, ServiceError


@dataclass(eq=False)
class _Request:
    texts: Sequence[str]
    deadline: float
    predict_proba: Callable[[Sequence[str]], np.ndarray]
    proba: np.ndarray | None = None
    error: BaseException | None = None
    done: bool = False
    taken: bool = False  # in a batch that is running: its deadline no longer takes it out
    lead: bool = False  # handed the lead: it runs the next batch
    # Set (after the fields above change) to wake this request's thread alone: one shared condition woke every
    # waiting thread of the process for each request that queued or finished.
    wake: threading.Event = field(default_factory=threading.Event)


@dataclass(eq=False)
class Batcher:
    """Batches the predictions asked of one model from many threads of one process."""

    model: str
    max_batch_texts: int = 256
    max_wait_s: float = 0.002
    max_queue: int = 1024
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _queue: deque[_Request] = field(default_factory=deque, init=False)
    _busy: bool = field(default=False, init=False)
    _arriving: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        # Only a leader waiting for requests on their way in waits on this.
        self._arrivals = threading.Condition(self._lock)

    # -- the route's side

    def arriving(self) -> _Arrival:
        """Count a request as on its way (inside the route, before its body is parsed) for the leader's wait:
        `with batcher.arriving(): ... batcher.run(texts, deadline)`."""
        return _Arrival(self)

    def run(self, texts: Sequence[str], deadline: float, predict_proba: Callable[[Sequence[str]], np.ndarray],
            arrival: _Arrival | None = None) -> np.ndarray:
        """Class probabilities for `texts` (`predict_proba`: texts -> float32 [N, C], the model's), computed in one
        batch with whatever else is queued. Raises ServiceError 503 when the queue is full or the deadline passes
        first; the batch's own exception if its call failed."""
        request = _Request(texts, deadline, predict_proba)
        with self._lock:
            if arrival is not None:
                arrival.queued()
            if len(self._queue) >= self.max_queue:
                raise ServiceError(ErrorCode.unavailable, f"Too many predictions queued for this model in this process "
                                   f"({self.max_queue}, PREDICT_MAX_QUEUE); retry shortly.", 503)
            self._queue.append(request)
            metrics.BATCH_QUEUE.inc()
            if not self._busy:  # then the queue was empty: this request leads a batch of its own at once
                self._busy = request.lead = True
        while not request.done:
            if request.lead:
                request.lead = False
                self._lead()
                continue
            if request.taken:
                request.wake.wait()
            else:
                remaining = request.deadline - time.monotonic()
                if remaining <= 0 or not request.wake.wait(timeout=remaining):
                    self._give_up(request)
            # Cleared before the flags are read again: whatever is set after this wakes the next wait.
            request.wake.clear()
        if request.error is not None:
            raise request.error
        return request.proba

    def _give_up(self, request: _Request) -> None:
        """At its deadline: a request still only queued leaves the queue and fails with 503."""
        with self._lock:
            if not (request.taken or request.lead or request.done):
                self._queue.remove(request)
                metrics.BATCH_QUEUE.dec()
                raise ServiceError(ErrorCode.unavailable, "The prediction waited past its deadline "
                                   "(PREDICT_TIMEOUT_SECONDS) behind others for this model; retry shortly.", 503)

    # -- internals

    def _lead(self) -> None:
        """Take a batch from the queue, run it without the lock, hand out the rows, then hand the lead to the
        oldest request still queued (or mark the model idle)."""
        with self._lock:
            # Adaptive wait: only while requests for this model are already in the route and about to queue.
            wait_until = time.monotonic() + self.max_wait_s
            while self._arriving > 0 and self._queued_texts() < self.max_batch_texts:
                remaining = wait_until - time.monotonic()
                if remaining <= 0:
                    break
                self._arrivals.wait(timeout=remaining)
            batch, count = [], 0
            while self._queue and (not batch or count + len(self._queue[0].texts) <= self.max_batch_texts):
                request = self._queue.popleft()
                request.taken = True
                batch.append(request)
                count += len(request.texts)
            metrics.BATCH_QUEUE.dec(len(batch))
        try:
            self._compute(batch, count)
        finally:
            for request in batch:
                if not request.done:  # _compute itself failed (it catches the model's errors)
                    request.error = ServiceError(ErrorCode.internal, "The prediction batch failed.", 500)
                    request.done = True
                request.wake.set()
            with self._lock:
                if self._queue:
                    successor = self._queue[0]
                    successor.lead = True
                    successor.wake.set()
                else:
                    self._busy = False

    def _queued_texts(self) -> int:
        return sum(len(r.texts) for r in self._queue)

    def _compute(self, batch: list[_Request], count: int) -> None:
        """Run one batch (no lock held) and fill in each request's rows or the error."""
        metrics.BATCH_REQUESTS.observe(len(batch))
        metrics.BATCH_TEXTS.observe(count)
        texts = batch[0].texts if len(batch) == 1 else [t for r in batch for t in r.texts]
        try:
            proba = batch[0].predict_proba(texts)
        except Exception as exc:  # noqa: BLE001 (each request of the batch answers with it)
            for request in batch:
                request.error, request.done = exc, True
            return
        start = 0
        for request in batch:
            request.proba = proba[start : start + len(request.texts)]
            request.done = True
            start += len(request.texts)


class _Arrival:
    """`with batcher.arriving() as arrival:` counts the request as arriving until run(..., arrival) queues it, or
    it leaves the route without (a 422)."""

    def __init__(self, batcher: Batcher) -> None:
        self.batcher = batcher
        self.counted = False

    def __enter__(self) -> _Arrival:
        with self.batcher._lock:
            self.batcher._arriving += 1
            self.counted = True
        return self

    def queued(self) -> None:
        """Called by run() with the batcher's lock held."""
        if self.counted:
            self.counted = False
            self.batcher._arriving -= 1
            self.batcher._arrivals.notify()  # a leader waiting for arrivals looks again

    def __exit__(self, *exc: object) -> None:
        if self.counted:
            with self.batcher._lock:
                self.queued()
