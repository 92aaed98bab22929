"""Celery task names. The API sends tasks by name, so it never imports worker/ (or torch)."""

TRAIN_TASK = "worker.train_model"
TRAINING_QUEUE = "training"
