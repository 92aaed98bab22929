"""The `textclf` client verbs against a real `textclf serve`: upload, train --watch, jobs, models, alias, predict."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, start_serve, tiny_dataset_csv

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def textclf(base: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    """Run `textclf ARGS` as a user would, pointed at `base` through the environment."""
    env = {**os.environ, "TEXTCLF_URL": base, "COLUMNS": "120"}
    done = subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    if ok:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_cli_story(tmp_path, processes):
    base, _, _ = start_serve(tmp_path, processes)
    data = tmp_path / "tiny.csv"
    data.write_bytes(tiny_dataset_csv())

    dataset = json.loads(textclf(base, "datasets", "upload", str(data), "--name", "tiny", "--json").stdout)
    assert dataset["row_count"] == 72 and set(dataset["labels"]) == {"cooking", "sports"}
    assert dataset["id"] in textclf(base, "datasets", "list").stdout

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"epochs": 5, "batch_size": 8}))
    run = textclf(base, "train", dataset["id"], "--spec-file", str(spec), "--set", "epochs=3",
                  "--set", "optimizer.lr=0.01", "--watch")
    # one line per finished epoch on stderr, then the job table on stdout
    assert [line.split()[1] for line in run.stderr.splitlines() if line.startswith("epoch ")] == ["1", "2", "3"]
    assert "100.0%" in run.stderr and "epoch 3/3" in run.stderr
    assert "succeeded" in run.stdout and "history" in run.stdout
    job_id = next(line.split()[1] for line in run.stderr.splitlines() if line.startswith("job "))

    job = json.loads(textclf(base, "jobs", job_id, "--json").stdout)
    assert job["status"] == "succeeded" and job["spec"]["epochs"] == 3 and job["spec"]["optimizer"]["lr"] == 0.01
    assert job_id in textclf(base, "jobs").stdout
    model_id = job["model_id"]
    assert model_id in textclf(base, "models").stdout
    assert "per class" in textclf(base, "models", model_id).stdout

    assert f"alias default -> {model_id}" in textclf(base, "alias", "set", "default", model_id).stdout
    table = textclf(base, "predict", "the striker scored a late goal", "stir the sauce slowly", "--top-k", "2").stdout
    assert "sports" in table and "cooking" in table and f"model {model_id}" in table

    texts = tmp_path / "texts.txt"
    texts.write_text("the team won the final\n\nbake the bread until golden\n")
    reply = json.loads(textclf(base, "predict", "--file", str(texts), "--alias", "default", "--json").stdout)
    assert reply["model_id"] == model_id
    assert [(p["text"], p["label"]) for p in reply["predictions"]] == [("the team won the final", "sports"),
                                                                      ("bake the bread until golden", "cooking")]

    # API errors: the API's message, a non-zero status
    bad = textclf(base, "train", dataset["id"], "--set", "epochs=0", ok=False)
    assert bad.returncode == 1 and "validation_error" in bad.stderr and "epochs" in bad.stderr
    missing = textclf(base, "predict", "hi", "--alias", "nope", ok=False)
    assert missing.returncode == 1 and "No alias named 'nope'" in missing.stderr
    done = textclf(base, "jobs", "cancel", job_id, ok=False)
    assert done.returncode == 1 and "already ended" in done.stderr
