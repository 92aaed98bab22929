"""A worker installed without the `worker` extra: it exits at once saying what to install, `textclf serve`'s
Supervisor does not restart it, and /readyz says why no worker runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import worker_command
from core.config import Settings
from core.db import jobs as jobs_db
from core.worker_start import EXIT_CANNOT_START
from tests.helpers import ROOT, child_env, running_api, sqlite_settings

pytestmark = pytest.mark.integration


def start_worker_without(module: str, settings: Settings, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run the worker exactly as `textclf serve` starts it, in an interpreter where `module` cannot be imported
    (sys.modules[name] = None is what an absent module looks like to importlib, set by a sitecustomize)."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(f"import sys\nsys.modules[{module!r}] = None\n")
    env = {**child_env(settings), "PYTHONPATH": os.pathsep.join([str(blocker), str(ROOT)])}
    return subprocess.run(worker_command(settings), env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("module", "package"), [("sklearn", "scikit-learn"), ("torch", "torch")])
def test_a_worker_missing_a_dependency_exits_at_once_with_the_install_command(tmp_path, module, package):
    done = start_worker_without(module, sqlite_settings(tmp_path), tmp_path)
    assert done.returncode == EXIT_CANNOT_START, done.stderr
    assert f"worker dependencies missing ({package})" in done.stderr
    assert 'pip install -e ".[worker]"' in done.stderr and "install torch first" in done.stderr
    assert "Traceback" not in done.stderr


def test_readyz_says_why_no_worker_runs(tmp_path):
    settings = sqlite_settings(tmp_path)
    with running_api(settings) as (api, sessionmaker):
        reply = api.get("/readyz")
        assert reply.status_code == 503
        assert reply.get_json()["message"].startswith("no training worker: none sent a heartbeat in the last 90 s")

        assert start_worker_without("sklearn", settings, tmp_path).returncode == EXIT_CANNOT_START
        reply = api.get("/readyz")
        assert reply.status_code == 503
        body = reply.get_json()
        assert body["checks"] == {"database": "ok", "workers": "none_seen", "broker": "ok"}
        assert body["message"].startswith("no training worker: worker dependencies missing (scikit-learn)")
        assert 'pip install -e ".[worker]"' in body["message"]

        # A worker that does run is what counts: ready, and nothing to explain.
        with sessionmaker.begin() as session:
            jobs_db.record_worker_heartbeat(session=session, worker_id="host:1")
        assert api.get("/readyz").get_json() == {"status": "ready",
                                                 "checks": {"database": "ok", "workers": "ok", "broker": "ok"}}


def test_serve_does_not_restart_a_worker_that_cannot_start(tmp_path):
    """The Supervisor of `textclf serve` with a worker that exits as a missing dependency makes it and a child
    that keeps running: the worker is left stopped, the other child runs on."""
    commands = {"worker": [sys.executable, "-c", f"raise SystemExit({EXIT_CANNOT_START})"],
                "api": [sys.executable, "-c", "import time; time.sleep(600)"]}
    code = f"from app.cli import Supervisor; Supervisor({commands!r}, dict(__import__('os').environ)).run()"
    serve = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "COLUMNS": "300"})  # rich wraps at 80 columns otherwise
    try:
        lines = []
        for line in serve.stderr:  # the Supervisor's report on the worker's exit decides; no clock involved
            lines.append(line)
            if line.startswith("worker"):
                break
        assert "worker cannot start here (exit 78, see above); not restarting it" in lines[-1], lines
        assert serve.poll() is None  # still supervising the API
    finally:
        serve.send_signal(signal.SIGTERM)
        rest = serve.communicate(timeout=60)[1]
    output = "".join(lines) + rest
    assert output.count("started worker") == 1, output
    assert "textclf stopped" in output
