"""The `textclf` command: run the service (serve, api, worker, migrate)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
from rich.console import Console

from app.cli import client, sweeps
from app.cli.base_models import base_models
from app.cli.keys import bootstrap_admin_key, keys, warn_auth_off
from core.config import get_settings
from core.worker_start import EXIT_CANNOT_START

console = Console(stderr=True)


@click.group()
@click.version_option(package_name="textclf")
@client.connection_options(top=True)
@click.pass_context
def main(ctx: click.Context, url: str, key: str | None) -> None:
    """textclf: train text classifiers on demand and serve them."""
    client_verbs = {command.name for command in (*client.COMMANDS, sweeps.sweep)}
    given = [f"--{name}" for name in ("url", "key")
             if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE]
    if given and ctx.invoked_subcommand not in client_verbs:
        # `textclf --url URL keys create` would otherwise make the key in the local database, not on that server.
        raise click.UsageError(f"{'/'.join(given)} is for the client commands ({', '.join(sorted(client_verbs))}); "
                               f"`{ctx.invoked_subcommand}` works on this machine's settings (DATABASE_URL)")
    ctx.obj = client.Connection(url, key)


main.add_command(keys)
main.add_command(base_models)


@main.command()
def migrate() -> None:
    """Apply database migrations (alembic upgrade head)."""
    from core.db.migrate import upgrade

    settings = get_settings()
    if settings.database_url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)  # the embedded database's folder
    upgrade(settings.database_url)
    console.print("[green]database is at the newest schema[/green]")


def worker_command(settings) -> list[str]:
    """The Celery worker command line: WORKER_CONCURRENCY jobs at a time, a fresh process per job."""
    cmd = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--loglevel", "INFO",
           "--concurrency", str(settings.worker_concurrency), "--max-tasks-per-child", "1"]
    if settings.celery_broker_url.startswith("filesystem"):
        # The filesystem transport has no fan-out exchange: gossip, mingle and heartbeats have nothing to ride on.
        cmd += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    return cmd


def api_command(host: str, port: int) -> list[str]:
    """The command line of the API role (`textclf api`), as `textclf serve` starts it."""
    return [sys.executable, "-m", "app.cli", "api", "--host", host, "--port", str(port)]


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on.")
def api(host: str, port: int) -> None:
    """Run the API alone: Granian with API_WORKERS processes (production: behind compose's port)."""
    from app import server

    server.run(get_settings(), host, port)


@main.command()
def worker() -> None:
    """Run a Celery training worker (production: one per GPU)."""
    os.execv(sys.executable, worker_command(get_settings()))


@main.command()
@click.option("--interval", type=float, help="Seconds between passes (default: REAPER_INTERVAL).")
@click.option("--health-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Touched after every successful pass (for container healthchecks).")
def reaper(interval: float | None, health_file: Path | None) -> None:
    """Re-queue training jobs whose worker stopped sending heartbeats (run one per deployment)."""
    from app.reaper import run_forever
    from core.broker import make_celery
    from core.db.session import make_engine, make_sessionmaker
    from core.logs import configure_logging

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    run_forever(sessionmaker=make_sessionmaker(make_engine(settings.database_url)), celery=make_celery(settings),
                settings=settings, interval_s=interval or settings.reaper_interval, health_file=health_file)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on.")
@click.option("--no-worker", is_flag=True, help="Serve the API only (workers run elsewhere).")
def serve(host: str, port: int, no_worker: bool) -> None:
    """Run the whole service: migrations, the API under Granian, a training worker and the reaper of lost jobs,
    each restarted if it dies."""
    from core.db.migrate import upgrade

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.artifact_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url)
    if settings.auth_required:
        bootstrap_admin_key(settings)
    else:
        warn_auth_off()
    database = "SQLite at " + settings.database_url.removeprefix("sqlite:///") if settings.is_sqlite else "PostgreSQL"
    console.print(f"[bold]textclf[/bold] on http://{host}:{port}  database: {database}  "
                  f"broker: {settings.celery_broker_url.split('://')[0]}  artifacts: {settings.artifact_dir}  "
                  f"auth: {'API keys' if settings.auth_required else '[red]OFF[/red]'}")
    # Children read the same settings from the environment; pin the resolved paths so a different cwd agrees.
    env = {**os.environ, "TEXTCLF_DATA_DIR": str(settings.data_dir), "DATABASE_URL": settings.database_url,
           "CELERY_BROKER_URL": settings.celery_broker_url, "ARTIFACT_DIR": str(settings.artifact_dir),
           "BASE_MODELS_DIR": str(settings.base_models_dir)}
    commands = {"api": api_command(host, port),
                "reaper": [sys.executable, "-m", "app.cli", "reaper"]}
    if not no_worker:
        commands["worker"] = worker_command(settings)
    Supervisor(commands, env).run()


class Supervisor:
    """Keeps child processes running: restarts one that dies (but not one that exits with EXIT_CANNOT_START),
    stops all on SIGINT/SIGTERM."""

    def __init__(self, commands: dict[str, list[str]], env: dict[str, str]):
        self.commands = commands
        self.env = env
        self.procs: dict[str, subprocess.Popen] = {}
        self.stopping = False

    def start(self, name: str) -> None:
        self.procs[name] = subprocess.Popen(self.commands[name], env=self.env)
        console.print(f"started {name} (pid {self.procs[name].pid})")

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        for name in self.commands:
            self.start(name)
        restarts: dict[str, list[float]] = {name: [] for name in self.commands}
        try:
            while not self.stopping:
                time.sleep(0.5)
                for name, proc in list(self.procs.items()):
                    code = proc.poll()
                    if code is None or self.stopping:
                        continue
                    if code == EXIT_CANNOT_START:
                        # It said why (missing dependencies); restarting cannot fix that. The others keep running.
                        console.print(f"[red]{name} cannot start here (exit {code}, see above); not restarting it"
                                      "[/red]")
                        del self.procs[name]
                        continue
                    now = time.monotonic()
                    recent = [t for t in restarts[name] if now - t < 60] + [now]
                    restarts[name] = recent
                    # Back off when a child keeps dying at start (bad config), instead of spinning.
                    delay = min(30.0, 0.5 * 2 ** (len(recent) - 1))
                    console.print(f"[yellow]{name} exited with {code}; restarting in {delay:.1f}s[/yellow]")
                    time.sleep(delay)
                    if not self.stopping:
                        self.start(name)
        finally:
            self.shutdown()

    def _stop(self, signum, _frame) -> None:
        self.stopping = True

    def shutdown(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 20
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
        console.print("textclf stopped")


# The client verbs (datasets, train, jobs, sweep, models, alias, predict) talk to a running server over HTTP.
for _command in [*client.COMMANDS, sweeps.sweep]:
    main.add_command(_command)

