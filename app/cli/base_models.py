"""`textclf base-models add|list|remove`: install pretrained encoders for `encoder` jobs on this machine's
database (DATABASE_URL) and BASE_MODELS_DIR directly, no server needed (admin keys can do the same over
/v1/base-models)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape

from app.cli.keys import local_session
from core.config import get_settings
from core.errors import ServiceError

console = Console(stderr=True)


def _fail(exc: ServiceError) -> click.ClickException:
    """The API's message, and each problem on its own line (a refused folder lists them all)."""
    lines = [exc.message]
    if isinstance(exc.details, list):
        lines += [f"  {'/'.join(str(p) for p in d.get('loc', []))}: {d.get('msg')}" for d in exc.details
                  if isinstance(d, dict)]
    return click.ClickException("\n".join(lines))


@click.group("base-models")
def base_models() -> None:
    """Install, list and remove base models: pretrained encoders that `encoder` jobs fine-tune."""


@base_models.command("add")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--name", help="Name to install it under (default: the folder's name).")
def add(path: Path, name: str | None) -> None:
    """Install the Hugging Face folder PATH (config.json, model.safetensors, tokenizer.json; no pickle files)."""
    from core.base_models import remove_base_model_files
    from core.db import base_models as db

    settings = get_settings()
    row = None
    try:
        with local_session(settings) as session:
            row = db.install_base_model(session=session, settings=settings, src=path, name=name)
    except ServiceError as exc:
        raise _fail(exc) from None
    except Exception:
        if row is not None:  # the commit failed: no folder without its row
            remove_base_model_files(settings, row.name)
        raise
    console.print(f"installed base model [bold]{escape(row.name)}[/bold]: {row.architecture}, "
                  f"{row.num_parameters / 1e6:.1f} M parameters, {row.num_layers} layers of {row.hidden_size}, "
                  f"up to {row.max_length} tokens, {row.size_bytes / 2**20:.1f} MiB")


@base_models.command("list")
def list_() -> None:
    """List installed base models, oldest first (the first is what an encoder spec without base_model trains)."""
    from core.db import base_models as db

    with local_session(get_settings()) as session:
        rows = db.list_base_models(session=session)
    # Plain columns, as `textclf keys list`: greppable whatever the terminal width.
    click.echo(f"{'ARCHITECTURE':12}  {'PARAMS':>8}  {'LAYERS':>6}  {'HIDDEN':>6}  {'VOCAB':>7}  {'MAX LEN':>7}  "
               f"{'INSTALLED':16}  NAME")
    for r in rows:
        click.echo(f"{r.architecture:12}  {r.num_parameters / 1e6:>7.1f}M  {r.num_layers:>6}  {r.hidden_size:>6}  "
                   f"{r.vocab_size:>7}  {r.max_length:>7}  {r.created_at.strftime('%Y-%m-%d %H:%M'):16}  {r.name}")


@base_models.command("remove")
@click.argument("name")
def remove(name: str) -> None:
    """Remove base model NAME and its files (refused while a queued or running job fine-tunes it)."""
    from core.base_models import remove_base_model_files
    from core.db import base_models as db

    settings = get_settings()
    try:
        with local_session(settings) as session:
            db.delete_base_model(session=session, name=name)
    except ServiceError as exc:
        raise _fail(exc) from None
    remove_base_model_files(settings, name)  # after the commit: a failed one leaves the model usable
    console.print(f"removed base model {escape(name)}")
