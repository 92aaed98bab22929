"""schemathesis against the served OpenAPI document: no 5xx and no reply outside the document, on any input."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import start_serve

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
CHECKS = "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance"


def test_generated_requests_get_no_server_error_and_conform_to_the_document(tmp_path: Path, processes):
    base, _, _ = start_serve(tmp_path, processes)
    run = subprocess.run(
        [str(SCHEMATHESIS), "run", f"{base}/openapi.json", "--checks", CHECKS,
         "--max-examples", "40", "--workers", "2", "--seed", "20261126", "--no-color"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    summary = run.stdout[-4000:]
    generated = re.search(r"(\d+) generated", summary)
    assert run.returncode == 0, summary
    assert generated and int(generated.group(1)) >= 1000, summary
    assert "unhandled error" not in processes.log("serve")
