"""`textclf keys create|list|revoke`: manage API keys on the database directly (DATABASE_URL), no server needed.

Also the first-start bootstrap of `textclf serve`: with keys required and none made yet, an admin key is
created, printed once and written to DATA_DIR/admin.key (mode 0600).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel

from core.config import Settings, get_settings
from core.spec import Scope

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

console = Console(stderr=True)
ADMIN_KEY_FILE = "admin.key"


@contextlib.contextmanager
def local_session(settings: Settings) -> Iterator[Session]:
    """One transaction on DATABASE_URL (committed if the block succeeds); the engine is closed afterwards."""
    from core.db.migrate import upgrade
    from core.db.session import make_engine, make_sessionmaker

    if settings.database_url.startswith("sqlite"):
        # The embedded database, as `textclf serve` would start it: these commands work in a fresh folder too.
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        with make_sessionmaker(engine).begin() as session:
            yield session
    finally:
        engine.dispose()


@click.group("keys")
def keys() -> None:
    """Create, list and revoke API keys (on DATABASE_URL directly)."""


def _name(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """The same rule as POST /v1/keys: this command writes to the database directly."""
    from pydantic import TypeAdapter, ValidationError

    from core.spec import Name

    try:
        return TypeAdapter(Name).validate_python(value)
    except ValidationError as exc:
        raise click.BadParameter(exc.errors()[0]["msg"]) from None


@keys.command("create")
@click.option("--name", required=True, callback=_name, help="Who or what will use the key.")
@click.option("--scope", "scopes", required=True, multiple=True, type=click.Choice([s.value for s in Scope]),
              help="read, train, predict or admin; repeat for several.")
def create(name: str, scopes: tuple[str, ...]) -> None:
    """Create a key and print its secret on stdout (shown this once: only its hash is stored)."""
    from core.db import api_keys

    with local_session(get_settings()) as session:
        key, secret = api_keys.create_key(session=session, name=name, scopes=list(scopes))
        console.print(f"created key [bold]{key.prefix}[/bold] id {key.id} scopes {','.join(key.scopes)}; "
                      "the secret below is not shown again")
    click.echo(secret)


@keys.command("list")
def list_() -> None:
    """List keys (prefix, scopes, last use); secrets are never shown."""
    from core.db import api_keys

    with local_session(get_settings()) as session:
        rows, _ = api_keys.list_keys(session=session)
    # Plain columns (name last, it varies most): readable, and greppable in scripts whatever the terminal width.
    click.echo(f"{'ID':36}  {'PREFIX':11}  {'SCOPES':24}  {'CREATED':16}  {'LAST USED':16}  {'REVOKED':16}  NAME")
    for k in rows:
        click.echo(f"{k.id!s:36}  {k.prefix:11}  {','.join(k.scopes):24}  {_when(k.created_at):16}  "
                   f"{_when(k.last_used_at):16}  {_when(k.revoked_at):16}  {k.name}")


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment else "-"


@keys.command("revoke")
@click.argument("key_id", type=click.UUID)
def revoke(key_id: uuid.UUID) -> None:
    """Revoke a key by id: requests with it get 401 from now on."""
    from core.db import api_keys

    with local_session(get_settings()) as session:
        key = api_keys.revoke_key(session=session, key_id=key_id)
        if key is None:
            raise click.ClickException(f"no API key with id {key_id}")
        console.print(f"revoked key {key.prefix} ({escape(key.name)})")


def bootstrap_admin_key(settings: Settings) -> Path | None:
    """First start with keys required and no key ever made: create an admin key, write it to DATA_DIR/admin.key
    (0600) and print it once. Returns the file's path, or None when keys already exist."""
    from core.db import api_keys

    with local_session(settings) as session:
        if api_keys.count_keys(session=session):
            return None
        _key, secret = api_keys.create_key(session=session, name="bootstrap admin", scopes=[Scope.admin])
        path = settings.data_dir / ADMIN_KEY_FILE
        # Created 0600 from the start (no window where others may read it); O_TRUNC replaces a stale file.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret + "\n")
        os.chmod(path, 0o600)  # an older file keeps its mode through O_TRUNC
    console.print(Panel(f"[bold]{secret}[/bold]\n\nAn admin API key was created on first start and written to "
                        f"{path} (mode 0600).\nSend it as 'Authorization: Bearer <key>'; make narrower keys with "
                        "`textclf keys create --name NAME --scope read --scope predict`.",
                        title="textclf admin key (shown once)", style="bold yellow"))
    return path


def warn_auth_off() -> None:
    """The loud start-up banner when AUTH_REQUIRED=false."""
    console.print(Panel("AUTH_REQUIRED=false: API keys are OFF. Anyone who can reach this port can upload data, "
                        "train, predict and change aliases. Use only on a trusted machine.",
                        title="WARNING: no authentication", style="bold red"))
