"""GPU check: train the default spec on CUDA, export, check parity, and time onnxruntime predictions.

    python bench/gpu_check.py                       # CUDA (fails if none)
    python bench/gpu_check.py --device cpu          # the same steps on the CPU
    python bench/gpu_check.py --datasets trec sst2_glue --data-dir ../shared/datasets
    python bench/gpu_check.py --datasets sst2_glue --spec '{"preset": "accurate", "epochs": 1}' \
        --base-model bench/results/base-models/all-minilm-l6-v2        # the encoder (bench/base_model.py)

For each dataset (train.csv / test.csv with text,label): samples/s, seconds per epoch, peak GPU memory,
validation and test accuracy, ONNX export + parity, then onnxruntime predict latency for batch 1 and 256 on
the best provider available (CUDA provider when onnxruntime has it). Prints one table; writes JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from bench.datasets import read_csv  # noqa: E402
from core.ml.predictor import OnnxPredictor  # noqa: E402
from core.spec import TrainingSpec  # noqa: E402
from worker.ml.export import check_parity, export_onnx  # noqa: E402
from worker.ml.train import resolve_device, train  # noqa: E402


def latency_ms(predictor: OnnxPredictor, texts: list[str], batch: int, repeats: int) -> dict[str, float]:
    """Median and p99 wall time of predictor.predict on `batch` texts (tokenising included)."""
    sample = (texts * (batch // max(len(texts), 1) + 1))[:batch]
    for _ in range(5):
        predictor.predict(sample)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        predictor.predict(sample)
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return {"p50_ms": round(statistics.median(times), 3), "p99_ms": round(times[int(0.99 * (len(times) - 1))], 3)}


def check(name: str, data_dir: Path, device: str, extra: dict, base_model: Path | None = None) -> dict:
    texts, labels = read_csv(data_dir / name / "train.csv")
    test_texts, test_labels = read_csv(data_dir / name / "test.csv")
    spec = TrainingSpec.model_validate({"dataset_id": str(uuid.uuid4()), "device": device, **extra})
    dev = resolve_device(spec.device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    label_names = sorted(set(labels))
    result = train(spec, texts, labels, label_names=label_names, device=dev,
                   base_model_dir=base_model if spec.model.name == "encoder" else None)
    m = result.metrics
    epochs = m["epochs_run"]
    out = {
        "dataset": name, "device": str(dev), "train_rows": len(texts), "epochs": epochs,
        "train_seconds": m["train_seconds"],
        "samples_per_s": round(m["train_examples"] * epochs / m["train_seconds"], 1),
        "epoch_seconds": round(statistics.median(h["seconds"] for h in result.history), 3),
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if dev.type == "cuda" else None,
        "val_accuracy": round(m["accuracy"], 4), "val_macro_f1": round(m["macro_f1"], 4),
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t = time.perf_counter()
        export_onnx(result.model, folder / "model.onnx", vocab_size=result.encoder.vocab_size)
        parity = check_parity(result.model, folder / "model.onnx", result.encoder, test_texts[:64])
        out["export_and_parity_s"] = round(time.perf_counter() - t, 2)
        out["parity_max_abs_diff"] = parity["max_abs_diff"]
        out["parity_argmax_agreement"] = parity["argmax_agreement"]
        result.encoder.save(folder / "tokenizer.json")
        (folder / "labels.json").write_text(json.dumps(label_names))
        (folder / "spec.json").write_text(json.dumps(spec.model_dump(mode="json")))
        predictor = OnnxPredictor(folder)
        out["ort_providers"] = predictor.providers
        probs = np.concatenate([predictor.predict_proba(test_texts[i:i + 512]) for i in range(0, len(test_texts), 512)])
        predicted = [label_names[i] for i in probs.argmax(axis=1)]
        out["test_accuracy"] = round(float(np.mean([p == y for p, y in zip(predicted, test_labels, strict=True)])), 4)
        out["predict_batch1"] = latency_ms(predictor, test_texts, 1, 300)
        out["predict_batch256"] = latency_ms(predictor, test_texts, 256, 30)
    return out


def check_job(name: str, data_dir: Path, device: str) -> dict:
    """One job through the worker's own path (worker.training.run_training) on a SQLite database."""
    from core import ingest
    from core.config import Settings
    from core.db import jobs
    from core.db.datasets import add_dataset
    from core.db.migrate import upgrade
    from core.db.session import make_engine, make_sessionmaker
    from worker.training import run_training

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(TEXTCLF_DATA_DIR=Path(tmp))
        upgrade(settings.database_url)
        engine = make_engine(settings.database_url)
        sm = make_sessionmaker(engine)
        parsed = ingest.parse_upload((data_dir / name / "train.csv").read_bytes(), filename="train.csv",
                                     content_type=None, limits=ingest.Limits(10**7, 10**6, 1000))
        with sm.begin() as s:
            ds = add_dataset(session=s, settings=settings, name=name, parsed=parsed)
            job_id = jobs.create_job(session=s, spec=TrainingSpec(dataset_id=ds.id, device=device)).id
        t = time.perf_counter()
        status = run_training(sessionmaker=sm, settings=settings, job_id=job_id)
        with sm() as s:
            job = jobs.get_job(session=s, job_id=job_id)
            out = {"dataset": name, "job_status": status, "job_device": job.device, "job_seconds":
                   round(time.perf_counter() - t, 1), "val_accuracy": job.metrics and job.metrics.get("val_accuracy"),
                   "error": job.error}
        engine.dispose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["trec", "sst2_glue"])
    parser.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get("TEXTCLF_BENCH_DATA", ROOT.parent / "shared" / "datasets")))
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu", "auto"])
    parser.add_argument("--spec", default="{}", help="extra spec fields as JSON (default spec otherwise)")
    parser.add_argument("--base-model", type=Path, default=None,
                        help="base model folder for an encoder --spec (e.g. preset accurate)")
    parser.add_argument("--job", action="store_true",
                        help="also run one TREC job through worker.training.run_training (needs SQLAlchemy)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu_check.json")
    args = parser.parse_args()

    env = {
        "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "onnxruntime": ort.__version__, "ort_available_providers": ort.get_available_providers(),
    }
    print(json.dumps(env))
    results = []
    for name in args.datasets:
        t = time.perf_counter()
        results.append(check(name, args.data_dir, args.device, json.loads(args.spec), args.base_model))
        results[-1]["wall_s"] = round(time.perf_counter() - t, 1)
        print(json.dumps(results[-1]), flush=True)
    job = check_job(args.datasets[0], args.data_dir, args.device) if args.job else None
    if job:
        print(json.dumps(job), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"env": env, "results": results, "job": job}, indent=2))

    cols = ["dataset", "device", "epochs", "samples_per_s", "epoch_seconds", "peak_gpu_mib", "val_accuracy",
            "test_accuracy", "export_and_parity_s", "parity_max_abs_diff"]
    print("\n" + " | ".join(cols))
    for r in results:
        print(" | ".join(str(r[c]) for c in cols))
    print("\ndataset | providers | batch1 p50/p99 ms | batch256 p50/p99 ms")
    for r in results:
        b1, b256 = r["predict_batch1"], r["predict_batch256"]
        print(f"{r['dataset']} | {','.join(r['ort_providers'])} | {b1['p50_ms']}/{b1['p99_ms']} | "
              f"{b256['p50_ms']}/{b256['p99_ms']}")


if __name__ == "__main__":
    main()
