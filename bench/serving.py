"""Serving figures with the API under Granian as in production (the command `textclf serve` runs), loaded by wrk
on loopback, beside MLflow's and BentoML's servers on the same ONNX file:

    python bench/serving.py                                   # TREC, default spec, 10 s per run, ours only
    python bench/serving.py --peers                           # + MLflow and BentoML (installed once, see below)
    python bench/serving.py --mlflow-python /tmp/mlflow-venv/bin/python   # + MLflow from an environment of yours
    python bench/serving.py --peers --base-model bench/results/base-models/all-minilm-l6-v2   # + the encoder
    python bench/serving.py --quick --dataset tiny --data-dir DIR         # seconds (the e2e test runs this)

One table, a row per server, endpoint and batching, with req/s, p50/p99 and the server's CPU ms per request at 1,
16 and 64 connections, all single-text requests:
- ours: GET /healthz (the framework floor: same server, same middleware), and predict with dynamic batching on
  (PREDICT_BATCHING=true, as shipped) and off (the API restarted on the same data folder and models);
- MLflow: `mlflow models serve -w 2` (/invocations; no batching of its own);
- BentoML: bench/bentoml_service.py (2 workers), /predict without batching and /predict_batched with BentoML's
  adaptive batching;
- bare: bench/bare_predict.py under the API's own server command, the same model and nothing else (no framework,
  validation, auth, metrics or logs): the floor that any service around this model starts from on this machine;
plus, for each peer row, ours over its req/s and its CPU over ours at 64 connections (ours with the same
batching). The peers get the token ids our tokenizer makes, so they do only HTTP and the onnxruntime call.
Then texts/s at 1, 32 and 256 texts per request vs in-process onnxruntime (the same OnnxPredictor, model and
batch, in this process on all cores), and RSS and PSS of each API worker with 0, 1 and 10 models loaded. Writes
bench/results/serving.json.

The peers are no dependencies of this project: --peers makes each its own virtualenv, once, under
bench/results/envs/{mlflow,bentoml} with the versions pinned in PEER_PINS (a later run reuses them);
--mlflow-python / --bentoml-python name an environment of yours instead. A peer that cannot be installed, started
or loaded gets `not measured` and the reason in its row, and the run goes on.

The models are trained in this process with the worker's code (the main one with --spec, nine more stopped
after 20 steps: only their size matters). With --base-model FOLDER the same run also installs that base model,
trains an encoder with --encoder-spec and adds its predict rows (batching on and off) and its texts per request
against in-process onnxruntime. wrk comes from
Debian's `wrk` package; without it a threaded Python load generator runs instead (it saturates sooner, so its
figures are lower bounds).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager, suppress
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


def process_tree(pid: int) -> dict[int, list[str]]:
    """The /proc/PID/stat fields after the command name of `pid` and every process under it, alive now."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stats[int(entry.name)] = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, fields in stats.items() if int(fields[1]) == parent and p not in tree]
        tree.update(kids)
        frontier += kids
    return {p: stats[p] for p in tree if p in stats}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants alive now (a server's real cost per
    request, which the machine's other load does not inflate the way it inflates wall-clock figures)."""
    return sum(int(f[11]) + int(f[12]) for f in process_tree(pid).values()) / os.sysconf("SC_CLK_TCK")


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
    # wrk's own timeout (2 s) would count an encoder's 256-text reply as an error and leave it out of the
    # latency figures.
    cmd = ["wrk", "-t", str(min(2, connections)), "-c", str(connections), "-d", f"{max(1, round(seconds))}s",
           "--timeout", "60s", "--latency"]
    if body is not None:
        (workdir / "body.json").write_text(body)
        script = workdir / "post.lua"
        script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                          f'local f = io.open("{workdir / "body.json"}", "r")\nwrk.body = f:read("*a")\nf:close()\n')
        cmd += ["-s", str(script)]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.M))  # "3.86s " (seconds) ends in a space
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
# servers


CONNECTIONS = (1, 16, 64)
BATCH_SIZES = (1, 32, 256)


class NotMeasured(Exception):
    """A row that cannot be measured in this run; its message is the reason the table shows."""


# What a server that fails to install, start or answer raises; its row says so and the run goes on.
SERVER_ERRORS = (NotMeasured, RuntimeError, subprocess.SubprocessError, OSError, requests.RequestException,
                 SystemExit)


@contextmanager
def serving(cmd: list[str], ready_url: str, log: Path, env: dict, cwd: Path = ROOT):
    """Run a server's command in its own session until the block ends; yields its process once `ready_url`
    answers 200."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    tree: dict[int, str] = {}
    try:
        wait_ok(ready_url, proc, timeout=180)
        tree = descendants(proc.pid)
        yield proc
    finally:
        stop(proc)
        # Process managers (BentoML's circus) put their workers in sessions of their own, out of stop()'s reach
        # should the manager die before it stops them. The start time tells them from a stranger given the pid.
        for pid, started in tree.items():
            if started_at(pid) == started:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def started_at(pid: int) -> str | None:
    """The start time of a process (field 22 of /proc/PID/stat), None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def descendants(pid: int) -> dict[int, str]:
    """Every process under `pid` (children, their children, ...) with its start time."""
    return {p: fields[19] for p, fields in process_tree(pid).items() if p != pid}


def warm_up(url: str, body: str | None, workdir: Path) -> None:
    """A second of load, not kept: first-call costs (a model's load, BentoML's batching calibration) stay out of
    the figures."""
    GENERATOR(url, 4, 1.0, body, workdir)


def measure(url: str, body: str | None, seconds: float, workdir: Path, server_pid: int) -> list[dict]:
    """One load run per connection count, after a warm-up."""
    warm_up(url, body, workdir)
    return [{"connections": c, **load(url, c, seconds, body, workdir, server_pid)} for c in CONNECTIONS]


def row(server: str, endpoint: str, batching: str | None, **figures) -> dict:
    """A line of the serving table: `runs` (one per connection count) or `not_measured` (why not)."""
    return {"server": server, "endpoint": endpoint, "batching": batching, **figures}


def api_env(env: dict, batching: bool) -> dict:
    """Our API's environment with dynamic batching on or off (set either way: the caller's may say otherwise)."""
    return {**env, "PREDICT_BATCHING": "true" if batching else "false"}


def token_ids(model_dir: Path, text: str) -> tuple[list, list]:
    """The token ids and attention mask our tokenizer makes for `text` (what the peers are fed: they score the
    ONNX graph and leave tokenisation to the caller)."""
    from core.ml.predictor import OnnxPredictor

    ids, mask = OnnxPredictor(model_dir).encoder.encode([text])
    return ids.tolist(), mask.tolist()


# ---------------------------------------------------------------------------------------------------------
# peers: MLflow and BentoML, each in an environment of its own


# Neither peer is a dependency of this project, and their pins would fight ours. Both get our onnxruntime
# release, so a row measures the server around the ONNX call, not another runtime. mlflow 3.18.0 cannot be
# installed from the registry (its mlflow-tracing==3.18.0 is not published), so MLflow is the 3.17 line's last.
PEER_PINS = {
    "mlflow": ["mlflow==3.17.2", "onnx==1.23.2", "onnxruntime==1.31.1"],
    "bentoml": ["bentoml==1.4.40", "onnxruntime==1.31.1", "numpy==2.4.6"],
}
ENVS = RESULTS / "envs"


def peer_python(name: str, override: str | None, install: bool) -> Path:
    """The python that runs peer `name`: `override` when given, else the bench's own environment for it, made
    once under bench/results/envs when `install` (--peers). Raises NotMeasured when there is none."""
    if override:
        return Path(override)
    if not install:
        raise NotMeasured(f"no --peers or --{name}-python given")
    folder, pins = ENVS / name, PEER_PINS[name]
    python, marker = folder / "bin" / "python", folder / "bench-pins.txt"
    # The marker is written last, so a half-made environment is made again, and a changed pin remakes it.
    if python.exists() and marker.exists() and marker.read_text().split() == pins:
        return python
    shutil.rmtree(folder, ignore_errors=True)
    print(f"installing {' '.join(pins)} into {folder} (once)", file=sys.stderr)
    for cmd in ([sys.executable, "-m", "venv", str(folder)], [str(python), "-m", "pip", "install", "-q", *pins]):
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if run.returncode != 0:
            raise NotMeasured(f"`{' '.join(cmd[2:5])} ...` failed: {(run.stderr or run.stdout).strip()[-300:]}")
    marker.write_text("\n".join(pins) + "\n")
    return python


def peer_env(python: Path, **extra: str) -> dict:
    """This process's environment for a server from `python`'s virtualenv, plus `extra`."""
    # Peers start helpers by name (mlflow runs `uvicorn`), so their environment's bin folder goes first on PATH.
    return {**os.environ, "PATH": f"{python.parent}{os.pathsep}{os.environ['PATH']}", **extra}


MLFLOW_SAVE = """
import sys, onnx, mlflow.onnx
mlflow.onnx.save_model(onnx.load(sys.argv[1]), sys.argv[2])
"""


def mlflow_rows(python: Path, model_dir: Path, text: str, seconds: float, workdir: Path) -> list[dict]:
    """MLflow's scoring server (`mlflow models serve`, 2 workers) on our ONNX file, fed token ids. It has no
    batching of its own, so its row is compared with ours with batching off."""
    target = workdir / "mlflow-model"
    save = subprocess.run([str(python), "-c", MLFLOW_SAVE, str(model_dir / "model.onnx"), str(target)],
                          capture_output=True, text=True, timeout=300)
    if save.returncode != 0:
        raise NotMeasured(f"mlflow.onnx.save_model failed: {save.stderr.strip()[-300:]}")
    ids, mask = token_ids(model_dir, text)
    body = json.dumps({"inputs": {"input_ids": ids, "attention_mask": mask}})
    port = free_port()
    url = f"http://127.0.0.1:{port}/invocations"
    cmd = [str(python.with_name("mlflow")), "models", "serve", "-m", str(target), "-p", str(port), "-w", "2",
           "--env-manager", "local"]
    with serving(cmd, f"http://127.0.0.1:{port}/ping", workdir / "mlflow.log", peer_env(python)) as proc:
        requests.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=30).raise_for_status()
        return [row("mlflow", "/invocations", "off", runs=measure(url, body, seconds, workdir, proc.pid))]


def bentoml_rows(python: Path, model_dir: Path, text: str, seconds: float, workdir: Path) -> list[dict]:
    """bench/bentoml_service.py (2 workers) on our ONNX file, fed token ids: one endpoint without batching, one
    with BentoML's adaptive batching."""
    ids, mask = token_ids(model_dir, text)
    body = json.dumps({"tokens": [[ids[0], mask[0]]]})  # [B=1, 2, T]: the service's one batchable argument
    port = free_port()
    cmd = [str(python.with_name("bentoml")), "serve", "bench.bentoml_service:OnnxClassifier", "--working-dir",
           str(ROOT), "--host", "127.0.0.1", "--port", str(port)]
    # BENTOML_HOME keeps its model store and config out of the user's home; no usage reports (and no
    # waiting on a network that is not there).
    env = peer_env(python, TEXTCLF_BENCH_ONNX=str(model_dir / "model.onnx"), BENTOML_HOME=str(workdir / "bentoml"),
                   BENTOML_DO_NOT_TRACK="true")
    rows = []
    with serving(cmd, f"http://127.0.0.1:{port}/readyz", workdir / "bentoml.log", env) as proc:
        for endpoint, batching in (("/predict", "off"), ("/predict_batched", "on")):
            url = f"http://127.0.0.1:{port}{endpoint}"
            requests.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=30).raise_for_status()
            rows.append(row("bentoml", endpoint, batching, runs=measure(url, body, seconds, workdir, proc.pid)))
    return rows


# Each peer's measuring function and the (endpoint, batching) of its rows.
PEERS = {"mlflow": (mlflow_rows, [("/invocations", "off")]),
         "bentoml": (bentoml_rows, [("/predict", "off"), ("/predict_batched", "on")])}


def peer_rows(name: str, override: str | None, install: bool, *args) -> list[dict]:
    """The peer's rows (`args` go to its measuring function), or rows saying why they are not measured: the run
    goes on either way."""
    measure_peer, endpoints = PEERS[name]
    try:
        return measure_peer(peer_python(name, override, install), *args)
    except SERVER_ERRORS as exc:
        reason = f"{type(exc).__name__}: {exc}"[:500]
        print(f"{name} not measured: {reason}", file=sys.stderr)
        return [row(name, endpoint, batching, not_measured=reason) for endpoint, batching in endpoints]


def compare_at_64(rows: list[dict]) -> None:
    """Add to each measured peer row how ours (predict, same batching) compares at 64 connections: ours'
    req/s over the peer's, and the peer's CPU per request over ours."""
    def at_64(r: dict) -> dict:
        return next(run for run in r["runs"] if run["connections"] == 64)

    ours = {r["batching"]: at_64(r) for r in rows
            if r["server"] == "ours" and r["endpoint"] == "/v1/predict" and r["batching"] and "runs" in r}
    for r in rows:
        if r["server"] != "ours" and "runs" in r and r["batching"] in ours:
            mine, theirs = ours[r["batching"]], at_64(r)
            r["vs_ours_at_64"] = {"ours_rps_ratio": round(mine["rps"] / max(theirs["rps"], 1e-9), 2),
                                  "their_cpu_ratio": round(theirs["cpu_ms_per_request"]
                                                           / max(mine["cpu_ms_per_request"], 1e-9), 2)}


# ---------------------------------------------------------------------------------------------------------
# main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="trec")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("TEXTCLF_BENCH_DATA", DEFAULT_DATA)))
    parser.add_argument("--spec", default="{}", help="spec fields of the served model as JSON (default spec)")
    parser.add_argument("--base-model", type=Path, default=None,
                        help="install this base model folder and measure an encoder too (bench/base_model.py "
                             "has MiniLM)")
    parser.add_argument("--encoder-spec", default='{"preset": "accurate", "max_steps": 50}',
                        help="spec fields of the encoder with --base-model (only its cost matters: a few steps)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load run")
    parser.add_argument("--models", type=int, default=10, help="models loaded for the memory figure")
    parser.add_argument("--workers", type=int, default=2, help="API worker processes (API_WORKERS)")
    parser.add_argument("--peers", action="store_true",
                        help="also measure MLflow and BentoML, each in an environment installed (once) under "
                             "bench/results/envs")
    parser.add_argument("--mlflow-python", help="python of an environment with mlflow (instead of --peers')")
    parser.add_argument("--bentoml-python", help="python of an environment with bentoml and onnxruntime "
                                                 "(instead of --peers')")
    parser.add_argument("--quick", action="store_true", help="short runs, 3 models (a smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS / "serving.json")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.models = min(args.duration, 1.0), min(args.models, 3)
    return args


def main() -> None:
    args = parse_args()
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
    report: dict = {"dataset": args.dataset, "workers": args.workers, "duration_s": args.duration,
                    "load_generator": GENERATOR.__name__, "cores": len(os.sched_getaffinity(0))}
    folder = args.data_dir / args.dataset
    test_texts, _ = read_csv(folder / "test.csv")

    model_ids, rows = measure_ours(args, settings, env, folder / "train.csv", test_texts, workdir, report)
    rows += measure_ours_unbatched(args, env, model_ids[0], test_texts[0], workdir)
    model_dir = settings.models_dir / model_ids[0]
    rows += measure_bare(args, settings, env, model_dir, test_texts[0], workdir)
    for name in PEERS:
        rows += peer_rows(name, getattr(args, f"{name}_python"), args.peers, model_dir, test_texts[0], args.duration,
                          workdir)
    if args.base_model is not None:
        rows += measure_encoder(args, settings, env, folder / "train.csv", test_texts, workdir, report)
    compare_at_64(rows)
    report["servers"] = rows
    report["latency"] = latency_by_connections(rows)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print_table(report)
    shutil.rmtree(workdir, ignore_errors=True)


def measure_ours(args, settings, env: dict, train_csv: Path, test_texts: list[str], workdir: Path,
                 report: dict) -> tuple[list[str], list[dict]]:
    """Our API as shipped (batching on): train the models, then /healthz and predict at each connection count,
    texts per request against in-process onnxruntime, and each worker's memory (into `report`)."""
    from app.cli import api_command

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with serving(api_command("127.0.0.1", port), f"{base}/healthz", workdir / "api.log",
                 api_env(env, batching=True)) as api:
        model_ids = train_models(base, settings, train_csv, json.loads(args.spec), args.models)
        requests.put(f"{base}/v1/aliases/{ALIAS}", json={"model_id": model_ids[0]}, timeout=60).raise_for_status()
        workers = children(api.pid)
        report["memory"] = {"0 models": [memory_mib(pid) for pid in workers]}
        load_everywhere(base, model_ids[:1], args.workers)
        report["memory"]["1 model"] = [memory_mib(pid) for pid in workers]

        predict_url = f"{base}/v1/predict?alias={ALIAS}"
        single = json.dumps({"texts": [test_texts[0]]})
        rows = [row("ours", "/healthz", None, runs=measure(f"{base}/healthz", None, args.duration, workdir, api.pid)),
                row("ours", "/v1/predict", "on", runs=measure(predict_url, single, args.duration, workdir, api.pid))]

        report["batches"] = texts_per_request(predict_url, settings.models_dir / model_ids[0], test_texts, args,
                                              workdir, api.pid)

        load_everywhere(base, model_ids, args.workers)
        report["memory"][f"{args.models} models"] = [memory_mib(pid) for pid in workers]
        report["loaded_sessions"] = loaded_sessions(base)
    return model_ids, rows


def texts_per_request(predict_url: str, model_dir: Path, test_texts: list[str], args, workdir: Path,
                      server_pid: int) -> list[dict]:
    """Texts/s through the API at each of BATCH_SIZES texts per request, against the same predictor in process."""
    out = []
    for size in BATCH_SIZES:
        texts = (test_texts * (size // len(test_texts) + 1))[:size]
        served = load(predict_url, 2 * args.workers, args.duration, json.dumps({"texts": texts}), workdir, server_pid)
        local = in_process_texts_per_s(model_dir, texts, args.duration)
        out.append({"texts_per_request": size, "api_texts_per_s": round(served["rps"] * size, 1),
                    "api_p50_ms": served["p50_ms"], "errors": served["errors"],
                    "in_process_texts_per_s": round(local, 1),
                    "api_vs_in_process": round(served["rps"] * size / local, 3)})
    return out


ENCODER_ENDPOINT = "/v1/models/{id}/predict, encoder"


def measure_encoder(args, settings, env: dict, train_csv: Path, test_texts: list[str], workdir: Path,
                    report: dict) -> list[dict]:
    """An encoder (--base-model, installed by main; --encoder-spec) on the same data folder: single-text predict
    with batching on and off (the API restarted between), and its texts per request against in-process
    onnxruntime (into report["encoder_batches"])."""
    from app.cli import api_command

    rows, model_id = [], None
    single = json.dumps({"texts": [test_texts[0]]})
    for batching in ("on", "off"):
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        with serving(api_command("127.0.0.1", port), f"{base}/healthz", workdir / f"api-encoder-{batching}.log",
                     api_env(env, batching=batching == "on")) as api:
            if model_id is None:
                (model_id,) = train_models(base, settings, train_csv, json.loads(args.encoder_spec), 1)
            load_everywhere(base, [model_id], args.workers)
            url = f"{base}/v1/models/{model_id}/predict"
            rows.append(row("ours", ENCODER_ENDPOINT, batching, runs=measure(url, single, args.duration, workdir,
                                                                              api.pid)))
            if batching == "on":
                report["encoder_batches"] = texts_per_request(url, settings.models_dir / model_id, test_texts, args,
                                                              workdir, api.pid)
    return rows


def measure_ours_unbatched(args, env: dict, model_id: str, text: str, workdir: Path) -> list[dict]:
    """Our API again on the same data folder and models, with PREDICT_BATCHING=false: single-text predict."""
    from app.cli import api_command

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with serving(api_command("127.0.0.1", port), f"{base}/healthz", workdir / "api-unbatched.log",
                 api_env(env, batching=False)) as api:
        load_everywhere(base, [model_id], args.workers)
        runs = measure(f"{base}/v1/predict?alias={ALIAS}", json.dumps({"texts": [text]}), args.duration, workdir,
                       api.pid)
    return [row("ours", "/v1/predict", "off", runs=runs)]


BARE_ENDPOINT = "predict, model only"


def measure_bare(args, settings, env: dict, model_dir: Path, text: str, workdir: Path) -> list[dict]:
    """bench/bare_predict.py on the same model under the API's server command (same workers and threads): what a
    single-text predict costs with nothing of the service around the tokenizer and onnxruntime."""
    from app.server import granian_command

    port = free_port()
    cmd = granian_command(settings, "127.0.0.1", port)
    cmd[cmd.index("app:create_app")] = "bench.bare_predict:create_app"
    url = f"http://127.0.0.1:{port}/"
    body = json.dumps({"texts": [text]})
    bare_env = {**env, "TEXTCLF_BARE_MODEL_DIR": str(model_dir)}
    try:
        with serving(cmd, url, workdir / "bare.log", bare_env) as proc:
            return [row("bare", BARE_ENDPOINT, None, runs=measure(url, body, args.duration, workdir, proc.pid))]
    except SERVER_ERRORS as exc:
        return [row("bare", BARE_ENDPOINT, None, not_measured=f"{type(exc).__name__}: {exc}"[:500])]


def latency_by_connections(rows: list[dict]) -> list[dict]:
    """Our rows by connection count, as serving.json had them before the peers joined the table, and predict's and
    the bare app's req/s over /healthz's (the bare app's where it was measured)."""
    runs = {(r["server"], r["endpoint"], r["batching"]): r["runs"] for r in rows if "runs" in r}
    out = []
    for i, connections in enumerate(CONNECTIONS):
        floor = runs[("ours", "/healthz", None)][i]
        predict = runs[("ours", "/v1/predict", "on")][i]
        line = {"connections": connections, "healthz": floor, "predict": predict,
                "predict_batching_off": runs[("ours", "/v1/predict", "off")][i],
                "predict_vs_floor": round(predict["rps"] / floor["rps"], 3)}
        if ("bare", BARE_ENDPOINT, None) in runs:
            line["bare_vs_floor"] = round(runs[("bare", BARE_ENDPOINT, None)][i]["rps"] / floor["rps"], 3)
        out.append(line)
    return out


def print_table(report: dict) -> None:
    print(f"\nserving, {report['dataset']}, {report['workers']} workers per server, {report['cores']} cores, "
          f"{report['load_generator']}, {report['duration_s']:g} s per run; peers fed our tokenizer's ids\n")
    header = "| server | endpoint | batching |"
    for c in CONNECTIONS:
        header += f" {c} conn req/s | p50 ms | p99 ms | CPU ms/req |"
    print(header + " 64 conn: ours / it req/s | its CPU / ours |")
    print("|---" * (3 + 4 * len(CONNECTIONS) + 2) + "|")
    for r in report["servers"]:
        cells = [r["server"], r["endpoint"], r["batching"] or "–"]
        if "not_measured" in r:
            cells += [f"not measured: {r['not_measured']}"] + [""] * (4 * len(CONNECTIONS) + 1)
        else:
            for run in r["runs"]:
                cells += [f"{run['rps']:,.0f}", f"{run['p50_ms']:.2f}", f"{run['p99_ms']:.2f}",
                          f"{run['cpu_ms_per_request']:.2f}"]
            vs = r.get("vs_ours_at_64")
            cells += [f"{vs['ours_rps_ratio']:.2f}×", f"{vs['their_cpu_ratio']:.2f}×"] if vs else ["–", "–"]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    print("\nours / it: our predict with the same batching (MLflow has none: ours with it off).")
    for line in report.get("latency", []):
        bare = f", the bare app's {line['bare_vs_floor']:.0%}" if "bare_vs_floor" in line else ""
        print(f"{line['connections']} conn: predict (batching on) at {line['predict_vs_floor']:.0%} of /healthz's req/s"
              f"{bare}")
    for r in report["servers"]:
        errors = sum(run["errors"] for run in r.get("runs", []))
        if errors:
            print(f"warning: {r['server']} {r['endpoint']} (batching {r['batching']}) had {errors} failed requests")
    for key, model in (("batches", "served model"), ("encoder_batches", "encoder")):
        if key not in report:
            continue
        print(f"\n| texts / request ({model}) | API texts/s | API p50 ms | in-process texts/s | API / in-process |")
        print("|---|---|---|---|---|")
        for b in report[key]:
            print(f"| {b['texts_per_request']} | {b['api_texts_per_s']:,.0f} | {b['api_p50_ms']:.2f} "
                  f"| {b['in_process_texts_per_s']:,.0f} | {b['api_vs_in_process']:.0%} |")
    print("\n| models loaded | RSS MiB per worker | PSS MiB per worker |")
    print("|---|---|---|")
    for label, rows in report["memory"].items():
        print(f"| {label} | {' / '.join(str(m['rss_mib']) for m in rows)} "
              f"| {' / '.join(str(m['pss_mib']) for m in rows)} |")


if __name__ == "__main__":
    main()
