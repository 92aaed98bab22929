"""Measured peak training memory against core/limits.estimate_training_bytes.

    .venv/bin/python -m bench.training_memory            # the built-in cases, one fresh process each

Each case trains, exports and checks an ONNX model in a fresh process on a synthetic dataset (random words),
as a worker's training process does, and reports the peak resident memory it added (ru_maxrss after minus the
resident size before the records were read) next to the estimate. It is then run once more with the data
segment capped (RLIMIT_DATA) at the estimate above the process's own, as worker/training.py caps a job: "fits"
says whether it finished under that cap.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

CASES = [
    {"rows": 2000, "words": 40, "spec": {}},
    {"rows": 2000, "words": 40, "spec": {"model": {"tfidf": None}}},
    {"rows": 400, "words": 400, "spec": {"batch_size": 128, "tokenizer": {"max_length": 512},
                                         "model": {"embedding_dim": 256, "num_filters": 200, "tfidf": None}}},
    {"rows": 2000, "words": 40, "spec": {"preset": "fast"}},
    {"rows": 1000, "words": 100, "spec": {"batch_size": 64, "model": {"name": "bigru", "tfidf": None}}},
    {"rows": 300, "words": 1000, "spec": {"batch_size": 256, "tokenizer": {"max_length": 1024},
                                          "model": {"embedding_dim": 512, "num_filters": 256, "tfidf": None}}},
]


def _dataset(path: Path, rows: int, words: int) -> None:
    rng = random.Random(0)
    vocab = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(3, 8))) for _ in range(5000)]
    with path.open("w") as f:
        for i in range(rows):
            f.write(json.dumps({"text": " ".join(rng.choice(vocab) for _ in range(words)), "label": str(i % 4)})
                    + "\n")


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def run_case(case: dict, capped: bool) -> dict:
    """In this (fresh) process: train, export and check one case; the peak memory it added."""
    import torch

    from core import ingest
    from core.limits import DataShape, estimate_training_bytes
    from core.spec import TrainingSpec
    from worker.ml.export import check_parity, export_onnx
    from worker.ml.train import train

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        records = Path(tmp) / "records.jsonl"
        _dataset(records, case["rows"], case["words"])
        spec = TrainingSpec.model_validate({"dataset_id": "00000000-0000-0000-0000-000000000000", "epochs": 1,
                                            "max_steps": 20, **case["spec"]})
        texts = ingest.read_records(records)[0]
        parts = estimate_training_bytes(spec, DataShape.of(texts, records.stat().st_size), num_classes=4)
        del texts
        before = _status("VmRSS")
        if capped:
            resource.setrlimit(resource.RLIMIT_DATA, (_status("VmData") + sum(parts.values()),
                                                      resource.getrlimit(resource.RLIMIT_DATA)[1]))
        texts, labels = ingest.read_records(records)
        result = train(spec, texts, labels, label_names=sorted(set(labels)), device=torch.device("cpu"))
        export_onnx(result.model, Path(tmp) / "model.onnx", vocab_size=result.encoder.vocab_size)
        check_parity(result.model, Path(tmp) / "model.onnx", result.encoder, texts[:64])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    return {"measured_mb": round(peak / 2**20), "estimate_mb": round(sum(parts.values()) / 2**20),
            "parts_mb": {k: round(v / 2**20) for k, v in parts.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--capped", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case), args.capped)))
        return
    for case in CASES:
        row = {"case": case}
        for capped in (False, True):
            done = subprocess.run([sys.executable, "-m", "bench.training_memory", "--case", json.dumps(case),
                                   *(["--capped"] if capped else [])], capture_output=True, text=True)
            if capped:
                row["fits"] = done.returncode == 0
            elif done.returncode == 0:
                row.update(json.loads(done.stdout.splitlines()[-1]))
            else:
                row["error"] = done.stderr.strip().splitlines()[-1]
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
