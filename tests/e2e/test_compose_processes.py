"""compose.yaml's services started as local processes against the real PostgreSQL and Redis.

No Docker engine runs on our machines, so this runs each role's exact command from compose.yaml with the
compose environment pointed at 127.0.0.1, then drives the acceptance story through the API.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, child_env, free_port, make_settings, run_story, wait_http

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

BIN = Path(sys.executable).parent


def compose_command(service: dict, port: int) -> list[str]:
    """The service's command with the venv's executables and a loopback bind (`--host 0.0.0.0 --port 8000`)."""
    argv = shlex.split(service["command"]) if isinstance(service["command"], str) else list(service["command"])
    argv[0] = str(BIN / argv[0])
    return [{"0.0.0.0": "127.0.0.1", "8000": str(port)}.get(a, a) for a in argv]


def test_compose_roles_run_as_processes(tmp_path: Path, processes, pg_url, redis_url):
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    settings = make_settings(tmp_path, DATABASE_URL=pg_url, CELERY_BROKER_URL=redis_url)
    env = {**child_env(settings), "LOG_FORMAT": "json"}  # as compose sets it
    for name in ("migrate", "api", "worker", "reaper"):
        for key in services[name]["environment"]:  # every variable compose sets is one we set here too
            assert key in env, key
    port = free_port()

    migrate = subprocess.run(compose_command(services["migrate"], port), env=env, cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
    assert migrate.returncode == 0, migrate.stderr

    processes.start("api", compose_command(services["api"], port), env)
    processes.start("worker", compose_command(services["worker"], port), env)
    alive = tmp_path / "reaper.alive"
    reaper = [a.replace("/tmp/textclf-reaper.alive", str(alive)) for a in compose_command(services["reaper"], port)]
    processes.start("reaper", reaper, env)
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/readyz", timeout=60, procs=processes)
    run_story(base)
    assert alive.exists(), processes.log("reaper")  # the reaper made a pass against PostgreSQL and Redis
    assert "succeeded" in processes.log("worker") or "Task worker.train_model" in processes.log("worker")
