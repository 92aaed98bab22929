"""Load: many concurrent predict clients for a while; no request may fail and the API's memory must stay flat.

    python bench/load.py                         # 100 connections for 60 s against `textclf serve`
    python bench/load.py --connections 20 --seconds 10

Starts `textclf serve` in a temporary folder, trains a small model, warms the API up, then drives
POST /v1/models/{id}/predict (one text per request) with wrk (Debian package `wrk`; a Python thread pool when
wrk is absent). Prints requests, req/s, latency percentiles, errors and non-2xx replies, and the resident memory
of the API processes (Granian main process + workers) before and after; writes the figures to bench/results/load.json.
"""

from __future__ import annotations

import argparse
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
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.chaos import tiny_csv  # noqa: E402
from bench.services import children, free_port, wait_ok  # noqa: E402

TEXT = "the striker scored a late goal in the final"


def api_pids(serve_pid: int) -> list[int]:
    """Granian's main process and workers under `textclf serve`."""
    out = []
    for pid in children(serve_pid):
        try:
            if b"granian" in Path(f"/proc/{pid}/cmdline").read_bytes():
                out += [pid, *children(pid)]
        except OSError:
            continue
    return out


def rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def run_wrk(url: str, body: str, connections: int, seconds: int) -> dict:
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    script.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                 f"wrk.body = {json.dumps(body)}\n")
    script.close()
    threads = min(2, connections)
    out = subprocess.run(["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--latency",
                          "--timeout", "10s", "-s", script.name, url], capture_output=True, text=True, check=True)
    os.unlink(script.name)
    text = out.stdout

    def ms(label: str) -> float | None:
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        if not m:
            return None
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]

    requests_done = int(re.search(r"(\d+) requests in", text).group(1))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return {"tool": "wrk", "requests": requests_done,
            "req_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
            "p50_ms": ms("50"), "p90_ms": ms("90"), "p99_ms": ms("99"),
            "socket_errors": sum(map(int, errors.groups())) if errors else 0,
            "non_2xx": int(non2xx.group(1)) if non2xx else 0, "raw": text}


def run_threads(url: str, body: str, connections: int, seconds: int) -> dict:
    """The fallback load generator: one thread and one keep-alive session per connection."""
    deadline = time.monotonic() + seconds
    latencies: list[float] = []
    failures = [0, 0]  # [errors, non-2xx]
    lock = threading.Lock()

    def client() -> None:
        session = requests.Session()
        mine, bad = [], [0, 0]
        while time.monotonic() < deadline:
            t = time.perf_counter()
            try:
                reply = session.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=10)
                bad[1] += reply.status_code >= 300
            except requests.RequestException:
                bad[0] += 1
            mine.append((time.perf_counter() - t) * 1e3)
        with lock:
            latencies.extend(mine)
            failures[0] += bad[0]
            failures[1] += bad[1]

    workers = [threading.Thread(target=client) for _ in range(connections)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    latencies.sort()
    pick = lambda q: round(latencies[min(int(q * len(latencies)), len(latencies) - 1)], 2)  # noqa: E731
    return {"tool": "python threads", "requests": len(latencies), "req_per_s": round(len(latencies) / seconds, 1),
            "p50_ms": pick(0.5), "p90_ms": pick(0.9), "p99_ms": pick(0.99), "socket_errors": failures[0],
            "non_2xx": failures[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--tool", choices=["auto", "wrk", "threads"], default="auto")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "load.json")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="textclf-load-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # Rate limits are for strangers; a load test measures the service itself.
    env = {**os.environ, "TEXTCLF_DATA_DIR": str(folder / "data"), "PYTHONUNBUFFERED": "1",
           "RATE_LIMIT_ENABLED": "false", "AUTH_REQUIRED": "false"}
    for key in ("DATABASE_URL", "CELERY_BROKER_URL", "ARTIFACT_DIR"):
        env.pop(key, None)
    with open(folder / "serve.log", "wb") as log:
        serve = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port)], env=env, cwd=ROOT,
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ok(f"{base}/readyz", serve, timeout=180)
        dataset = requests.post(f"{base}/v1/datasets", files={"file": ("load.csv", tiny_csv())}, timeout=30).json()
        job = requests.post(f"{base}/v1/jobs", json={"dataset_id": dataset["id"], "epochs": 2}, timeout=10).json()
        while (state := requests.get(f"{base}/v1/jobs/{job['id']}", timeout=10).json())["status"] not in (
                "succeeded", "failed", "cancelled"):
            time.sleep(0.5)
        assert state["status"] == "succeeded", state
        url = f"{base}/v1/models/{state['model_id']}/predict"
        body = json.dumps({"texts": [TEXT]})
        tool = args.tool if args.tool != "auto" else ("wrk" if shutil.which("wrk") else "threads")
        run = run_wrk if tool == "wrk" else run_threads
        run(url, body, min(args.connections, 16), 5)  # warm-up: every API worker loads and warms the model
        pids = api_pids(serve.pid)
        before = rss_mib(pids)
        result = run(url, body, args.connections, args.seconds)
        after = rss_mib(pids)
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(timeout=60)
    result.pop("raw", None)
    figures = {"connections": args.connections, "seconds": args.seconds, **result,
               "api_processes": len(pids), "api_rss_mib_before": round(before, 1),
               "api_rss_mib_after": round(after, 1), "rss_growth_percent": round(100 * (after - before) / before, 2)}
    for key, value in figures.items():
        print(f"  {key:<20} {value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2))
    ok = figures["socket_errors"] == 0 and figures["non_2xx"] == 0 and figures["rss_growth_percent"] <= 10
    print("OK: no errors, memory growth within 10 %" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
