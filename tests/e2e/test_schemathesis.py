"""schemathesis against the served OpenAPI document: no 5xx and no reply outside the document, on any input."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import child_env, free_port, make_settings, wait_http

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
CHECKS = "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance"


def test_generated_requests_get_no_server_error_and_conform_to_the_document(tmp_path: Path, processes):
    settings = make_settings(tmp_path)
    port = free_port()
    processes.start("serve", [sys.executable, "-m", "app.cli", "serve", "--port", str(port)], child_env(settings))
    wait_http(f"http://127.0.0.1:{port}/readyz", timeout=90, procs=processes)
    run = subprocess.run(
        [str(SCHEMATHESIS), "run", f"http://127.0.0.1:{port}/openapi.json", "--checks", CHECKS,
         "--max-examples", "40", "--workers", "2", "--seed", "20261126", "--no-color"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    summary = run.stdout[-4000:]
    generated = re.search(r"(\d+) generated", summary)
    assert run.returncode == 0, summary
    assert generated and int(generated.group(1)) >= 1000, summary
    assert "unhandled error" not in processes.log("serve")
