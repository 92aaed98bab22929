"""Prometheus metrics of the API (GET /metrics).

Under Granian every worker process writes its counters to files in PROMETHEUS_MULTIPROC_DIR (set by
app/server.py before the workers start) and a scrape adds them up, so any worker can answer /metrics.
Job figures are read from the database at scrape time: the database is the source of truth for jobs.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from core.db.tables import TrainingJob
from core.spec import JobStatus

log = logging.getLogger(__name__)

# Request latency buckets: a prediction takes about a millisecond, a large upload seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Training run times: seconds (the fast preset on a small set) to a day.
TRAINING_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)

HTTP_REQUESTS = Counter("textclf_http_requests_total", "HTTP requests by route, method and status.",
                        ["method", "endpoint", "status"])
HTTP_LATENCY = Histogram("textclf_http_request_duration_seconds", "Time to answer an HTTP request, by route.",
                         ["method", "endpoint"], buckets=LATENCY_BUCKETS)
PREDICTIONS = Counter("textclf_predictions_total", "Texts classified, by model.", ["model_name", "model_version"])
ABSTENTIONS = Counter("textclf_abstentions_total", "Texts the model abstained on (under its threshold), by model.",
                      ["model_name", "model_version"])
# Dynamic batching (app/batching.py): requests waiting for a model's batch, and what each batch held.
BATCH_QUEUE = Gauge("textclf_predict_queue_depth", "Predict requests queued for a batch, over the live API processes.",
                    multiprocess_mode="livesum")
BATCH_REQUESTS = Histogram("textclf_predict_batch_requests", "Predict requests merged into one onnxruntime call.",
                           buckets=(1, 2, 4, 8, 16, 32, 64, 128))
BATCH_TEXTS = Histogram("textclf_predict_batch_texts", "Texts scored in one onnxruntime call.",
                        buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
# livesum: the sessions of the API processes alive now, added up (a dead worker's count is dropped).
LOADED_MODELS = Gauge("textclf_loaded_models", "onnxruntime sessions loaded, over the live API processes.",
                      multiprocess_mode="livesum")


class JobCollector(Collector):
    """Jobs by status, the queue depth and a histogram of training run times, read from the database."""

    def __init__(self, session_factory: sessionmaker[Session]):
        self.session_factory = session_factory

    def collect(self) -> Iterator[Metric]:
        with self.session_factory() as session:
            counts = dict(session.execute(select(TrainingJob.status, func.count()).group_by(TrainingJob.status)).all())
            durations = session.execute(select(TrainingJob.started_at, TrainingJob.finished_at).where(
                TrainingJob.status == JobStatus.succeeded, TrainingJob.started_at.is_not(None),
                TrainingJob.finished_at.is_not(None))).all()
        jobs = GaugeMetricFamily("textclf_jobs", "Training jobs by status.", labels=["status"])
        for status in JobStatus:
            jobs.add_metric([status.value], counts.get(status.value, 0))
        yield jobs
        yield GaugeMetricFamily("textclf_queue_depth", "Jobs waiting for a training worker (status queued).",
                                value=counts.get(JobStatus.queued.value, 0))
        seconds = [(end - start).total_seconds() for start, end in durations]
        buckets = [(str(float(b)), sum(s <= b for s in seconds)) for b in TRAINING_BUCKETS]
        buckets.append(("+Inf", len(seconds)))
        yield HistogramMetricFamily("textclf_training_seconds", "Run time of succeeded training jobs "
                                    "(started to finished).", buckets=buckets, sum_value=sum(seconds))


class _ThisProcess(Collector):
    """The metrics of this process alone (tests, a single process without the server's workers)."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def render(session_factory: sessionmaker[Session]) -> tuple[bytes, str]:
    """The text exposition of every metric: this process's (or all API workers') plus the job figures."""
    registry = CollectorRegistry()
    # prometheus_client itself chooses per-process files by this variable, when it is first imported.
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        from prometheus_client import multiprocess

        _drop_dead_workers(os.environ["PROMETHEUS_MULTIPROC_DIR"])
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_ThisProcess())
    registry.register(JobCollector(session_factory))
    return generate_latest(registry), CONTENT_TYPE_LATEST


_LIVE_GAUGE_FILE = re.compile(r"^gauge_live\w+?_(\d+)\.db$")


def _drop_dead_workers(folder: str) -> None:
    """Forget the live gauges of API workers that exited (Granian respawns a dead worker under a new pid and
    has no exit hook to tell prometheus_client), so a livesum counts the processes alive now."""
    from prometheus_client import multiprocess

    for name in os.listdir(folder):
        match = _LIVE_GAUGE_FILE.match(name)
        if match and not _alive(int(match.group(1))):
            multiprocess.mark_process_dead(int(match.group(1)), folder)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
