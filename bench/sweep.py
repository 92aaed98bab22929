"""A sweep through the public API, as a user runs one: optimizers × schedules × batch norm on one dataset.

    python bench/sweep.py                     # TREC: 12 children 2 at a time, then the same 12 one at a time
    python bench/sweep.py --no-baseline       # the parallel sweep only
    python bench/sweep.py --quick             # 4 children of 2 epochs on a 1,000-row TREC subset (about a minute)
    python bench/sweep.py --quick --no-baseline --dataset tiny --data-dir DIR   # what the e2e test runs

Each run starts `textclf serve` (embedded SQLite + filesystem broker) in a fresh temporary folder with
WORKER_CONCURRENCY=--parallel (keys and rate limits off), uploads train.csv and, as a dataset of its own,
test.csv (so every child reports test accuracy), POSTs the sweep (the default spec plus test_dataset_id; grid
optimizer.name × scheduler.name × model.batch_norm; metric val_macro_f1; max_parallel=--parallel) and polls
GET /v1/sweeps/{id} until it is done. Then, for every succeeded child, it checks the leaderboard against the
child's own records: GET /v1/models/{id}/evaluation (test accuracy and macro-F1, exactly), GET /v1/jobs/{id}
(validation metrics, best epoch, train seconds, exactly), the job's history (the best epoch is the first with the
highest val_macro_f1) and the test set predicted through POST /v1/models/{id}/predict (the same number right as
the evaluation). Any disagreement is printed and the script exits 1.

The baseline is the same sweep with --parallel 1 on a second fresh service (nothing reused from the first).
Prints a table (and the same as markdown), writes the figures as JSON (--out) and the learning curves of every
child of the parallel run as a hand-written SVG (--svg; no plotting library needed).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from xml.sax.saxutils import escape

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.datasets import DEFAULT_DATA_DIR, read_csv  # noqa: E402
from bench.services import free_port, stop, wait_ok  # noqa: E402

RESULTS = ROOT / "bench" / "results"
GRID = {"optimizer.name": ["sgd", "momentum", "adam"], "scheduler.name": ["step", "cosine"],
        "model.batch_norm": [False, True]}
# --quick: 4 children, one schedule, so both optimizers and both batch-norm settings still appear.
QUICK_GRID = {"optimizer.name": ["sgd", "adam"], "scheduler.name": ["cosine"], "model.batch_norm": [False, True]}
QUICK_EPOCHS = 2
QUICK_TRAIN_ROWS = 1_000  # a TREC subset that trains in seconds yet still learns something
METRIC = "val_macro_f1"
POLL_S = 1.0
PROGRESS_EVERY_S = 5.0
# Metrics the leaderboard shows that the job's own record must carry with the same value.
JOB_FIELDS = ("best_epoch", "val_accuracy", "val_macro_f1", "val_loss", "train_seconds")


# ---------------------------------------------------------------------------------------------------------
# the service


def start_service(folder: Path, parallel: int) -> tuple[subprocess.Popen, str]:
    """`textclf serve` on a free port with its own data folder and `parallel` training processes; ready."""
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "ARTIFACT_DIR", "TORCH_THREADS")}
    # TORCH_THREADS is left to its default (cores / WORKER_CONCURRENCY), the setting a user gets.
    env.update(TEXTCLF_DATA_DIR=str(folder / "data"), WORKER_CONCURRENCY=str(parallel), PYTHONPATH=str(ROOT),
               # A bench of training, not of the key check or the rate limiter.
               AUTH_REQUIRED="false", RATE_LIMIT_ENABLED="false")
    with open(folder / "serve.log", "wb") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port)], env=env, cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    wait_ok(f"{base}/readyz", proc, timeout=180)
    return proc, base


def csv_bytes(texts: list[str], labels: list[str]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["text", "label"])
    writer.writerows(zip(texts, labels))
    return out.getvalue().encode()


def every_kth(texts: list[str], labels: list[str], rows: int) -> tuple[list[str], list[str]]:
    """At most `rows` rows spread over the whole file (a prefix could miss labels that come late)."""
    if len(texts) <= rows:
        return texts, labels
    step = len(texts) / rows
    keep = [int(i * step) for i in range(rows)]
    return [texts[i] for i in keep], [labels[i] for i in keep]


def upload(http: requests.Session, base: str, name: str, texts: list[str], labels: list[str]) -> dict:
    resp = http.post(f"{base}/v1/datasets", files={"file": (f"{name}.csv", csv_bytes(texts, labels))},
                     data={"name": name}, timeout=300)
    resp.raise_for_status()
    return resp.json()


# ---------------------------------------------------------------------------------------------------------
# one sweep


def sweep_request(dataset: str, train_id: str, test_id: str, parallel: int, quick: bool) -> dict:
    base: dict = {"test_dataset_id": test_id}  # everything else: the default spec
    if quick:
        base["epochs"] = QUICK_EPOCHS
    return {"dataset_id": train_id, "name": f"{dataset}-sweep", "base": base, "grid": QUICK_GRID if quick else GRID,
            "metric": METRIC, "max_parallel": parallel}


def describe(params: dict) -> str:
    """sgd · cosine · BN: a child's params in the words of the table and the legend."""
    return " · ".join(["BN" if v is True else "no BN" if v is False else str(v) for v in params.values()])


def progress_line(label: str, elapsed: float, sweep: dict) -> str:
    counts = " ".join(f"{k} {v}" for k, v in sweep["counts"].items() if v)
    line = f"[{label}] {elapsed:6.0f} s  {sweep['status']:<9}  {counts}"
    running = [c for c in sweep["children"] if c["status"] == "running"]
    if running:
        line += "  training: " + ", ".join(
            f"#{c['index']} epoch {c['progress'].get('epoch', 0)}/{c['progress'].get('total_epochs', 0)}"
            for c in running)
    if sweep["best"] is not None:
        line += f"  best so far {describe(sweep['best']['params'])} {METRIC} {sweep['best'][METRIC]:.4f}"
    return line


def poll(http: requests.Session, base: str, sweep_id: str, label: str, timeout: float) -> tuple[dict, float]:
    """GET the sweep until it is no longer running: (its final body with histories, the peak 1-minute load
    average seen meanwhile)."""
    started = time.monotonic()
    last_print = -PROGRESS_EVERY_S
    peak_load = os.getloadavg()[0]
    while True:
        sweep = http.get(f"{base}/v1/sweeps/{sweep_id}", params={"history": "false"}, timeout=60).json()
        elapsed = time.monotonic() - started
        peak_load = max(peak_load, os.getloadavg()[0])
        if sweep["status"] not in ("running", "cancelling"):
            print(progress_line(label, elapsed, sweep), file=sys.stderr, flush=True)
            return http.get(f"{base}/v1/sweeps/{sweep_id}", timeout=60).json(), peak_load
        if elapsed - last_print >= PROGRESS_EVERY_S:
            print(progress_line(label, elapsed, sweep), file=sys.stderr, flush=True)
            last_print = elapsed
        if elapsed > timeout:
            http.post(f"{base}/v1/sweeps/{sweep_id}/cancel", timeout=60)
            raise SystemExit(f"[{label}] sweep {sweep_id} still {sweep['status']} after {timeout:.0f} s; cancelled")
        time.sleep(POLL_S)


def check_child(http: requests.Session, base: str, child: dict, leader: dict, test: tuple[list[str], list[str]]
                ) -> tuple[list[str], dict]:
    """Disagreements between the leaderboard's row of a succeeded child and the child's own records, and the
    figures read from those records."""
    problems: list[str] = []
    name = f"child {child['index']} ({describe(child['params'])})"

    def differ(what: str, board, own) -> None:
        if board != own:
            problems.append(f"{name}: {what}: leaderboard {board!r} vs {own!r}")

    job = http.get(f"{base}/v1/jobs/{child['job_id']}", timeout=60).json()
    differ("job status", leader["status"], job["status"])
    differ("model_id", leader["model_id"], job["model_id"])
    for field in JOB_FIELDS:
        differ(f"job metrics {field}", leader[field], (job["metrics"] or {}).get(field))

    # The kept model is the epoch with the highest val_macro_f1; of tied epochs, the one with the lowest val_loss,
    # the earliest on a tie of both (the training code's selection rule).
    history = child["history"] or []
    if history:
        top = max(r[METRIC] for r in history)
        best = min((r for r in history if r[METRIC] == top), key=lambda r: r["val_loss"])
        differ("best epoch from the history", leader["best_epoch"], best["epoch"])
        # With the TF-IDF blend on (model.tfidf), the job's val_* score the blend; the history scores the network.
        network = (job["metrics"] or {}).get(f"network_{METRIC}", leader[METRIC])
        differ(f"{METRIC} of the history's best epoch", network, best[METRIC])
    else:
        problems.append(f"{name}: no history")

    evaluation = http.get(f"{base}/v1/models/{leader['model_id']}/evaluation", timeout=60).json()
    own_test = evaluation.get("test") or {}
    differ("test accuracy (evaluation)", leader["test_accuracy"], own_test.get("accuracy"))
    differ("test macro-F1 (evaluation)", leader["test_macro_f1"], own_test.get("macro_f1"))

    # The served model, asked over HTTP, must get as many test texts right as its evaluation says.
    texts, labels = test
    predicted: list[str | None] = []
    for i in range(0, len(texts), 500):
        resp = http.post(f"{base}/v1/models/{leader['model_id']}/predict", json={"texts": texts[i:i + 500]},
                         timeout=120)
        resp.raise_for_status()
        predicted += [p["label"] for p in resp.json()["predictions"]]
    right = sum(p == y for p, y in zip(predicted, labels, strict=True))
    if own_test:
        differ("test examples right (evaluation vs /predict)", round(own_test["accuracy"] * own_test["examples"]),
               right)

    started, finished = (datetime.fromisoformat(job[k]) for k in ("started_at", "finished_at"))
    validation = evaluation.get("validation") or {}
    return problems, {
        "job_seconds": round((finished - started).total_seconds(), 3),
        "torch_threads": ((job["metrics"] or {}).get("provenance") or {}).get("torch_threads"),
        "test_accuracy_via_predict": right / len(labels),
        # The exported (ONNX) model on the validation split; the leaderboard's val_* are torch's at training time.
        "onnx_val_macro_f1": validation.get("macro_f1"),
    }


def check(http: requests.Session, base: str, sweep: dict, test: tuple[list[str], list[str]]) -> tuple[list[str], dict]:
    """Every disagreement in a finished sweep, and per child index the figures read from its own records."""
    problems: list[str] = []
    own: dict[int, dict] = {}
    if sweep["status"] != "succeeded":
        problems.append(f"sweep status {sweep['status']}")
    board = sweep["leaderboard"]
    by_index = {c["index"]: c for c in board}
    if [c["rank"] for c in board] != list(range(1, len(board) + 1)):
        problems.append(f"leaderboard ranks {[c['rank'] for c in board]}")
    values = [c[METRIC] for c in board if c["status"] == "succeeded"]
    if values != sorted(values, reverse=True):
        problems.append(f"leaderboard not ordered by {METRIC}: {values}")
    first_succeeded = next((c for c in board if c["status"] == "succeeded"), None)
    if sweep["best"] != first_succeeded:
        problems.append("best is not the leaderboard's first succeeded row")
    for child in sweep["children"]:
        if child["status"] != "succeeded":
            problems.append(f"child {child['index']} ({describe(child['params'])}) {child['status']}: "
                            f"{child['error']}")
            continue
        if child["index"] not in by_index:
            problems.append(f"child {child['index']} succeeded but is not on the leaderboard")
            continue
        child_problems, own[child["index"]] = check_child(http, base, child, by_index[child["index"]], test)
        problems += child_problems
    return problems, own


def run_sweep(args: argparse.Namespace, parallel: int, label: str) -> dict:
    """One fresh service, one sweep, checked; everything the report needs."""
    folder = Path(tempfile.mkdtemp(prefix=f"textclf-bench-sweep-{label}-"))
    train = read_csv(args.data_dir / args.dataset / "train.csv")
    test = read_csv(args.data_dir / args.dataset / "test.csv")
    if args.quick:
        train = every_kth(*train, QUICK_TRAIN_ROWS)
    load_before = os.getloadavg()
    proc, base = start_service(folder, parallel)
    http = requests.Session()
    try:
        train_set = upload(http, base, f"{args.dataset}-train", *train)
        test_set = upload(http, base, f"{args.dataset}-test", *test)
        body = sweep_request(args.dataset, train_set["id"], test_set["id"], parallel, args.quick)
        t0 = time.monotonic()
        resp = http.post(f"{base}/v1/sweeps", json=body, timeout=120)
        if resp.status_code != 202:
            raise SystemExit(f"POST /v1/sweeps: {resp.status_code} {resp.text[:2000]}")
        sweep_id = resp.json()["id"]
        print(f"[{label}] sweep {sweep_id}: {len(resp.json()['children'])} children, {parallel} at a time, "
              f"service log {folder / 'serve.log'}", file=sys.stderr, flush=True)
        sweep, peak_load = poll(http, base, sweep_id, label, args.timeout)
        client_wall = time.monotonic() - t0
        problems, own = check(http, base, sweep, test)
    finally:
        stop(proc)
    if not problems:  # kept otherwise, for a look at the service's log and database
        shutil.rmtree(folder, ignore_errors=True)
    load_after = os.getloadavg()
    for problem in problems:
        print(f"[{label}] DISAGREES: {problem}", file=sys.stderr, flush=True)
    print(f"[{label}] leaderboard vs children's own records: "
          f"{'agree' if not problems else f'{len(problems)} disagreement(s)'}", file=sys.stderr, flush=True)
    return {
        "label": label, "parallel": parallel, "sweep_id": sweep["id"], "status": sweep["status"],
        "counts": sweep["counts"], "request": body, "train_rows": train_set["row_count"],
        "test_rows": test_set["row_count"],
        "wall_seconds": sweep["wall_seconds"], "post_to_done_seconds": round(client_wall, 2),
        "sum_train_seconds": round(sum(c["train_seconds"] or 0 for c in sweep["children"]), 2),
        "sum_job_seconds": round(sum(o["job_seconds"] for o in own.values()), 2),
        "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in load_after],
        "loadavg_1min_peak": round(peak_load, 2),
        "agrees": not problems, "disagreements": problems,
        "children": [{**c, **own.get(c["index"], {})} for c in sweep["children"]],
        "leaderboard": [c["index"] for c in sweep["leaderboard"]],
        "best": sweep["best"]["index"] if sweep["best"] else None,
        "folder": None if not problems else str(folder),
    }


# ---------------------------------------------------------------------------------------------------------
# report


def rows_by_rank(run: dict) -> list[dict]:
    by_index = {c["index"]: c for c in run["children"]}
    ranked = [by_index[i] for i in run["leaderboard"]]
    return ranked + [c for c in run["children"] if c["index"] not in run["leaderboard"]]


def pct(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{100 * value:.{digits}f}"


def table_rows(run: dict, baseline: dict | None = None) -> list[list[str]]:
    """The leaderboard as table cells; with a baseline run, each child's val macro-F1 there too (the same spec
    trained again with a different number of threads: how far these figures move by themselves)."""
    head = ["rank", "optimizer", "schedule", "batch norm", "best epoch", "val macro-F1", "val acc", "test acc",
            "test macro-F1", "train s"]
    again = {json.dumps(c["params"], sort_keys=True): c for c in baseline["children"]} if baseline else {}
    if baseline:
        head.append(f"val macro-F1, {baseline['parallel']} at a time")
    rows = [head]
    for c in rows_by_rank(run):
        p = c["params"]
        row = [str(c["rank"] or ""), str(p.get("optimizer.name", "")), str(p.get("scheduler.name", "")),
               {True: "on", False: "off"}.get(p.get("model.batch_norm"), ""), str(c["best_epoch"] or ""),
               pct(c["val_macro_f1"], 2), pct(c["val_accuracy"]), pct(c["test_accuracy"]),
               pct(c["test_macro_f1"], 2), "" if c["train_seconds"] is None else f"{c['train_seconds']:.1f}"]
        if baseline:
            other = again.get(json.dumps(p, sort_keys=True))
            row.append(pct(other["val_macro_f1"], 2) if other else "")
        rows.append(row)
    return rows


def text_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(r, widths)) for r in rows]
    lines.insert(1, "-|-".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(r) + " |" for r in rows]
    lines.insert(1, "|" + "---|" * len(rows[0]))
    return "\n".join(lines)


# One colour per child, in leaderboard order (Tableau 10 without its grey, then black and olive): the leaders get
# the most distinct ones, and up to 12 curves stay apart.
COLOURS = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
           "#222222", "#bcbd22", "#1f3a93"]


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 × 10^k apart) covering [low, high]."""
    if high <= low:
        high = low + 1.0
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step) * step
    return [round(first + i * step, 10) for i in range(int(math.ceil((high - first) / step)) + 1)]


def svg_panel(x0: float, y0: float, w: float, h: float, title: str, series: list[tuple[str, list[tuple[int, float]],
              bool]], epochs: int) -> list[str]:
    """One chart: axes, grid, ticks and a polyline per (colour, points, dashed) series."""
    values = [v for _, pts, _ in series for _, v in pts]
    ticks = nice_ticks(min(values), max(values))
    lo, hi = ticks[0], ticks[-1]
    sx = lambda e: x0 + (e - 1) / max(1, epochs - 1) * w  # noqa: E731
    sy = lambda v: y0 + h - (v - lo) / (hi - lo) * h  # noqa: E731
    out = [f'<text x="{x0 + w / 2:.1f}" y="{y0 - 12:.1f}" text-anchor="middle" font-weight="bold">'
           f'{escape(title)}</text>',
           f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#999"/>']
    for t in ticks:
        out.append(f'<line x1="{x0}" y1="{sy(t):.1f}" x2="{x0 + w}" y2="{sy(t):.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{x0 - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{t:g}</text>')
    for e in range(1, epochs + 1):
        out.append(f'<text x="{sx(e):.1f}" y="{y0 + h + 16:.1f}" text-anchor="middle">{e}</text>')
    out.append(f'<text x="{x0 + w / 2:.1f}" y="{y0 + h + 34:.1f}" text-anchor="middle">epoch</text>')
    for colour, pts, dashed in series:
        path = " ".join(f"{sx(e):.1f},{sy(v):.1f}" for e, v in pts)
        dash = ' stroke-dasharray="6 3"' if dashed else ""
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.8"{dash}/>')
        out += [f'<circle cx="{sx(e):.1f}" cy="{sy(v):.1f}" r="2.2" fill="{colour}"/>' for e, v in pts]
    return out


def write_svg(run: dict, path: Path, title: str) -> None:
    """Validation macro-F1 and validation loss per epoch of every child, one colour each (dashed: batch norm)."""
    children = [c for c in rows_by_rank(run) if c.get("history")]
    epochs = max(len(c["history"]) for c in children)
    colour = {c["index"]: COLOURS[i % len(COLOURS)] for i, c in enumerate(children)}
    width, panel_w, panel_h, top, left, gap = 1000, 400, 300, 70, 70, 110
    legend_cols = 3
    legend_rows = math.ceil(len(children) / legend_cols)
    height = top + panel_h + 60 + legend_rows * 20 + 20
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="24" text-anchor="middle" font-size="15" font-weight="bold">'
           f'{escape(title)}</text>']
    panels = ((left, "val_macro_f1", "validation macro-F1"), (left + panel_w + gap, "val_loss", "validation loss"))
    for x0, key, name in panels:
        series = [(colour[c["index"]], [(r["epoch"], r[key]) for r in c["history"]],
                   c["params"].get("model.batch_norm") is True) for c in children]
        out += svg_panel(x0, top, panel_w, panel_h, name, series, epochs)
    y = top + panel_h + 60
    for i, c in enumerate(children):
        lx = left + (i % legend_cols) * 300
        ly = y + (i // legend_cols) * 20
        dash = ' stroke-dasharray="6 3"' if c["params"].get("model.batch_norm") is True else ""
        label = f"#{c['rank']} {describe(c['params'])}  (val F1 {pct(c['val_macro_f1'], 2)})"
        out += [f'<line x1="{lx}" y1="{ly}" x2="{lx + 28}" y2="{ly}" stroke="{colour[c["index"]]}" '
                f'stroke-width="2.5"{dash}/>',
                f'<text x="{lx + 36}" y="{ly + 4}">{escape(label)}</text>']
    out.append("</svg>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out) + "\n")


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def compare_runs(a: dict, b: dict) -> dict:
    """How far the same child's figures moved between the two runs (threads per process differ: 1 vs 2)."""
    pairs = [(x, y) for x in a["children"] for y in b["children"] if x["params"] == y["params"]]
    out = {}
    for key in ("val_macro_f1", "test_accuracy"):
        diffs = [abs(x[key] - y[key]) for x, y in pairs if x[key] is not None and y[key] is not None]
        out[f"max_abs_diff_{key}"] = round(max(diffs), 6) if diffs else None
    out["same_best"] = a["best"] == b["best"]
    return out


# ---------------------------------------------------------------------------------------------------------
# main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="trec", help="folder under --data-dir with train.csv and test.csv")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                        help="folder of dataset folders (default: $TEXTCLF_BENCH_DATA or ../shared/datasets)")
    parser.add_argument("--parallel", type=int, default=2, help="WORKER_CONCURRENCY and the sweep's max_parallel")
    parser.add_argument("--no-baseline", action="store_true", help="skip the one-at-a-time run")
    parser.add_argument("--quick", action="store_true",
                        help=f"{math.prod(map(len, QUICK_GRID.values()))} children of {QUICK_EPOCHS} epochs on at "
                             f"most {QUICK_TRAIN_ROWS} training rows (a smoke test)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds one sweep may take before it is "
                                                                    "cancelled and the script fails")
    parser.add_argument("--out", type=Path, help="JSON figures (default bench/results/sweep_<dataset>[_quick].json)")
    parser.add_argument("--svg", type=Path, help="learning curves (default docs/sweep-<dataset>.svg; with --quick "
                                                 "next to --out)")
    args = parser.parse_args()
    # `timeout` and CI stop a run with SIGTERM: as SystemExit it runs the `finally` that stops the service started
    # in its own session (which would outlive this process otherwise).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    suffix = "_quick" if args.quick else ""
    args.out = args.out or RESULTS / f"sweep_{args.dataset}{suffix}.json"
    args.svg = args.svg or (args.out.with_suffix(".svg") if args.quick else ROOT / "docs" / f"sweep-{args.dataset}.svg")

    runs = [run_sweep(args, args.parallel, "parallel" if args.parallel > 1 else "sequential")]
    if not args.no_baseline:
        runs.append(run_sweep(args, 1, "sequential"))
    parallel = runs[0]
    report = {
        "dataset": args.dataset, "quick": args.quick, "metric": METRIC, "cores": len(os.sched_getaffinity(0)),
        "git_commit": git_commit(), "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "runs": runs,
    }
    if len(runs) == 2:
        sequential = runs[1]
        report["speedup"] = round(sequential["wall_seconds"] / parallel["wall_seconds"], 2)
        report["between_runs"] = compare_runs(parallel, sequential)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    write_svg(parallel, args.svg, f"{args.dataset}: {len(parallel['children'])} children of one sweep, "
                                  f"{METRIC} leaderboard (dashed: batch norm)")

    rows = table_rows(parallel, runs[1] if len(runs) == 2 else None)
    print(f"\n{args.dataset}, {len(parallel['children'])} children, {args.parallel} at a time, "
          f"{parallel['train_rows']} train / {parallel['test_rows']} test rows, {report['cores']} cores; ranked by "
          f"{METRIC}; percent\n")
    print(text_table(rows))
    print()
    print(markdown_table(rows))
    print()
    for run in runs:
        print(f"{run['label']:<10} ({run['parallel']} at a time): wall {run['wall_seconds']:.1f} s (first child start "
              f"to last end), POST to done {run['post_to_done_seconds']:.1f} s, children's train seconds summed "
              f"{run['sum_train_seconds']:.1f} s; load average {run['loadavg_before'][0]:.2f} before, "
              f"{run['loadavg_1min_peak']:.2f} peak, {run['loadavg_after'][0]:.2f} after; leaderboard vs children's "
              f"own records: {'agree' if run['agrees'] else 'DISAGREE'}")
    if "speedup" in report:
        b = report["between_runs"]
        print(f"speed-up {report['speedup']:.2f}x ({runs[1]['wall_seconds']:.1f} s one after another / "
              f"{parallel['wall_seconds']:.1f} s {args.parallel} at a time); between the runs the same child's "
              f"{METRIC} moved by at most {b['max_abs_diff_val_macro_f1']}, test accuracy by at most "
              f"{b['max_abs_diff_test_accuracy']}; same best child: {b['same_best']}")
    print(f"JSON: {args.out}\nSVG: {args.svg}")
    if not all(run["agrees"] for run in runs):
        sys.exit(1)


if __name__ == "__main__":
    main()
