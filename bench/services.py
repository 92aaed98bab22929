"""Private Redis and PostgreSQL servers that a fault test or a chaos run may stop and restart at will.

The machine's own servers are shared (other tests, other users); these run on free ports from temporary
folders and are gone afterwards. PostgreSQL refuses to run as root, so on a root shell it runs as `postgres`.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ok(url: str, proc: subprocess.Popen | None = None, timeout: float = 120.0) -> None:
    """Poll `url` until it answers 200 (a service's readiness probe); give up if `proc` exits or time runs out."""
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"{proc.args[:4]} exited with {proc.returncode}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{url} not ready after {timeout}s")


def _wait_port(port: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout}s")


class PrivateRedis:
    """redis-server on a free port, keeping nothing on disk (like the machine's): a restart loses every message."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.log_dir = log_dir
        self.proc: subprocess.Popen | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        with open(self.log_dir / "redis.log", "ab") as log:
            self.proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                          "--appendonly", "no"], stdout=log, stderr=subprocess.STDOUT)
        _wait_port(self.port, 15, "redis-server")

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def restart(self, down_seconds: float = 1.0) -> None:
        """A crash (SIGKILL) and a start after `down_seconds`: everything queued in it is gone."""
        self.stop()
        time.sleep(down_seconds)
        self.start()
        self.restarts += 1


class PrivatePostgres:
    """A throw-away PostgreSQL cluster (initdb) on a free port, trust auth, database `textclf`."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="textclf-pg-"))
        self.bin = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1])
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run([str(self.bin / "initdb"), "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres",
                   "--no-sync", "-E", "UTF8"])

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/textclf"

    def _cmd(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv] if self._as_postgres else argv

    def _run(self, argv: list[str]) -> None:
        subprocess.run(self._cmd(argv), check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        with open(self.dir / "postgres.log", "ab") as log:  # the server keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                self._cmd([str(self.bin / "postgres"), "-D", str(self.dir / "data"), "-p", str(self.port),
                           "-h", "127.0.0.1", "-k", str(self.dir), "-c", "fsync=off"]),
                stdout=log, stderr=subprocess.STDOUT)
        _wait_port(self.port, 30, "postgres")
        for _ in range(100):  # listening is not yet accepting: wait for pg_isready
            if subprocess.run([str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                              capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        if self.restarts == 0 and not getattr(self, "_created", False):
            self._run([str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                       "textclf"])
            self._created = True

    def stop(self) -> None:
        """Fast shutdown (SIGINT): every connection is cut, as in a restart of the server."""
        if self.proc is not None and self.proc.poll() is None:
            # pg_ctl signals the postmaster itself (runuser would not pass a signal on).
            self._run([str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "stop", "-m", "fast", "-w"])
            self.proc.wait(timeout=60)

    def restart(self, down_seconds: float = 3.0) -> None:
        self.stop()
        time.sleep(down_seconds)
        self.start()
        self.restarts += 1

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Stack:
    """The production roles as local processes on one database and broker: `textclf migrate` once, then the API
    (Granian, as compose runs it), one Celery worker and the reaper. Each logs to `<folder>/<role>.log`."""

    ROLES = ("api", "worker", "reaper")

    def __init__(self, folder: Path, *, database_url: str, broker_url: str, **env: str) -> None:
        import sys

        from app.cli import api_command, worker_command
        from core.config import Settings

        self.folder = folder
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        data_dir = folder / "data"
        self.settings = Settings(TEXTCLF_DATA_DIR=data_dir, DATABASE_URL=database_url,
                                 CELERY_BROKER_URL=broker_url)
        self.env = {**{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")},
                    "TEXTCLF_DATA_DIR": str(data_dir), "DATABASE_URL": database_url,
                    "CELERY_BROKER_URL": broker_url, "PYTHONUNBUFFERED": "1",
                    # Faults, not strangers, are under test here: no keys, no rate limits (unless a caller asks).
                    "AUTH_REQUIRED": "false", "RATE_LIMIT_ENABLED": "false", **env}
        self.commands = {
            "api": api_command("127.0.0.1", self.port),
            "worker": worker_command(self.settings),
            "reaper": [sys.executable, "-m", "app.cli", "reaper"],
        }
        self.procs: dict[str, subprocess.Popen] = {}
        self.root = Path(__file__).resolve().parents[1]
        subprocess.run([sys.executable, "-m", "app.cli", "migrate"], env=self.env, cwd=self.root, check=True,
                       capture_output=True, timeout=180)

    def start(self, role: str) -> subprocess.Popen:
        with open(self.folder / f"{role}.log", "ab") as log:
            proc = subprocess.Popen(self.commands[role], env=self.env, cwd=self.root, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[role] = proc
        return proc

    def start_all(self) -> None:
        for role in self.ROLES:
            self.start(role)

    def log(self, role: str) -> str:
        return (self.folder / f"{role}.log").read_text(errors="replace")

    def training_pids(self) -> list[int]:
        """The worker's pool processes (where jobs train)."""
        worker = self.procs.get("worker")
        return children(worker.pid) if worker is not None else []

    def stop(self) -> None:
        for proc in self.procs.values():
            stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM a process group started with start_new_session, SIGKILL it after 20 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def children(pid: int) -> list[int]:
    """Process ids whose parent is `pid` (read from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return sorted(out)
