"""JSON log lines carry the request id or job id of what is being handled, and `extra=` fields."""

from __future__ import annotations

import io
import json
import logging

import pytest

from core.logs import ContextFilter, JsonFormatter, job_id_var, request_id_var

pytestmark = pytest.mark.unit


def test_json_lines_carry_context_extras_and_exceptions():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    logger = logging.getLogger("textclf.test-logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        token = job_id_var.set("job-7")
        logger.info("epoch %d done", 3, extra={"epoch": 3})
        job_id_var.reset(token)
        token = request_id_var.set("req-1")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
        request_id_var.reset(token)
        logger.warning("plain")
    finally:
        logger.removeHandler(handler)
    first, second, third = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "epoch 3 done" and first["job_id"] == "job-7" and first["epoch"] == 3
    assert "request_id" not in first and first["level"] == "INFO" and first["logger"] == "textclf.test-logs"
    assert second["request_id"] == "req-1" and "ValueError: boom" in second["exc_info"] and "job_id" not in second
    assert set(third) == {"ts", "level", "logger", "message", "pid"}
