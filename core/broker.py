"""The Celery application both sides share: the API sends with it, the worker consumes with it.

The API sends tasks by name, so it never imports worker/ (or torch).
"""

from __future__ import annotations

from celery import Celery

from core.config import Settings

TRAIN_TASK = "worker.train_model"
TRAINING_QUEUE = "training"


def make_celery(settings: Settings, *, include: list[str] | None = None) -> Celery:
    """A Celery app configured for long training jobs where the database, not Celery, holds job state."""
    celery = Celery("textclf", broker=settings.celery_broker_url, include=include or [])
    transport_options: dict = {}
    if settings.celery_broker_url.startswith("filesystem"):
        # Embedded default: kombu's filesystem transport needs no server. Both folders are the same so
        # producer and consumer meet; a short polling interval keeps job start latency low.
        folder = settings.broker_dir / "queue"
        processed = settings.broker_dir / "processed"
        # Broadcasts (celery control, the worker's pidbox) go to control_folder, which kombu otherwise puts in
        # the current directory.
        control = settings.broker_dir / "control"
        for path in (folder, processed, control):
            path.mkdir(parents=True, exist_ok=True)
        transport_options = {
            "data_folder_in": str(folder), "data_folder_out": str(folder),
            "processed_folder": str(processed), "store_processed": False, "polling_interval": 0.2,
            "control_folder": str(control),
        }
    else:
        # Redis re-delivers any message not acked within visibility_timeout; with acks_late a running job
        # would get a second copy. Keep it longer than any job may run (celery#5935).
        transport_options = {"visibility_timeout": settings.broker_visibility_timeout}
    celery.conf.update(
        broker_transport_options=transport_options,
        result_backend_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        # A job is acknowledged when it ends, and re-queued if its process dies; the attempt counter in the
        # database stops an always-crashing job from looping.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # A fresh process per job: GPU memory and torch state are returned to the system for certain.
        worker_max_tasks_per_child=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        task_ignore_result=True,
        task_default_queue=TRAINING_QUEUE,
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
    )
    return celery


def send_training_job(celery: Celery, settings: Settings, job_id, max_runtime: int | None, *,
                      fresh_task_id: bool = False) -> None:
    """Put a training job's message on the broker, with the job's time limits. The task id is the job id, unless
    `fresh_task_id`: a re-sent job's old message may still be held by Celery as rejected (the claim makes any
    duplicate harmless)."""
    soft, hard = settings.time_limits(max_runtime)
    celery.send_task(TRAIN_TASK, args=[str(job_id)], task_id=None if fresh_task_id else str(job_id),
                     soft_time_limit=soft, time_limit=hard)
