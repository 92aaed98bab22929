"""Chaos run: many small training jobs while workers are SIGKILLed and Redis and PostgreSQL restart.

    python bench/chaos.py                       # 50 jobs, 8 worker kills, one Redis and one PostgreSQL restart
    python bench/chaos.py --jobs 10 --kills 2   # a quicker round

Runs the production roles (Granian API, one Celery worker, the reaper) as local processes against a private
PostgreSQL cluster and a private redis-server (bench/services.py), so the machine's own servers are untouched.
Every job must end terminal, none may be lost, and none may be trained twice (one model per succeeded job).
Prints the tally and writes it as JSON to bench/results/chaos.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.services import PrivatePostgres, PrivateRedis, Stack, wait_ok  # noqa: E402

TERMINAL = ("succeeded", "failed", "cancelled", "pruned")


def tiny_csv() -> bytes:
    """Two learnable classes, small enough that a job trains in a few seconds."""
    sports = ["the team won the match", "a late goal won the final", "the striker scored twice",
              "the keeper saved a penalty", "fans cheered the home side", "the coach praised the defence"]
    cooking = ["simmer the sauce slowly", "bake the bread for an hour", "chop the onions finely",
               "season the soup with salt", "whisk the eggs and sugar", "roast the vegetables in oil"]
    lines = ["text,label"]
    for i in range(6):
        lines += [f"{s} {'again' * (i % 2)}".strip() + ",sports" for s in sports]
        lines += [f"{c} {'again' * (i % 2)}".strip() + ",cooking" for c in cooking]
    return ("\n".join(lines) + "\n").encode()


def get(base: str, path: str, **kw):
    """GET that rides out the PostgreSQL restart (503s) and a slow moment."""
    for _ in range(120):
        try:
            reply = requests.get(f"{base}{path}", timeout=10, **kw)
            if reply.status_code != 503:
                return reply
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"GET {path} kept failing")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--kills", type=int, default=8, help="worker SIGKILLs, spread over the run")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds for all jobs to end")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "chaos.json")
    args = parser.parse_args()
    rng = random.Random(args.seed)

    folder = Path(tempfile.mkdtemp(prefix="textclf-chaos-"))
    redis_server, pg = PrivateRedis(folder), PrivatePostgres()
    redis_server.start()
    pg.start()
    stack = Stack(folder, database_url=pg.url, broker_url=redis_server.url,
                  JOB_HEARTBEAT_TIMEOUT="10", REAPER_INTERVAL="1", LOG_LEVEL="INFO")
    t0 = time.monotonic()
    kills = 0
    try:
        stack.start_all()
        wait_ok(f"{stack.base}/readyz", stack.procs["api"])
        up = requests.post(f"{stack.base}/v1/datasets", files={"file": ("chaos.csv", tiny_csv())}, timeout=30)
        up.raise_for_status()
        ids = []
        for i in range(args.jobs):
            reply = requests.post(f"{stack.base}/v1/jobs", json={"dataset_id": up.json()["id"],
                                                                "epochs": args.epochs, "batch_size": 8,
                                                                "seed": i}, timeout=10)
            reply.raise_for_status()
            ids.append(reply.json()["id"])
        print(f"{len(ids)} jobs queued; chaos begins", flush=True)

        # The faults, at moments spread over the expected run: kills, then Redis and PostgreSQL restarts
        # part-way through, at random points between them.
        events = ["kill"] * args.kills + ["redis", "postgres"]
        rng.shuffle(events)
        deadline = time.monotonic() + args.timeout
        done: dict[str, dict] = {}
        while len(done) < len(ids) and time.monotonic() < deadline:
            page = get(stack.base, "/v1/jobs", params={"limit": 200}).json()["items"]
            for job in page:
                if job["status"] in TERMINAL and job["id"] in ids:
                    done[job["id"]] = job
            share = len(done) / len(ids)
            # Fire the next event once its share of the jobs has ended (events spread over the run).
            if events and share >= (args.kills + 2 - len(events)) / (args.kills + 3):
                event = events.pop()
                if event == "kill":
                    pids = stack.training_pids()
                    for pid in pids:
                        os.kill(pid, signal.SIGKILL)
                    kills += bool(pids)
                    print(f"  [{time.monotonic() - t0:6.1f}s] SIGKILL worker pool {pids}", flush=True)
                elif event == "redis":
                    redis_server.restart()
                    print(f"  [{time.monotonic() - t0:6.1f}s] Redis crashed and restarted (empty)", flush=True)
                else:
                    pg.restart(down_seconds=3)
                    print(f"  [{time.monotonic() - t0:6.1f}s] PostgreSQL restarted (3 s down)", flush=True)
                time.sleep(rng.uniform(0.5, 3.0))
            time.sleep(1.0)

        wall = time.monotonic() - t0
        jobs = {job_id: get(stack.base, f"/v1/jobs/{job_id}").json() for job_id in ids}
        models = get(stack.base, "/v1/models", params={"limit": 200}).json()["items"]
        per_job = Counter(m["job_id"] for m in models)
        statuses = Counter(j["status"] for j in jobs.values())
        tally = {
            "jobs": len(ids), "wall_seconds": round(wall, 1),
            "statuses": dict(statuses),
            "lost (not terminal)": sum(1 for j in jobs.values() if j["status"] not in TERMINAL),
            "trained twice (models > 1 for a job)": sum(1 for n in per_job.values() if n > 1),
            "succeeded without a model": sum(1 for j in jobs.values()
                                             if j["status"] == "succeeded" and per_job[j["id"]] != 1),
            "attempts": dict(sorted(Counter(j["attempts"] for j in jobs.values()).items())),
            "resumed from a checkpoint": sum(1 for j in jobs.values()
                                             if (j.get("metrics") or {}).get("resumed_from_epoch") is not None),
            "error codes": dict(Counter(j["error"]["code"] for j in jobs.values() if j.get("error"))),
            "worker kills": kills, "redis restarts": redis_server.restarts, "postgres restarts": pg.restarts,
        }
    finally:
        stack.stop()
        redis_server.stop()
        pg.remove()

    width = max(map(len, tally))
    print("\nchaos tally")
    for key, value in tally.items():
        print(f"  {key:<{width}}  {value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(tally, indent=2))
    ok = tally["lost (not terminal)"] == 0 and tally["trained twice (models > 1 for a job)"] == 0 \
        and tally["succeeded without a model"] == 0
    print("OK: every job ended, none lost, none trained twice" if ok else "FAILED", f"(logs in {folder})")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
