"""The benchmark scripts run (on the CPU, on a small dataset the test writes), so they don't rot between runs."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.helpers import ROOT, tiny_dataset_csv
from tests.tiny_bert import build_tiny_bert

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def tiny_data(tmp_path: Path, name: str) -> None:
    """tmp_path/data/<name>/train.csv and test.csv: the tiny dataset as both (a known --datasets name may be
    needed: the scripts check it)."""
    folder = tmp_path / "data" / name
    folder.mkdir(parents=True)
    (folder / "train.csv").write_bytes(tiny_dataset_csv())
    (folder / "test.csv").write_bytes(tiny_dataset_csv())


def test_gpu_check_runs_on_the_cpu_with_a_flag(tmp_path: Path):
    tiny_data(tmp_path, "tiny")
    out = tmp_path / "gpu_check.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu",
                          "--datasets", "tiny", "--data-dir", str(tmp_path / "data"), "--spec", '{"epochs": 2}',
                          "--job", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    result = report["results"][0]
    assert result["device"] == "cpu" and result["parity_argmax_agreement"] == 1.0
    assert result["test_accuracy"] > 0.5 and result["predict_batch256"]["p50_ms"] > 0
    assert report["job"]["job_status"] == "succeeded" and report["job"]["job_device"] == "cpu"


def test_accuracy_peers_only_scores_every_peer(tmp_path: Path):
    tiny_data(tmp_path, "trec")  # a known dataset name (--datasets has choices), tiny data
    out = tmp_path / "accuracy.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "accuracy.py"), "--peers-only", "--datasets", "trec",
                          "--data-dir", str(tmp_path / "data"), "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    [row] = json.loads(out.read_text())["results"]
    assert row["preset"] is None and row["ours"] is None and row["meets_bar"] is None
    for peer in ("fasttext", "fasttext_char", "tfidf_lr", "tfidf_char_lr"):
        assert row[peer]["accuracy"] > 50 and row[peer]["macro_f1"] is not None and row[peer]["train_s"] >= 0
    assert row["time_peer"] in ("fasttext", "fasttext_char")
    assert row["bar"] == max(row["kim_2014"], *(row[peer]["accuracy"] for peer in ("fasttext", "fasttext_char",
                                                                                   "tfidf_lr", "tfidf_char_lr")))
    assert "fastText (char) acc / F1 / s" in run.stdout and "TF-IDF char+LR acc / F1 / s" in run.stdout


def test_accuracy_accurate_preset_fine_tunes_the_base_model_beside_a_frozen_peer(tmp_path: Path):
    tiny_data(tmp_path, "trec")
    bert = build_tiny_bert(tmp_path / "tiny-bert")
    out = tmp_path / "accuracy.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "accuracy.py"), "--presets", "accurate",
                          "--base-model", str(bert), "--datasets", "trec", "--data-dir", str(tmp_path / "data"),
                          "--device", "cpu", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    [row] = json.loads(out.read_text())["results"]
    assert row["preset"] == "accurate" and row["ours"]["spec"]["model"]["name"] == "encoder"
    assert row["ours"]["torch_onnx_argmax_agreement"] == 1.0
    assert row["frozen_encoder"]["accuracy"] > 0 and row["frozen_encoder"]["base_model"] == str(bert)
    assert row["bar"] >= row["frozen_encoder"]["accuracy"] and row["time_ratio"] is None
    assert "frozen encoder+LR acc / F1 / s" in run.stdout


def test_gpu_check_trains_an_encoder_with_a_base_model(tmp_path: Path):
    tiny_data(tmp_path, "tiny")
    out = tmp_path / "gpu_check.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu",
                          "--datasets", "tiny", "--data-dir", str(tmp_path / "data"),
                          "--spec", '{"preset": "accurate", "epochs": 1}',
                          "--base-model", str(build_tiny_bert(tmp_path / "tiny-bert")), "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    [result] = json.loads(out.read_text())["results"]
    assert result["parity_argmax_agreement"] == 1.0 and result["epochs"] == 1


def test_load_script_reports_requests_errors_and_memory(tmp_path: Path):
    out = tmp_path / "load.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "load.py"), "--connections", "4", "--seconds", "3",
                          "--tool", "threads", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["requests"] > 0 and figures["socket_errors"] == 0 and figures["non_2xx"] == 0
    assert figures["api_processes"] >= 2 and figures["api_rss_mib_before"] > 0


def test_serving_bench_runs_quickly_on_a_tiny_model(tmp_path: Path, tiny_bert_dir: Path):
    """One invocation measures the default model and, with --base-model, an encoder (a tiny BERT here)."""
    tiny_data(tmp_path, "tiny")
    out = tmp_path / "serving.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "serving.py"), "--quick", "--models", "2",
                          "--dataset", "tiny", "--data-dir", str(tmp_path / "data"), "--spec", '{"epochs": 1}',
                          "--base-model", str(tiny_bert_dir), "--encoder-spec", '{"preset": "accurate", "epochs": 1}',
                          "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {(row["server"], row["endpoint"], row["batching"]): row for row in report["servers"]}
    from bench.serving import BARE_ENDPOINT as bare
    from bench.serving import ENCODER_ENDPOINT as encoder

    for ours in (("ours", "/healthz", None), ("ours", "/v1/predict", "on"), ("ours", "/v1/predict", "off"),
                 ("ours", encoder, "on"), ("ours", encoder, "off"), ("bare", bare, None)):
        runs = rows[ours]["runs"]
        assert [run["connections"] for run in runs] == [1, 16, 64]
        assert all(run["errors"] == 0 and run["rps"] > 0 and run["cpu_ms_per_request"] > 0 for run in runs)
    for peer in (("mlflow", "/invocations", "off"), ("bentoml", "/predict", "off"),
                 ("bentoml", "/predict_batched", "on")):
        assert "no --peers" in rows[peer]["not_measured"]  # the peers run only when asked for
    assert [row["connections"] for row in report["latency"]] == [1, 16, 64]
    assert all(row["predict_batching_off"]["rps"] > 0 and row["bare_vs_floor"] > 0 for row in report["latency"])
    assert [row["texts_per_request"] for row in report["batches"]] == [1, 32, 256]
    for key in ("batches", "encoder_batches"):
        assert [row["texts_per_request"] for row in report[key]] == [1, 32, 256]
        assert all(row["errors"] == 0 and row["in_process_texts_per_s"] > 0 for row in report[key])
    assert len(report["memory"]["2 models"]) == 2 and report["loaded_sessions"] == 4
    assert f"| ours | {encoder} | on |" in run.stdout and "| texts / request (encoder) |" in run.stdout
    assert f"| bare | {bare} | – |" in run.stdout and "of /healthz's req/s, the bare app's" in run.stdout
    assert "| ours | /v1/predict | off |" in run.stdout and "| mlflow | /invocations | off | not measured" in run.stdout


def test_serving_table_compares_each_peer_with_ours_at_the_same_batching(capsys):
    from bench import serving

    def runs(rps: float, cpu_ms: float) -> list[dict]:
        return [{"connections": c, "rps": rps, "p50_ms": 1.0, "p99_ms": 2.0, "cpu_ms_per_request": cpu_ms,
                 "errors": 0, "requests": 100} for c in (1, 16, 64)]

    rows = [serving.row("ours", "/healthz", None, runs=runs(4000, 0.2)),
            serving.row("ours", "/v1/predict", "on", runs=runs(2000, 0.5)),
            serving.row("ours", "/v1/predict", "off", runs=runs(1500, 1.0)),
            serving.row("mlflow", "/invocations", "off", runs=runs(500, 3.0)),
            serving.row("bentoml", "/predict", "off", not_measured="RuntimeError: no wheel"),
            serving.row("bentoml", "/predict_batched", "on", runs=runs(1000, 1.0))]
    serving.compare_at_64(rows)
    assert rows[3]["vs_ours_at_64"] == {"ours_rps_ratio": 3.0, "their_cpu_ratio": 3.0}  # against ours off
    assert rows[5]["vs_ours_at_64"] == {"ours_rps_ratio": 2.0, "their_cpu_ratio": 2.0}  # against ours on
    assert not any("vs_ours_at_64" in row for row in rows[:3] + rows[4:5])
    serving.print_table({"dataset": "tiny", "workers": 2, "cores": 2, "load_generator": "wrk", "duration_s": 1,
                         "servers": rows, "batches": [], "memory": {}})
    table = capsys.readouterr().out
    assert "| mlflow | /invocations | off | 500 | 1.00 | 2.00 | 3.00 |" in table and "| 3.00× | 3.00× |" in table
    assert "| bentoml | /predict | off | not measured: RuntimeError: no wheel |" in table


def test_sweep_bench_runs_a_small_sweep_and_checks_its_leaderboard(tmp_path: Path):
    tiny_data(tmp_path, "tiny")
    out, svg = tmp_path / "sweep.json", tmp_path / "sweep.svg"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "sweep.py"), "--quick", "--no-baseline",
                          "--dataset", "tiny", "--data-dir", str(tmp_path / "data"), "--out", str(out),
                          "--svg", str(svg)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())
    [sweep] = report["runs"]
    assert sweep["status"] == "succeeded" and sweep["counts"]["succeeded"] == 4 and sweep["agrees"]
    assert sweep["parallel"] == 2 and sweep["wall_seconds"] > 0 and len(sweep["loadavg_before"]) == 3
    assert sorted(sweep["leaderboard"]) == [0, 1, 2, 3]
    for child in sweep["children"]:
        assert child["history"] and child["epochs_run"] == 2 and child["test_accuracy"] is not None
        assert child["test_accuracy_via_predict"] == pytest.approx(child["test_accuracy"], abs=1e-9)
    assert "| rank | optimizer | schedule | batch norm |" in run.stdout and "agree" in run.stdout
    lines = ET.parse(svg).getroot().findall("{http://www.w3.org/2000/svg}polyline")
    assert len(lines) == 2 * 4  # two panels, one curve per child
