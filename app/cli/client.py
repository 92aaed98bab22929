"""The client verbs of `textclf`: talk to a running server over HTTP.

    textclf datasets upload train.csv --name trec
    textclf train <dataset id> --set epochs=5 --set model.name=fasttext --watch
    textclf predict "How far is Denver from Aspen ?" --alias default --json

Every command takes --url (TEXTCLF_URL, default http://127.0.0.1:8000) and --key (TEXTCLF_API_KEY, sent as
`Authorization: Bearer <key>`), before its name (`textclf --url URL predict ...`) or after it. An error reply
prints the API's message and exits with status 1.
"""

from __future__ import annotations

import functools
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import requests
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Column, Table

from core.spec import TERMINAL_STATUSES

DEFAULT_URL = "http://127.0.0.1:8000"
ENDED = TERMINAL_STATUSES  # job (and sweep) statuses that never change again
out = Console()  # tables and results: stdout
err = Console(stderr=True)  # progress and messages: stderr, so `--json` output can be piped


class ApiError(click.ClickException):
    """A non-2xx reply, shown as the API's own message (and the fields a validation error names)."""

    def __init__(self, status: int, body: Any):
        error = body.get("error", {}) if isinstance(body, dict) else {}
        message = f"{error.get('message') or 'The server answered with an error.'} (HTTP {status}, " \
                  f"{error.get('code', 'error')})"
        details = error.get("details")
        if isinstance(details, list):
            message += "".join(f"\n  {'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in details
                               if isinstance(d, dict))
        super().__init__(message)
        self.status = status


class Client:
    """A thin wrapper over requests: base URL, the key header, JSON errors raised as ApiError."""

    def __init__(self, url: str, key: str | None):
        self.url = url.rstrip("/")
        self.session = requests.Session()
        if key:
            self.session.headers["Authorization"] = f"Bearer {key}"

    def request(self, method: str, path: str, **kwargs) -> Any:
        try:
            reply = self.session.request(method, self.url + path, timeout=kwargs.pop("timeout", 60), **kwargs)
        except requests.ConnectionError:
            raise click.ClickException(f"cannot reach {self.url}: is `textclf serve` running there? "
                                       "(set --url or TEXTCLF_URL)") from None
        if reply.status_code == 204:
            return None
        try:
            body = reply.json()
        except ValueError:
            body = None
        if not reply.ok:
            if reply.status_code == 401:
                # Both 401s share the code `unauthorized`; what to do next depends on whether a key was sent.
                if "Authorization" in self.session.headers:
                    hint = "the server rejected the API key given (--key or TEXTCLF_API_KEY): check it or make one"
                else:
                    hint = "this server needs an API key; pass --key or set TEXTCLF_API_KEY"
                raise click.ClickException(
                    f"{(body or {}).get('error', {}).get('message', 'unauthorized')} (HTTP 401): {hint}")
            raise ApiError(reply.status_code, body)
        return body

    def get(self, path: str, **kwargs) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs) -> Any:
        return self.request("POST", path, **kwargs)


@dataclass(frozen=True)
class Connection:
    """Where the client commands go: the `textclf` group's --url and --key (or their environment variables)."""

    url: str = DEFAULT_URL
    key: str | None = None


def connection_options(*, top: bool):
    """--url and --key. On the `textclf` group (`top`) they read the environment and the default (the group keeps
    them as a Connection); on a command they default to None, so that only values given after the command's name
    override the group's (an environment variable must not beat `textclf --url URL predict`)."""

    def option(name: str, env: str, default: str | None, what: str):
        if top:
            return click.option(name, envvar=env, default=default, show_default=default is not None,
                                help=f"{what} [env {env}].")
        return click.option(name, default=None, help=f"{what} [default: the one given before the command, or {env}].")

    url = option("--url", "TEXTCLF_URL", DEFAULT_URL, "Server URL")
    key = option("--key", "TEXTCLF_API_KEY", None, "API key")
    return lambda function: url(key(function))


def connection(command):
    """Adds --url and --key to a command and passes it a ready Client as `client`."""

    @connection_options(top=False)
    @functools.wraps(command)
    def wrapper(*args, url: str | None, key: str | None, **kwargs):
        given = click.get_current_context().find_object(Connection) or Connection()
        return command(*args, client=Client(url or given.url, key or given.key), **kwargs)

    return wrapper


json_flag = click.option("--json", "as_json", is_flag=True, help="Print the API's JSON instead of a table.")


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def fmt(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "–"


def when(iso: str | None) -> str:
    return iso[:19].replace("T", " ") if iso else "–"


def status_text(status: str) -> str:
    colour = {"succeeded": "green", "failed": "red", "running": "cyan", "queued": "yellow",
              "pruned": "magenta"}.get(status, "white")
    return f"[{colour}]{status}[/{colour}]"


def id_column() -> Column:
    """Ids are what users copy into the next command: never cut or wrapped."""
    return Column("id", no_wrap=True, min_width=36)


def show_fields(title: str, fields: list[tuple[str, Any]]) -> None:
    """A two-column table; values are rich markup (escape user text)."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for name, value in fields:
        table.add_row(name, str(value))
    out.print(table)


# ---------------------------------------------------------------------------------------------------------
# datasets


@click.group()
def datasets() -> None:
    """Upload and list datasets."""


@datasets.command("upload")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", help="Dataset name (default: the file name).")
@click.option("--text-column", default="text", show_default=True)
@click.option("--label-column", default="label", show_default=True)
@json_flag
@connection
def datasets_upload(file: Path, name: str | None, text_column: str, label_column: str, as_json: bool,
                    client: Client) -> None:
    """Upload a CSV, TSV or JSONL file of labelled texts."""
    with file.open("rb") as handle:
        # The idempotency key makes a retried upload (e.g. after a dropped connection) store one dataset.
        dataset = client.post("/v1/datasets", files={"file": (file.name, handle)},
                              data={"name": name or file.stem, "text_column": text_column,
                                    "label_column": label_column},
                              headers={"Idempotency-Key": uuid.uuid4().hex}, timeout=600)
    if as_json:
        return print_json(dataset)
    labels = ", ".join(f"{label} {count}" for label, count in list(dataset["labels"].items())[:10])
    show_fields("dataset stored", [("id", dataset["id"]), ("name", escape(dataset["name"])),
                                   ("rows", dataset["row_count"]),
                                   ("labels", f"{len(dataset['labels'])}: {escape(labels)}"),
                                   ("scripts", scripts_text(dataset.get("scripts")))])
    for warning in dataset.get("warnings", []):
        err.print(f"[yellow]warning:[/yellow] {escape(str(warning.get('message', warning)))}")


@datasets.command("list")
@json_flag
@connection
def datasets_list(as_json: bool, client: Client) -> None:
    """List uploaded datasets, newest first."""
    page = client.get("/v1/datasets?limit=200")
    if as_json:
        return print_json(page)
    table = Table(id_column(), "name", "rows", "labels", "created")
    for d in page["items"]:
        table.add_row(d["id"], escape(d["name"]), str(d["row_count"]), str(len(d["labels"])), when(d["created_at"]))
    out.print(table)


# ---------------------------------------------------------------------------------------------------------
# train


def parse_value(raw: str) -> Any:
    """'0.01' -> 0.01, 'true' -> True, 'null' -> None, '[3,4]' -> [3, 4]: JSON when it parses, text otherwise."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def parse_assignment(text: str) -> tuple[list[str], Any]:
    """'optimizer.lr=0.01' -> (['optimizer', 'lr'], 0.01); values are JSON when they parse, text otherwise."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise click.BadParameter(f"expected key=value, got {text!r}", param_hint="--set")
    return key.split("."), parse_value(raw)


def build_spec(dataset_id: str, spec_file: Path | None, assignments: tuple[str, ...]) -> dict[str, Any]:
    """The training spec to post: the file's spec, then each --set, then the dataset id."""
    return {**partial_spec(spec_file, assignments), "dataset_id": dataset_id}


def partial_spec(spec_file: Path | None, assignments: tuple[str, ...]) -> dict[str, Any]:
    """The file's spec (or {}) with each --set applied; a sweep posts it as its base."""
    spec: dict[str, Any] = {}
    if spec_file is not None:
        try:
            spec = json.loads(spec_file.read_text())
        except ValueError as exc:
            raise click.BadParameter(f"{spec_file} is not JSON: {exc}", param_hint="--spec-file") from None
        if not isinstance(spec, dict):
            raise click.BadParameter(f"{spec_file} must hold a JSON object", param_hint="--spec-file")
    for text in assignments:
        path, value = parse_assignment(text)
        node = spec
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise click.BadParameter(f"{'.'.join(path)}: {part} is not an object", param_hint="--set")
        node[path[-1]] = value
    return spec


@click.command()
@click.argument("dataset_id")
@click.option("--spec-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSON training spec (see /docs); --set values override it.")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="A spec field, dotted for nested ones: --set epochs=5 --set optimizer.lr=0.01")
@click.option("--watch", is_flag=True, help="Follow the job with a progress bar until it ends.")
@json_flag
@connection
def train(dataset_id: str, spec_file: Path | None, assignments: tuple[str, ...], watch: bool, as_json: bool,
          client: Client) -> None:
    """Start a training job on a dataset."""
    spec = build_spec(dataset_id, spec_file, assignments)
    job = client.post("/v1/jobs", json=spec, headers={"Idempotency-Key": uuid.uuid4().hex})
    if not watch:
        return print_json(job) if as_json else out.print(f"job {job['id']} {status_text(job['status'])}")
    err.print(f"job {job['id']} queued")
    job = watch_job(client, job["id"])
    if as_json:
        print_json(job)
    else:
        show_job(job)
    if job["status"] != "succeeded":
        raise SystemExit(1)


def watch_job(client: Client, job_id: str, interval: float = 1.0) -> dict:
    """Polls the job, drawing a progress bar (epoch, loss, accuracy, ETA) and a line per finished epoch."""
    columns = [TextColumn("{task.description:<10}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
               TextColumn("epoch {task.fields[epoch]}"), TextColumn("loss {task.fields[loss]}"),
               TextColumn("acc {task.fields[acc]}"), TextColumn("ETA {task.fields[eta]}")]
    printed = 0
    with Progress(*columns, console=err) as progress:
        task = progress.add_task("queued", total=100, epoch="–", loss="–", acc="–", eta="–")
        while True:
            job = client.get(f"/v1/jobs/{job_id}")
            history, p = job["history"], job["progress"]
            for record in history[printed:]:
                progress.console.print(  # fits 80 columns
                    f"epoch {record['epoch']:>2}  train loss {fmt(record['train_loss'], 4)} "
                    f"acc {fmt(record.get('train_accuracy'))}  val loss {fmt(record['val_loss'], 4)} "
                    f"acc {fmt(record['val_accuracy'])} F1 {fmt(record['val_macro_f1'])}  lr {record['lr']:.1e}")
            printed = len(history)
            last = history[-1] if history else {}
            eta = p.get("eta_seconds")
            progress.update(task, description=p["stage"], completed=p["percent"],
                            epoch=f"{p['epoch']}/{p['total_epochs']}" if p["total_epochs"] else "–",
                            loss=fmt(last.get("val_loss"), 4), acc=fmt(last.get("val_accuracy")),
                            eta=f"{eta:.0f}s" if isinstance(eta, (int, float)) and job["status"] == "running" else "–")
            if job["status"] in ENDED:
                return job
            time.sleep(interval)


def scripts_text(scripts: dict[str, float] | None) -> str:
    """A dataset's script mix as "Han 93%, Latin 7%"."""
    return ", ".join(f"{name} {share:.0%}" for name, share in (scripts or {}).items()) or "–"


def show_job(job: dict) -> None:
    p, metrics = job["progress"], job.get("metrics") or {}
    fields = [("id", job["id"]), ("status", status_text(job["status"])), ("stage", p["stage"]),
              ("progress", f"{p['percent']:.1f}%  epoch {p['epoch']}/{p['total_epochs']}"),
              ("dataset", job["dataset_id"]), ("model", job.get("model_id") or "–"),
              ("device", job.get("device") or "–"),
              ("tokenizer", (job.get("spec") or {}).get("tokenizer", {}).get("kind", "–")),
              ("created", when(job["created_at"])), ("finished", when(job.get("finished_at")))]
    if metrics:
        fields += [("val accuracy", fmt(metrics.get("val_accuracy"))),
                   ("val macro-F1", fmt(metrics.get("val_macro_f1")))]
        if "test_accuracy" in metrics:
            fields.append(("test accuracy", fmt(metrics["test_accuracy"])))
    if job.get("error"):
        fields.append(("error", f"[red]{job['error']['code']}: {escape(job['error']['message'])}[/red]"))
    show_fields(f"job {job['id']}", fields)
    if job["history"]:
        table = Table("epoch", "train loss", "train acc", "val loss", "val acc", "val macro-F1", "lr", "s",
                      title="history", title_justify="left")
        for r in job["history"]:
            table.add_row(str(r["epoch"]), fmt(r["train_loss"], 4), fmt(r.get("train_accuracy")), fmt(r["val_loss"], 4),
                          fmt(r["val_accuracy"]), fmt(r["val_macro_f1"]), f"{r['lr']:.1e}", f"{r['seconds']:.1f}")
        out.print(table)


# ---------------------------------------------------------------------------------------------------------
# jobs


class DefaultCommandGroup(click.Group):
    """A group whose first argument, when it is no subcommand, goes to a default one: `jobs ID` = `jobs show ID`."""

    default_command = "show"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] != "--help"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


@click.group(cls=DefaultCommandGroup)
def jobs() -> None:
    """List jobs, show one (`textclf jobs ID`), or cancel one (`textclf jobs cancel ID`)."""


@jobs.command("show")
@click.argument("job_id", required=False)
@click.option("--status", type=click.Choice(["queued", "running", "cancelling", "succeeded", "failed", "cancelled",
                                           "pruned"]))
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 200))
@json_flag
@connection
def jobs_show(job_id: str | None, status: str | None, limit: int, as_json: bool, client: Client) -> None:
    """Show one job with its history, or list the newest jobs."""
    if job_id:
        job = client.get(f"/v1/jobs/{job_id}")
        return print_json(job) if as_json else show_job(job)
    page = client.get("/v1/jobs", params={"limit": limit, **({"status": status} if status else {})})
    if as_json:
        return print_json(page)
    out.print(jobs_table(page))


def jobs_table(page: dict) -> Table:
    """A page of jobs; val acc is the served model's (metrics: its best epoch, the TF-IDF blend when on), as in
    `textclf jobs ID`, the models and the sweep leaderboard, not the network's last epoch from the history."""
    table = Table(id_column(), Column("status", no_wrap=True), Column("progress", no_wrap=True), "val acc",
                  caption=f"newest first, {len(page['items'])} of {page['total']}; `textclf jobs ID` shows one")
    for job in page["items"]:
        p = job["progress"]
        epochs = f" {p['epoch']}/{p['total_epochs']}" if p["total_epochs"] else ""
        table.add_row(job["id"], status_text(job["status"]), f"{p['percent']:.0f}%{epochs}",
                      fmt((job.get("metrics") or {}).get("val_accuracy")))
    return table


@jobs.command("cancel")
@click.argument("job_id")
@connection
def jobs_cancel(job_id: str, client: Client) -> None:
    """Cancel a queued or running job."""
    job = client.post(f"/v1/jobs/{job_id}/cancel")
    out.print(f"job {job['id']} {status_text(job['status'])}")


# ---------------------------------------------------------------------------------------------------------
# models and aliases


@click.command()
@click.argument("model_id", required=False)
@json_flag
@connection
def models(model_id: str | None, as_json: bool, client: Client) -> None:
    """List models, or show one with its per-class validation metrics."""
    if model_id is None:
        page = client.get("/v1/models?limit=200")
        if as_json:
            return print_json(page)
        table = Table(id_column(), "name", "aliases", "val acc", "test acc", caption="newest first")
        for m in page["items"]:
            metrics = m["metrics"]
            table.add_row(m["id"], escape(m["name"]), ", ".join(m["aliases"]) or "–",
                          fmt(metrics.get("val_accuracy")), fmt(metrics.get("test_accuracy")))
        return out.print(table)
    model = client.get(f"/v1/models/{model_id}")
    evaluation = client.get(f"/v1/models/{model_id}/evaluation")
    if as_json:
        return print_json({**model, "evaluation": evaluation})
    metrics = model["metrics"]
    show_fields(f"model {model['id']}", [
        ("name", escape(model["name"])), ("aliases", ", ".join(model["aliases"]) or "–"), ("job", model["job_id"]),
        ("labels", escape(", ".join(model["labels"]))), ("kind", model["spec"].get("model", {}).get("name", "–")),
        ("tokenizer", model["spec"].get("tokenizer", {}).get("kind", "–")),
        ("val accuracy", fmt(metrics.get("val_accuracy"))), ("val macro-F1", fmt(metrics.get("val_macro_f1"))),
        ("test accuracy", fmt(metrics.get("test_accuracy"))), ("created", when(model["created_at"]))])
    split = evaluation.get("test") or evaluation.get("validation")
    if split:
        name = "test" if evaluation.get("test") else "validation"
        table = Table("label", "precision", "recall", "F1", "support", title=f"per class ({name})",
                      title_justify="left")
        for c in split["per_class"]:
            table.add_row(escape(c["label"]), fmt(c["precision"]), fmt(c["recall"]), fmt(c["f1"]), str(c["support"]))
        out.print(table)


@click.group()
def alias() -> None:
    """Point names at models (`default` chooses what /v1/predict serves)."""


@alias.command("set")
@click.argument("name")
@click.argument("model_id")
@connection
def alias_set(name: str, model_id: str, client: Client) -> None:
    """Point alias NAME at MODEL_ID."""
    result = client.request("PUT", f"/v1/aliases/{name}", json={"model_id": model_id})
    out.print(f"alias {result['name']} -> {result['model_id']}")


@alias.command("delete")
@click.argument("name")
@connection
def alias_delete(name: str, client: Client) -> None:
    """Remove alias NAME."""
    client.request("DELETE", f"/v1/aliases/{name}")
    out.print(f"alias {name} removed")


# ---------------------------------------------------------------------------------------------------------
# predict


@click.command()
@click.argument("texts", nargs=-1)
@click.option("--file", "text_file", type=click.File("r", encoding="utf-8"),
              help="Also classify this file, one text per line ('-' reads standard input).")
@click.option("--model", "model_id", help="Model id (default: the `default` alias, else the newest model).")
@click.option("--alias", "alias_name", help="Use the model this alias points at.")
@click.option("--top-k", default=1, show_default=True, type=click.IntRange(1, 100), help="Labels per text.")
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(1, 10_000),
              help="Texts per request.")
@json_flag
@connection
def predict(texts: tuple[str, ...], text_file, model_id: str | None, alias_name: str | None, top_k: int,
            batch_size: int, as_json: bool, client: Client) -> None:
    """Classify TEXTS (and/or the lines of --file)."""
    if model_id and alias_name:
        raise click.UsageError("give --model or --alias, not both")
    items = list(texts)
    if text_file is not None:
        items += [line.rstrip("\r\n") for line in text_file if line.strip()]
    if not items:
        raise click.UsageError("nothing to classify: give texts as arguments or --file")
    if model_id:
        path, params = f"/v1/models/{model_id}/predict", {}
    else:
        path, params = "/v1/predict", ({"alias": alias_name} if alias_name else {})
    answer: dict[str, Any] = {}
    for start in range(0, len(items), batch_size):
        reply = client.post(path, params=params, json={"texts": items[start:start + batch_size], "top_k": top_k})
        if answer and reply["model_id"] != answer["model_id"]:
            # One reply must come from one model: an alias moved between two batches.
            raise click.ClickException(f"the model changed from {answer['model_id']} to {reply['model_id']} "
                                       "between batches; run again")
        # More batches than one: the API's reply, its predictions those of every batch in order.
        answer = {**reply, "predictions": answer.get("predictions", []) + reply["predictions"]}
    if as_json:
        return print_json(answer)
    table = Table("text", "label", "score", *(["top k"] if top_k > 1 else []))
    for text, p in zip(items, answer["predictions"], strict=True):
        label = escape(p["label"]) if p["label"] is not None else "[dim](abstained)[/dim]"
        others = [escape("  ".join(f"{k['label']} {k['score']:.3f}" for k in p["top_k"]))] if top_k > 1 else []
        table.add_row(escape(text), label, f"{p['score']:.3f}", *others)
    out.print(table)
    out.print(f"model {answer['model_id']}", soft_wrap=True)


COMMANDS = [datasets, train, jobs, models, alias, predict]

