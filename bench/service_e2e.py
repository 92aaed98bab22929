"""Time the whole service on a real dataset: upload, POST /v1/jobs with the default spec, poll, predict the test set.

    python bench/service_e2e.py --dataset trec            # starts `textclf serve` in a temp folder
    python bench/service_e2e.py --dataset trec --url http://127.0.0.1:8000   # against a running service

Prints the time from POST /v1/jobs to `succeeded`, the job's validation metrics, and the test accuracy measured
through /v1/models/{id}/predict; writes the figures as JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.datasets import read_csv  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "datasets"


def start_server(data_dir: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "TEXTCLF_DATA_DIR": str(data_dir)}
    for key in ("DATABASE_URL", "CELERY_BROKER_URL", "ARTIFACT_DIR"):
        env.pop(key, None)
    log = open(data_dir / "serve.log", "wb")  # noqa: SIM115 (kept open for the child's lifetime)
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port)], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if requests.get(f"{base}/readyz", timeout=2).status_code == 200:
                return proc, base
        except requests.RequestException:  # not listening yet, or too busy starting to answer
            pass
        time.sleep(0.3)
    raise SystemExit("textclf serve did not become ready; see serve.log")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="trec")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("TEXTCLF_BENCH_DATA", DEFAULT_DATA)))
    parser.add_argument("--url", help="a running service; default starts one")
    parser.add_argument("--spec", default="{}", help="extra spec fields as JSON (default: the default spec)")
    parser.add_argument("--key", default=os.environ.get("TEXTCLF_API_KEY"),
                        help="API key for --url (default $TEXTCLF_API_KEY); a started service's admin.key otherwise")
    args = parser.parse_args()

    folder = args.data_dir / args.dataset
    train_path, test_path = folder / "train.csv", folder / "test.csv"
    proc = None
    tmp = tempfile.TemporaryDirectory()
    base = args.url
    if base is None:
        proc, base = start_server(Path(tmp.name))
        args.key = (Path(tmp.name) / "admin.key").read_text().strip()  # made by serve's first start
    http = requests.Session()
    if args.key:
        http.headers["Authorization"] = f"Bearer {args.key}"
    try:
        with train_path.open("rb") as f:
            up = http.post(f"{base}/v1/datasets", files={"file": (train_path.name, f)},
                           data={"name": f"{args.dataset}-train"}, timeout=300)
        up.raise_for_status()
        dataset = up.json()
        t0 = time.perf_counter()
        job = http.post(f"{base}/v1/jobs", json={"dataset_id": dataset["id"], **json.loads(args.spec)},
                        timeout=30)
        job.raise_for_status()
        job_id = job.json()["id"]
        while True:
            job = http.get(f"{base}/v1/jobs/{job_id}", timeout=30).json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.25)
        to_succeeded = time.perf_counter() - t0
        if job["status"] != "succeeded":
            raise SystemExit(f"job ended {job['status']}: {job['error']}")

        texts, labels = read_csv(test_path)
        t1 = time.perf_counter()
        predicted: list[str] = []
        for i in range(0, len(texts), 500):
            r = http.post(f"{base}/v1/models/{job['model_id']}/predict", json={"texts": texts[i:i + 500]},
                          timeout=120)
            r.raise_for_status()
            predicted += [p["label"] for p in r.json()["predictions"]]
        predict_s = time.perf_counter() - t1
        accuracy = sum(p == y for p, y in zip(predicted, labels, strict=True)) / len(labels)
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        tmp.cleanup()

    figures = {
        "dataset": args.dataset, "train_rows": dataset["row_count"], "test_rows": len(labels),
        "post_to_succeeded_s": round(to_succeeded, 2), "train_seconds": job["metrics"].get("train_seconds"),
        "epochs_run": len(job["history"]), "device": job["device"],
        "val_accuracy": job["metrics"].get("val_accuracy"), "val_macro_f1": job["metrics"].get("val_macro_f1"),
        "test_accuracy_via_predict": round(accuracy, 4), "predict_seconds": round(predict_s, 2),
        "spec": job["spec"],
    }
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"service_e2e_{args.dataset}.json").write_text(json.dumps(figures, indent=2))
    for key, value in figures.items():
        if key != "spec":
            print(f"{key:28s} {value}")


if __name__ == "__main__":
    main()
