"""Serving figures with the API under Granian as in production (the command `textclf serve` runs), loaded by wrk
on loopback:

    python bench/serving.py                                   # TREC, default spec, 10 s per run
    python bench/serving.py --mlflow-python /tmp/mlflow-venv/bin/python   # + MLflow's server on the same model
    python bench/serving.py --quick --dataset tiny --data-dir DIR         # seconds (the e2e test runs this)

In one run, on one server: single-text predict vs GET /healthz (the framework floor: same server, same
middleware) req/s and p50/p99 at 1, 16 and 64 connections; texts/s at 1, 32 and 256 texts per request vs
in-process onnxruntime (the same OnnxPredictor, model and batch, in this process on all cores); RSS and PSS of
each API worker with 0, 1 and 10 models loaded; optionally MLflow's `mlflow models serve` (2 workers) on the same
ONNX file, fed the token ids our tokenizer makes (MLflow must live in its own environment: it is not a
dependency of this project). Prints a table and writes bench/results/serving.json.

The models are trained in this process with the worker's code (the main one with --spec, nine more stopped
after 20 steps: only their size matters). wrk comes from Debian's `wrk` package; without it a threaded Python
load generator runs instead (it saturates sooner, so its figures are lower bounds).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.datasets import read_csv  # noqa: E402
from bench.services import children, free_port, stop, wait_ok  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "datasets"
RESULTS = ROOT / "bench" / "results"
ALIAS = "production"


# ---------------------------------------------------------------------------------------------------------
# processes


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants alive now (a server's real cost per
    request, which the machine's other load does not inflate the way it inflates wall-clock figures)."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, (ppid, _) in stats.items() if ppid == parent and p not in tree]
        tree.update(kids)
        frontier += kids
    return sum(stats[p][1] for p in tree if p in stats) / os.sysconf("SC_CLK_TCK")


def memory_mib(pid: int) -> dict[str, float]:
    """Resident set and proportional set size (shared pages split between the processes sharing them)."""
    rss = int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1))
    pss = int(re.search(r"^Pss:\s+(\d+)", Path(f"/proc/{pid}/smaps_rollup").read_text(), re.M).group(1))
    return {"rss_mib": round(rss / 1024, 1), "pss_mib": round(pss / 1024, 1)}


# ---------------------------------------------------------------------------------------------------------
# load generation


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()
    return float(number) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}[unit]


def wrk(url: str, connections: int, seconds: float, body: str | None, workdir: Path) -> dict:
    """req/s, p50 and p99 (ms) and errors from one wrk run (POST with `body` when given)."""
    cmd = ["wrk", "-t", str(min(2, connections)), "-c", str(connections), "-d", f"{max(1, round(seconds))}s",
           "--latency"]
    if body is not None:
        (workdir / "body.json").write_text(body)
        script = workdir / "post.lua"
        script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                          f'local f = io.open("{workdir / "body.json"}", "r")\nwrk.body = f:read("*a")\nf:close()\n')
        cmd += ["-s", str(script)]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "requests": int(re.search(r"(\d+) requests in", out).group(1)),
            "p50_ms": _ms(latency["50"]), "p99_ms": _ms(latency["99"]),
            "errors": (int(non_2xx.group(1)) if non_2xx else 0)
                      + (sum(map(int, socket_errors.groups())) if socket_errors else 0)}


def python_load(url: str, connections: int, seconds: float, body: str | None, _workdir: Path) -> dict:
    """The same figures from threads with keep-alive connections (a fallback when wrk is not installed)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    latencies: list[float] = []
    errors = [0]
    deadline = time.monotonic() + seconds

    def run() -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        while time.monotonic() < deadline:
            start = time.perf_counter()
            try:
                if body is None:
                    conn.request("GET", path)
                else:
                    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    errors[0] += 1
                if resp.getheader("Connection", "").lower() == "close":
                    conn.close()
            except (OSError, http.client.HTTPException):
                errors[0] += 1
                conn.close()
                continue
            latencies.append((time.perf_counter() - start) * 1000)

    threads = [threading.Thread(target=run) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")  # noqa: E731
    return {"rps": len(latencies) / seconds, "requests": len(latencies), "p50_ms": pick(0.5), "p99_ms": pick(0.99),
            "errors": errors[0]}


GENERATOR = wrk if shutil.which("wrk") else python_load


def load(url: str, connections: int, seconds: float, body: str | None, workdir: Path, server_pid: int) -> dict:
    """One load run, plus the server's CPU milliseconds per answered request."""
    before = cpu_seconds(server_pid)
    result = GENERATOR(url, connections, seconds, body, workdir)
    result["cpu_ms_per_request"] = round((cpu_seconds(server_pid) - before) * 1000 / max(1, result["requests"]), 3)
    return result


# ---------------------------------------------------------------------------------------------------------
# the model(s)


def install_base(settings, folder: Path) -> None:
    """Install a base model folder (what `textclf base-models add` does) for an encoder spec."""
    from core.db.base_models import install_base_model
    from core.db.session import make_engine, make_sessionmaker

    engine = make_engine(settings.database_url)
    with make_sessionmaker(engine).begin() as session:
        install_base_model(session=session, settings=settings, src=folder)
    engine.dispose()


def train_models(base: str, settings, train_csv: Path, spec: dict, count: int) -> list[str]:
    """Upload the data, queue `count` jobs through the API and train them here; their model ids."""
    from core.db.session import make_engine, make_sessionmaker
    from worker.training import run_training

    resp = requests.post(f"{base}/v1/datasets", files={"file": ("train.csv", train_csv.read_bytes())}, timeout=120)
    resp.raise_for_status()
    dataset_id = resp.json()["id"]
    engine = make_engine(settings.database_url)
    sessionmaker = make_sessionmaker(engine)
    ids = []
    for i in range(count):
        # Only the first model's quality matters; the others are there for the memory figure.
        body = {"dataset_id": dataset_id, "name": "bench", **spec} if i == 0 else \
            {"dataset_id": dataset_id, "name": "bench-extra", "max_steps": 20, "seed": i}
        job = requests.post(f"{base}/v1/jobs", json=body, timeout=30).json()
        started = time.monotonic()
        status = run_training(sessionmaker=sessionmaker, settings=settings, job_id=uuid.UUID(job["id"]))
        if status != "succeeded":
            raise SystemExit(f"training failed: {requests.get(base + '/v1/jobs/' + job['id'], timeout=10).json()}")
        ids.append(requests.get(f"{base}/v1/jobs/{job['id']}", timeout=10).json()["model_id"])
        print(f"trained model {i + 1}/{count} in {time.monotonic() - started:.1f} s", file=sys.stderr)
    engine.dispose()
    return ids


def in_process_texts_per_s(model_dir: Path, texts: list[str], seconds: float) -> float:
    """The same predictor code on the same batch in this process, all cores to one session."""
    from core.ml.predictor import OnnxPredictor

    predictor = OnnxPredictor(model_dir, intra_op_threads=len(os.sched_getaffinity(0)))
    predictor.warm_up()
    done, deadline = 0, time.monotonic() + seconds
    start = time.perf_counter()
    while time.monotonic() < deadline:
        predictor.predict(texts)
        done += len(texts)
    return done / (time.perf_counter() - start)


def loaded_sessions(base: str) -> float:
    text = requests.get(f"{base}/metrics", timeout=10).text
    return float(re.search(r"^textclf_loaded_models (\S+)$", text, re.M).group(1))


def load_everywhere(base: str, model_ids: list[str], workers: int) -> None:
    """Predict with each model until every API worker has it loaded (the gauge sums the workers)."""
    for _ in range(50):
        for model_id in model_ids:
            for _ in range(4):
                requests.post(f"{base}/v1/models/{model_id}/predict", json={"texts": ["warm"]}, timeout=30)
        if loaded_sessions(base) >= workers * len(model_ids):
            return
    print("warning: not every worker loaded every model", file=sys.stderr)


# ---------------------------------------------------------------------------------------------------------
# MLflow


MLFLOW_SAVE = """
import sys, onnx, mlflow.onnx
mlflow.onnx.save_model(onnx.load(sys.argv[1]), sys.argv[2])
"""


def mlflow_row(python: str, model_dir: Path, text: str, seconds: float, workdir: Path) -> dict:
    """MLflow's scoring server on our ONNX file, single-text requests of token ids at 16 connections."""
    from core.ml.predictor import OnnxPredictor

    target = workdir / "mlflow-model"
    subprocess.run([python, "-c", MLFLOW_SAVE, str(model_dir / "model.onnx"), str(target)], check=True,
                   capture_output=True, timeout=300)
    encoder = OnnxPredictor(model_dir).encoder
    ids, mask = encoder.encode([text])
    body = json.dumps({"inputs": {"input_ids": ids.tolist(), "attention_mask": mask.tolist()}})
    port = free_port()
    mlflow = str(Path(python).with_name("mlflow"))
    with open(workdir / "mlflow.log", "wb") as log:
        proc = subprocess.Popen([mlflow, "models", "serve", "-m", str(target), "-p", str(port), "-w", "2",
                                 "--env-manager", "local"], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True,
                                # mlflow starts `uvicorn` by name: its environment's bin folder must be on PATH
                                env={**os.environ, "PATH": f"{Path(python).parent}{os.pathsep}{os.environ['PATH']}"})
    try:
        wait_ok(f"http://127.0.0.1:{port}/ping", proc, timeout=180)
        check = requests.post(f"http://127.0.0.1:{port}/invocations", data=body,
                              headers={"Content-Type": "application/json"}, timeout=30)
        check.raise_for_status()
        return {"url": "/invocations", **load(f"http://127.0.0.1:{port}/invocations", 16, seconds, body, workdir,
                                              proc.pid)}
    finally:
        stop(proc)


# ---------------------------------------------------------------------------------------------------------
# main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="trec")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("TEXTCLF_BENCH_DATA", DEFAULT_DATA)))
    parser.add_argument("--spec", default="{}", help="spec fields of the served model as JSON (default spec)")
    parser.add_argument("--base-model", type=Path, default=None,
                        help="install this base model folder first, for an encoder --spec (e.g. "
                             "'{\"preset\": \"accurate\", \"max_steps\": 50}'; bench/base_model.py has MiniLM)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load run")
    parser.add_argument("--models", type=int, default=10, help="models loaded for the memory figure")
    parser.add_argument("--workers", type=int, default=2, help="API worker processes (API_WORKERS)")
    parser.add_argument("--mlflow-python", help="python of a separate environment with mlflow installed")
    parser.add_argument("--quick", action="store_true", help="short runs, 3 models (a smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS / "serving.json")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.models = min(args.duration, 1.0), min(args.models, 3)

    from app.cli import api_command
    from core.config import Settings
    from core.db.migrate import upgrade

    workdir = Path(tempfile.mkdtemp(prefix="textclf-bench-serving-"))
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "ARTIFACT_DIR", "BASE_MODELS_DIR")}
    # Room for every model in each worker's cache, so the memory figure counts them all.
    env.update(TEXTCLF_DATA_DIR=str(workdir / "data"), API_WORKERS=str(args.workers),
               MODEL_CACHE_SIZE=str(max(8, args.models)), PYTHONPATH=str(ROOT),
               # The benchmark measures serving, not the key check's database read or the rate limiter.
               AUTH_REQUIRED="false", RATE_LIMIT_ENABLED="false")
    settings = Settings(TEXTCLF_DATA_DIR=workdir / "data", API_WORKERS=args.workers)
    settings.data_dir.mkdir(parents=True)
    upgrade(settings.database_url)
    if args.base_model is not None:
        install_base(settings, args.base_model)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with open(workdir / "api.log", "wb") as log:
        api = subprocess.Popen(api_command("127.0.0.1", port), env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
    report: dict = {"dataset": args.dataset, "workers": args.workers, "duration_s": args.duration,
                    "load_generator": GENERATOR.__name__, "cores": len(os.sched_getaffinity(0))}
    try:
        wait_ok(f"{base}/healthz", api)
        folder = args.data_dir / args.dataset
        model_ids = train_models(base, settings, folder / "train.csv", json.loads(args.spec), args.models)
        requests.put(f"{base}/v1/aliases/{ALIAS}", json={"model_id": model_ids[0]}, timeout=60).raise_for_status()
        test_texts, _ = read_csv(folder / "test.csv")
        workers = children(api.pid)
        report["memory"] = {"0 models": [memory_mib(pid) for pid in workers]}
        load_everywhere(base, model_ids[:1], args.workers)
        report["memory"]["1 model"] = [memory_mib(pid) for pid in workers]

        predict_url = f"{base}/v1/predict?alias={ALIAS}"
        single = json.dumps({"texts": [test_texts[0]]})
        report["latency"] = []
        for connections in (1, 16, 64):
            floor = load(f"{base}/healthz", connections, args.duration, None, workdir, api.pid)
            predict = load(predict_url, connections, args.duration, single, workdir, api.pid)
            report["latency"].append({"connections": connections, "healthz": floor, "predict": predict,
                                      "predict_vs_floor": round(predict["rps"] / floor["rps"], 3)})

        report["batches"] = []
        for size in (1, 32, 256):
            texts = (test_texts * (size // len(test_texts) + 1))[:size]
            served = load(predict_url, 2 * args.workers, args.duration, json.dumps({"texts": texts}), workdir, api.pid)
            local = in_process_texts_per_s(settings.models_dir / model_ids[0], texts, args.duration)
            report["batches"].append({"texts_per_request": size, "api_texts_per_s": round(served["rps"] * size, 1),
                                      "api_p50_ms": served["p50_ms"], "errors": served["errors"],
                                      "in_process_texts_per_s": round(local, 1),
                                      "api_vs_in_process": round(served["rps"] * size / local, 3)})

        load_everywhere(base, model_ids, args.workers)
        report["memory"][f"{args.models} models"] = [memory_mib(pid) for pid in workers]
        report["loaded_sessions"] = loaded_sessions(base)

        if args.mlflow_python:
            try:
                report["mlflow"] = mlflow_row(args.mlflow_python, settings.models_dir / model_ids[0], test_texts[0],
                                              args.duration, workdir)
                ours = next(r["predict"] for r in report["latency"] if r["connections"] == 16)
                report["mlflow"]["ours_vs_mlflow"] = round(ours["rps"] / report["mlflow"]["rps"], 1)
                report["mlflow"]["ours_vs_mlflow_cpu"] = round(report["mlflow"]["cpu_ms_per_request"]
                                                              / ours["cpu_ms_per_request"], 1)
            except (subprocess.SubprocessError, OSError, requests.RequestException, SystemExit) as exc:
                report["mlflow"] = {"not_measured": f"{type(exc).__name__}: {exc}"[:500]}
        else:
            report["mlflow"] = {"not_measured": "no --mlflow-python given"}
    finally:
        stop(api)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print_table(report)
    shutil.rmtree(workdir, ignore_errors=True)


def print_table(report: dict) -> None:
    print(f"\nserving, {report['dataset']}, {report['workers']} Granian workers, {report['cores']} cores, "
          f"{report['load_generator']}, {report['duration_s']:g} s per run\n")
    print("| connections | /healthz req/s | p50 ms | p99 ms | CPU ms/req | predict req/s | p50 ms | p99 ms "
          "| CPU ms/req | predict / floor |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in report["latency"]:
        h, p = row["healthz"], row["predict"]
        print(f"| {row['connections']} | {h['rps']:,.0f} | {h['p50_ms']:.2f} | {h['p99_ms']:.2f} "
              f"| {h['cpu_ms_per_request']:.2f} | {p['rps']:,.0f} | {p['p50_ms']:.2f} | {p['p99_ms']:.2f} "
              f"| {p['cpu_ms_per_request']:.2f} | {row['predict_vs_floor']:.0%} |")
    print("\n| texts / request | API texts/s | API p50 ms | in-process texts/s | API / in-process |")
    print("|---|---|---|---|---|")
    for row in report["batches"]:
        print(f"| {row['texts_per_request']} | {row['api_texts_per_s']:,.0f} | {row['api_p50_ms']:.2f} "
              f"| {row['in_process_texts_per_s']:,.0f} | {row['api_vs_in_process']:.0%} |")
    print("\n| models loaded | RSS MiB per worker | PSS MiB per worker |")
    print("|---|---|---|")
    for label, rows in report["memory"].items():
        print(f"| {label} | {' / '.join(str(r['rss_mib']) for r in rows)} "
              f"| {' / '.join(str(r['pss_mib']) for r in rows)} |")
    mlflow = report["mlflow"]
    if "rps" in mlflow:
        print(f"\nMLflow `models serve` (2 workers), 16 connections: {mlflow['rps']:,.0f} req/s, p50 "
              f"{mlflow['p50_ms']:.2f} ms, p99 {mlflow['p99_ms']:.2f} ms, {mlflow['cpu_ms_per_request']:.2f} CPU ms "
              f"per request; ours {mlflow['ours_vs_mlflow']}x its req/s, {mlflow['ours_vs_mlflow_cpu']}x less CPU "
              "per request")
    else:
        print(f"\nMLflow: not measured ({mlflow['not_measured']})")


if __name__ == "__main__":
    main()
