"""Shared fixtures: settings in a temp folder, databases (SQLite and a fresh PostgreSQL database), processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from core.config import Settings

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def make_settings(tmp_path: Path, **overrides) -> Settings:
    """Settings in tmp_path. API keys and rate limits are off unless a test turns them on (the auth tests do)."""
    return Settings(**{"TEXTCLF_DATA_DIR": tmp_path / "data", "AUTH_REQUIRED": False, "RATE_LIMIT_ENABLED": False,
                       **overrides})


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Embedded-default settings in a private folder (SQLite + filesystem broker)."""
    return make_settings(tmp_path)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test session, dropped at the end."""
    from sqlalchemy import create_engine, text

    from core.db.migrate import upgrade

    name = f"textclf_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    upgrade(url)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A Redis database of its own, emptied first so stale messages from other runs don't reach our workers."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    client.close()
    return REDIS_URL


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(settings: Settings) -> dict[str, str]:
    """Environment that makes a child process read the same settings."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "ARTIFACT_DIR")}
    env.update(TEXTCLF_DATA_DIR=str(settings.data_dir), DATABASE_URL=settings.database_url,
               CELERY_BROKER_URL=settings.celery_broker_url, ARTIFACT_DIR=str(settings.artifact_dir),
               AUTH_REQUIRED=str(settings.auth_required).lower(),
               RATE_LIMIT_ENABLED=str(settings.rate_limit_enabled).lower(),
               RATE_LIMIT_STORAGE_URL=settings.rate_limit_storage_url, RATE_LIMIT_DEFAULT=settings.rate_limit_default,
               RATE_LIMIT_PREDICT=settings.rate_limit_predict, RATE_LIMIT_TRAIN=settings.rate_limit_train,
               PYTHONUNBUFFERED="1")
    return env


class Processes:
    """Child processes started by a test, each logging to a file; all stopped at teardown."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
        with open(self.log_dir / f"{name}.log", "wb") as log:  # the child keeps its own copy of the fd
            proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        import signal

        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    yield procs
    procs.stop()


def wait_http(url: str, timeout: float = 60.0, procs: Processes | None = None) -> None:
    """Wait until `url` answers 200 (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:  # not listening yet, or too busy starting to answer
            pass
        if procs:
            for name, proc in procs.procs.items():
                if proc.poll() is not None:
                    raise AssertionError(f"{name} exited early:\n{procs.log(name)[-3000:]}")
        time.sleep(0.3)
    raise AssertionError(f"{url} did not become ready in {timeout}s")


def wait_job(base: str, job_id: str, timeout: float = 300.0) -> dict:
    """Poll a job until it reaches a terminal status (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = requests.get(f"{base}/v1/jobs/{job_id}", timeout=10).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish in {timeout}s: {job}")


def tiny_dataset_csv() -> bytes:
    """A small learnable dataset the tests write themselves: sports vs cooking sentences."""
    sports = ["the team won the match", "a great goal in the final minute", "the striker scored twice",
              "fans cheered the winning team", "the coach praised the defence", "a penalty decided the game",
              "the keeper saved a late shot", "the league title race is close", "they lost the derby at home",
              "the referee showed a red card", "the midfielder ran the game", "an away win for the champions"]
    cooking = ["bake the bread for forty minutes", "stir the sauce over low heat", "chop the onions finely",
               "season the soup with salt", "whisk the eggs and sugar", "roast the chicken with garlic",
               "simmer the beans until soft", "knead the dough on a floured table", "fry the garlic in olive oil",
               "serve the pasta with fresh basil", "grate the cheese over the dish", "let the cake cool on a rack"]
    lines = ["text,label"]
    for i in range(3):  # repeat with small variations so the split leaves examples of each label
        lines += [f"{s} {'today' if i else ''}".strip() + ",sports" for s in sports]
        lines += [f"{c} {'slowly' if i else ''}".strip() + ",cooking" for c in cooking]
    return ("\n".join(lines) + "\n").encode()


# ---------------------------------------------------------------------------------------------------------
# the embedded service as a process (e2e tests)


def start_serve(tmp_path: Path, processes: Processes, settings: Settings | None = None,
                **env: str) -> tuple[str, subprocess.Popen, Settings]:
    """`textclf serve` on a free port with its own data folder, ready; returns (base URL, process, settings)."""
    settings = settings or make_settings(tmp_path)
    port = free_port()
    serve = processes.start("serve", [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
                            {**child_env(settings), **env})
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/readyz", timeout=90, procs=processes)
    return base, serve, settings


def upload_tiny(base: str) -> str:
    """Upload the tiny dataset; its id."""
    reply = requests.post(f"{base}/v1/datasets", files={"file": ("d.csv", tiny_dataset_csv())}, timeout=30)
    assert reply.status_code == 201, reply.text
    return reply.json()["id"]


def wait_running(base: str, job_id: str, timeout: float = 120.0) -> dict:
    """Poll until the job is running and has finished at least one epoch (bounded). A job that ended first
    fails the test at once: give it more epochs than a fast machine trains between two polls."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = requests.get(f"{base}/v1/jobs/{job_id}", timeout=10).json()
        if job["status"] == "running" and job["history"]:
            return job
        assert job["status"] in ("queued", "running"), f"job {job_id} ended before it was seen training: {job}"
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} was not training after {timeout}s: {job}")


@contextmanager
def frozen(pids: list[int], seconds: float = 0.0) -> Iterator[None]:
    """Stop the processes (SIGSTOP) for the block, and at least `seconds`, then continue them: a test injects
    "this step is slow" instead of hoping the machine is slow enough."""
    import signal

    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    until = time.monotonic() + seconds
    try:
        yield
        time.sleep(max(0.0, until - time.monotonic()))
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def wait_for_log(procs: Processes, name: str, text: str, timeout: float = 60.0) -> None:
    """Wait until the process's log contains `text` (bounded)."""
    deadline = time.monotonic() + timeout
    while text not in procs.log(name):
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} never logged {text!r}:\n{procs.log(name)[-3000:]}")
        time.sleep(0.1)


def children(pid: int) -> list[int]:
    """Process ids whose parent is `pid` (read from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                out.append(int(entry.name))
    return out


def worker_pid(serve_pid: int) -> int | None:
    """The Celery worker that `textclf serve` started (a direct child running worker.celery_app)."""
    for pid in children(serve_pid):
        try:
            if b"worker.celery_app" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    return None
