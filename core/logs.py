"""Logging for the API and the workers: readable text or one JSON object per line, with the request id and job
id of whatever is being handled."""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime

# Set by the API's middleware for each request and by the worker for each job; copied onto every log record.
request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
job_id_var: ContextVar[str | None] = ContextVar("job_id", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Attributes every LogRecord has; anything else on a record came from `extra=` and goes into the JSON object.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class ContextFilter(logging.Filter):
    """Puts the current request id and job id on each record (None outside a request or a job)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        record.job_id = job_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request/job id, and any `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
               "level": record.levelname, "logger": record.name, "message": record.getMessage(),
               "pid": record.process}
        for key, value in vars(record).items():
            if key not in _STANDARD and value is not None:
                out[key] = value
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def make_formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def configure_logging(level: str, log_format: str) -> None:
    """Send the root logger's records to stderr in `log_format` ('text' or 'json'); safe to call again."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    for handler in [h for h in root.handlers if getattr(h, "textclf", False)]:
        root.removeHandler(handler)
    handler = logging.StreamHandler()
    handler.textclf = True  # ours: replaced, not duplicated, when create_app runs again (tests)
    handler.setFormatter(make_formatter(log_format))
    handler.addFilter(ContextFilter())
    root.addHandler(handler)


def apply_format(logger: logging.Logger, log_format: str) -> None:
    """Give the handlers someone else set up (Celery's) our format and context fields."""
    for handler in logger.handlers:
        handler.setFormatter(make_formatter(log_format))
        handler.addFilter(ContextFilter())
