"""`textclf sweep`: train one spec several ways (a grid or a random search over spec fields) and compare the runs.

    textclf sweep create <dataset id> --grid optimizer.name=sgd,momentum,adam --set epochs=6 --watch
    textclf sweep show <sweep id>            # the leaderboard (`textclf sweep` lists sweeps)
    textclf sweep promote <sweep id> prod    # point alias `prod` at the best child's model

The request body and the replies are the API's (POST /v1/sweeps, GET /v1/sweeps/{id}): see /docs.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import click
from rich import box
from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.table import Column, Table

from app.cli.client import (
    ENDED,
    Client,
    DefaultCommandGroup,
    connection,
    err,
    fmt,
    id_column,
    json_flag,
    out,
    parse_value,
    partial_spec,
    print_json,
    show_fields,
    status_text,
    when,
)

METRICS = ("val_macro_f1", "val_accuracy", "val_loss")
# [log:][int:]LOW:HIGH, e.g. log:1e-4:1e-1 or int:3:10: a range to sample from (anything else is a list of choices).
RANGE = re.compile(r"(?P<flags>(?:(?:log|int):)*)(?P<low>[^:]+):(?P<high>[^:]+)")

# ---------------------------------------------------------------------------------------------------------
# arguments -> request body (pure: unit-tested)


def split_values(raw: str) -> list[str]:
    """'sgd,adam' -> ['sgd', 'adam']; a comma inside [], {} or "" stays: '[3,4],[5]' -> ['[3,4]', '[5]']."""
    parts, depth, quoted, start = [], 0, False, 0
    for i, char in enumerate(raw):
        if char == '"':
            quoted = not quoted
        elif not quoted and char in "[{":
            depth += 1
        elif not quoted and char in "]}":
            depth -= 1
        elif char == "," and not quoted and depth == 0:
            parts.append(raw[start:i])
            start = i + 1
    parts.append(raw[start:])
    return [part.strip() for part in parts]


def _key_and_raw(text: str, option: str) -> tuple[str, str]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip() or not raw.strip():
        raise click.BadParameter(f"expected KEY=VALUES, got {text!r}", param_hint=option)
    return key.strip(), raw


def _choices(key: str, raw: str, option: str) -> list[Any]:
    parts = split_values(raw)
    if "" in parts:
        raise click.BadParameter(f"{key}: empty value in {raw!r}", param_hint=option)
    return [parse_value(part) for part in parts]


def _no_repeats(pairs: list[tuple[str, Any]], option: str) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise click.BadParameter(f"{key} given twice", param_hint=option)
        result[key] = value
    return result


def parse_grid(items: tuple[str, ...]) -> dict[str, list[Any]]:
    """('optimizer.name=sgd,adam', 'epochs=3,6') -> {'optimizer.name': ['sgd', 'adam'], 'epochs': [3, 6]}.

    Each value parses like `train --set`'s (numbers, true/false, null, JSON lists, else text)."""
    pairs = []
    for text in items:
        key, raw = _key_and_raw(text, "--grid")
        pairs.append((key, _choices(key, raw, "--grid")))
    return _no_repeats(pairs, "--grid")


def _number(key: str, text: str, integer: bool) -> float | int:
    value = parse_value(text)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and value != int(value)):
        kind = "an integer" if integer else "a number"
        raise click.BadParameter(f"{key}: {text!r} is not {kind}", param_hint="--space")
    return int(value) if integer else value


def parse_space(items: tuple[str, ...]) -> dict[str, Any]:
    """Random-search dimensions: 'optimizer.lr=log:1e-4:1e-1' -> {'low': 1e-4, 'high': 0.1, 'log': True},
    'epochs=int:3:10' -> {'low': 3, 'high': 10, 'integer': True}, 'model.dropout=0.1:0.6' -> {'low', 'high'},
    'optimizer.name=adam,sgd' -> ['adam', 'sgd'] (a uniform choice)."""
    pairs = []
    for text in items:
        key, raw = _key_and_raw(text, "--space")
        if ":" not in raw:
            pairs.append((key, _choices(key, raw, "--space")))
            continue
        match = RANGE.fullmatch(raw.strip())
        if not match:
            raise click.BadParameter(f"{key}: expected [log:][int:]LOW:HIGH or a list of choices, got {raw!r}",
                                     param_hint="--space")
        flags = set(match["flags"].split(":")) - {""}
        dimension: dict[str, Any] = {"low": _number(key, match["low"], "int" in flags),
                                     "high": _number(key, match["high"], "int" in flags)}
        if "log" in flags:
            dimension["log"] = True
        if "int" in flags:
            dimension["integer"] = True
        pairs.append((key, dimension))
    return _no_repeats(pairs, "--space")


def parse_milestones(text: str | None) -> list[int] | None:
    """'2,4' -> [2, 4]: the epochs after which successive halving compares the children."""
    if text is None:
        return None
    try:
        milestones = [int(part) for part in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected epochs like 2,4, got {text!r}", param_hint="--prune") from None
    if any(m < 1 for m in milestones):
        raise click.BadParameter("epochs start at 1", param_hint="--prune")
    return milestones


def sweep_body(dataset_id: str, *, base: dict[str, Any], grid: dict[str, list[Any]], space: dict[str, Any],
               samples: int | None = None, seed: int | None = None, metric: str | None = None,
               max_parallel: int | None = None, milestones: list[int] | None = None,
               keep_fraction: float | None = None, name: str | None = None) -> dict[str, Any]:
    """The POST /v1/sweeps body; options left out are left to the server's defaults."""
    if grid and (space or samples):
        raise click.UsageError("a sweep is a grid (--grid) or a random search (--random N --space ...), not both")
    if space and not samples:
        raise click.UsageError("--space needs --random N: how many specs to sample")
    if samples and not space:
        raise click.UsageError("--random N needs at least one --space KEY=RANGE")
    if not grid and not space:
        raise click.UsageError("give --grid KEY=V1,V2,... or --random N with --space KEY=RANGE")
    if keep_fraction is not None and not milestones:
        raise click.UsageError("--keep-fraction needs --prune EPOCHS")
    # A spec file written for `train` may name a dataset: the sweep's argument names it instead.
    base = {key: value for key, value in base.items() if key != "dataset_id"}
    pruning = None if not milestones else {
        "milestones": milestones, **({"keep_fraction": keep_fraction} if keep_fraction is not None else {})}
    optional = {"name": name, "grid": grid or None, "space": space or None, "samples": samples, "seed": seed,
                "metric": metric, "max_parallel": max_parallel, "pruning": pruning}
    return {"dataset_id": dataset_id, "base": base, **{k: v for k, v in optional.items() if v is not None}}


# ---------------------------------------------------------------------------------------------------------
# drawing a sweep (pure: unit-tested)


def value_text(value: Any) -> str:
    """A searched value, short: 0.000234 -> '0.000234', 0.123456 -> '0.123', 'adam' -> 'adam'."""
    if isinstance(value, float):
        return f"{value:.3g}"
    return value if isinstance(value, str) else json.dumps(value)


def params_text(child: dict) -> str:
    """{'optimizer.name': 'sgd', 'optimizer.lr': 0.1} -> 'optimizer.name=sgd optimizer.lr=0.1'."""
    return " ".join(f"{key}={value_text(value)}" for key, value in child["params"].items())


def counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {status}" for status, n in counts.items() if n) or "no children"


def ranked(children: list[dict]) -> list[dict]:
    """Ranked children, best first, then those without a metric yet, in creation order."""
    return sorted(children, key=lambda c: (c.get("rank") is None, c.get("rank") or 0, c["index"]))


# (header, key); headers are two short lines so that a number's column stays 5 characters wide
NUMBERS = [("val\nacc", "val_accuracy"), ("val\nF1", "val_macro_f1"), ("val\nloss", "val_loss"),
           ("test\nacc", "test_accuracy"), ("test\nF1", "test_macro_f1")]


def _param_column(key: str, children: list[dict]) -> Column:
    """'optimizer.name' -> a column headed optimizer / name, as wide as its values (up to 14: longer ones fold)."""
    words = [value_text(c["params"][key]) for c in children if key in c["params"]] + key.split(".")
    return Column(key.replace(".", "\n"), overflow="fold", min_width=min(14, max(map(len, words))))


def leaderboard_table(sweep: dict) -> Table:
    """Every child as a row, best first: a column per searched spec field, the sweep's metric in bold.

    Made to fit a terminal: no vertical rules, short model ids (the best child's line gives the whole one), val loss
    only when it is the metric, and the test columns only once some child has test metrics (a spec without a test
    split has none). `--json` and the dashboard have everything."""
    metric, children = sweep["metric"], sweep["children"]
    keys = list(dict.fromkeys(key for c in children for key in c["params"]))
    numbers = [(header, key) for header, key in NUMBERS
               if key == metric or key in ("val_accuracy", "val_macro_f1")
               or (key.startswith("test_") and any(c.get(key) is not None for c in children))]
    table = Table(Column("rank", justify="right", no_wrap=True), Column("#", justify="right", no_wrap=True),
                  *(_param_column(key, children) for key in keys), Column("status", min_width=9),
                  Column("best\nepoch", justify="right", no_wrap=True),
                  *(Column(header, justify="right", no_wrap=True, min_width=5, style="bold" if key == metric else None,
                           header_style="bold underline" if key == metric else "bold") for header, key in numbers),
                  Column("train\ns", justify="right", no_wrap=True), Column("model", no_wrap=True),
                  box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False, title_justify="left",
                  title=f"leaderboard ({metric}, {'higher' if sweep['higher_is_better'] else 'lower'} is better)")
    for c in ranked(children):
        status = status_text(c["status"])
        if c.get("duplicate_of") is not None:
            status += f" =#{c['duplicate_of']}"
        elif c.get("reused"):
            status += " (reused)"
        table.add_row(str(c.get("rank") or "–"), str(c["index"]),
                      *(escape(value_text(c["params"][key])) if key in c["params"] else "–" for key in keys),
                      status, str(c.get("best_epoch") or "–"), *(fmt(c.get(key)) for _, key in numbers),
                      fmt(c.get("train_seconds"), 1), (c.get("model_id") or "–")[:8])
    return table


def sweep_view(sweep: dict) -> Group:
    """One line of state above the leaderboard: what `--watch` redraws."""
    line = (f"sweep {sweep['id']} {status_text(sweep['status'])}  {len(sweep['children'])} children: "
            f"{counts_text(sweep['counts'])}")
    return Group(line, leaderboard_table(sweep))


def best_text(sweep: dict) -> str:
    """The best child's line (rich markup), or why there is none."""
    best = sweep.get("best")
    if not best:
        return f"sweep {sweep['id']} {status_text(sweep['status'])}: no child has succeeded"
    return (f"best: child #{best['index']} {escape(params_text(best))}  {sweep['metric']} "
            f"{fmt(best.get(sweep['metric']))}  model {best['model_id']}")


def show_sweep(sweep: dict) -> None:
    show_fields(f"sweep {sweep['id']}", [
        ("name", escape(sweep.get("name") or "–")), ("status", status_text(sweep["status"])),
        ("search", sweep["search"] + (f", {sweep['samples']} samples" if sweep.get("samples") else "")),
        ("children", f"{len(sweep['children'])}: {counts_text(sweep['counts'])}"),
        ("dataset", sweep["dataset_id"]), ("created", when(sweep["created_at"])),
        ("finished", when(sweep.get("finished_at"))), ("wall time", fmt(sweep.get("wall_seconds"), 1) + " s")])
    out.print(leaderboard_table(sweep))
    out.print(best_text(sweep), soft_wrap=True)


# ---------------------------------------------------------------------------------------------------------
# commands


def watch_sweep(client: Client, sweep_id: str, interval: float = 2.0) -> dict:
    """Redraws the leaderboard on stderr until the sweep ends; returns its last state."""
    sweep = client.get(f"/v1/sweeps/{sweep_id}", params={"history": "false"})
    with Live(sweep_view(sweep), console=err, auto_refresh=False) as live:
        while sweep["status"] not in ENDED:
            time.sleep(interval)
            sweep = client.get(f"/v1/sweeps/{sweep_id}", params={"history": "false"})
            live.update(sweep_view(sweep), refresh=True)
    return sweep


def finish_watch(client: Client, sweep: dict, as_json: bool) -> None:
    """After --watch: the sweep as JSON or its best child; exit 1 unless the sweep succeeded."""
    if as_json:
        print_json(client.get(f"/v1/sweeps/{sweep['id']}"))
    else:
        out.print(best_text(sweep), soft_wrap=True)
        if sweep.get("best"):
            out.print(f"point an alias at it: textclf sweep promote {sweep['id']} <alias>", soft_wrap=True)
    if sweep["status"] != "succeeded":
        raise SystemExit(1)


@click.group(cls=DefaultCommandGroup)
def sweep() -> None:
    """Train a spec several ways and compare: create, show (`textclf sweep ID`), cancel, promote."""


@sweep.command("create")
@click.argument("dataset_id")
@click.option("--grid", "grid", multiple=True, metavar="KEY=V1,V2,...",
              callback=lambda _ctx, _param, items: parse_grid(items),
              help="A spec field and the values to try; several --grid make every combination: "
                   "--grid optimizer.name=sgd,momentum,adam --grid scheduler.name=step,cosine")
@click.option("--random", "samples", type=click.IntRange(1), metavar="N",
              help="Random search: sample N specs from the --space ranges instead of a grid.")
@click.option("--space", "space", multiple=True, metavar="KEY=RANGE",
              callback=lambda _ctx, _param, items: parse_space(items),
              help="A random-search range: log:1e-4:1e-1 (log-uniform), 0.1:0.6, int:3:10, or choices adam,sgd.")
@click.option("--seed", type=int, help="Random search: the sampling seed (the training seed is --set seed=N).")
@click.option("--spec-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSON base spec that every child starts from; --set values override it.")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="A base spec field, like train's: --set epochs=6 --set model.name=fasttext")
@click.option("--metric", type=click.Choice(METRICS), help="What ranks the children [server default: val_macro_f1].")
@click.option("--max-parallel", type=click.IntRange(1), help="Children training at once.")
@click.option("--prune", "milestones", callback=lambda _ctx, _param, text: parse_milestones(text), metavar="EPOCHS",
              help="Successive halving: after these epochs (e.g. 2,4) stop the worse children.")
@click.option("--keep-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="With --prune: the share of children kept at each of its epochs [server default].")
@click.option("--name", help="Names the sweep and its children's models.")
@click.option("--watch", is_flag=True, help="Redraw the leaderboard until the sweep ends, then print the best child.")
@json_flag
@connection
def sweep_create(dataset_id: str, grid: dict, samples: int | None, space: dict, seed: int | None,
                 spec_file: Path | None, assignments: tuple[str, ...], metric: str | None, max_parallel: int | None,
                 milestones: list[int] | None, keep_fraction: float | None, name: str | None, watch: bool,
                 as_json: bool, client: Client) -> None:
    """Start a sweep on a dataset: a grid of spec values, or a random search."""
    body = sweep_body(dataset_id, base=partial_spec(spec_file, assignments), grid=grid, space=space,
                      samples=samples, seed=seed, metric=metric, max_parallel=max_parallel, milestones=milestones,
                      keep_fraction=keep_fraction, name=name)
    created = client.post("/v1/sweeps", json=body)
    if not watch:
        if as_json:
            return print_json(created)
        return out.print(f"sweep {created['id']} {status_text(created['status'])}: "
                         f"{len(created['children'])} children")
    err.print(f"sweep {created['id']}: {len(created['children'])} children")
    finish_watch(client, watch_sweep(client, created["id"]), as_json)


@sweep.command("show")
@click.argument("sweep_id", required=False)
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 200))
@click.option("--watch", is_flag=True, help="Redraw the leaderboard until the sweep ends, then print the best child.")
@json_flag
@connection
def sweep_show(sweep_id: str | None, limit: int, watch: bool, as_json: bool, client: Client) -> None:
    """Show one sweep's leaderboard, or list the newest sweeps."""
    if watch:
        if not sweep_id:
            raise click.UsageError("--watch follows one sweep: give its id")
        return finish_watch(client, watch_sweep(client, sweep_id), as_json)
    if sweep_id:
        found = client.get(f"/v1/sweeps/{sweep_id}", params={} if as_json else {"history": "false"})
        return print_json(found) if as_json else show_sweep(found)
    page = client.get("/v1/sweeps", params={"limit": limit})
    if as_json:
        return print_json(page)
    table = Table(id_column(), Column("name", overflow="fold", min_width=6), Column("status", min_width=9),
                  Column("children", min_width=11), Column("best", min_width=5), "created", box=box.SIMPLE_HEAD,
                  collapse_padding=True, pad_edge=False,
                  caption=f"newest first, {len(page['items'])} of {page['total']}; `textclf sweep ID` shows one")
    for item in page["items"]:
        best = item.get("best")
        table.add_row(item["id"], escape(item.get("name") or "–"), status_text(item["status"]),
                      f"{item['search']}: {counts_text(item['counts'])}",
                      f"{fmt(best.get(item['metric']))} {item['metric']}" if best else "–",
                      when(item["created_at"])[:16])
    out.print(table)


@sweep.command("cancel")
@click.argument("sweep_id")
@connection
def sweep_cancel(sweep_id: str, client: Client) -> None:
    """Cancel every child of a sweep that has not finished."""
    cancelled = client.post(f"/v1/sweeps/{sweep_id}/cancel")
    out.print(f"sweep {cancelled['id']} {status_text(cancelled['status'])}: {counts_text(cancelled['counts'])}")


@sweep.command("promote")
@click.argument("sweep_id")
@click.argument("alias_name", metavar="ALIAS")
@connection
def sweep_promote(sweep_id: str, alias_name: str, client: Client) -> None:
    """Point ALIAS at the model of the sweep's best child."""
    result = client.post(f"/v1/sweeps/{sweep_id}/promote", json={"alias": alias_name})
    out.print(f"alias {result['alias']} -> {result['model_id']} (child #{result['child']})")
