"""The `textclf` client verbs against a real `textclf serve`: upload, train --watch, jobs, models, alias, predict;
sweep create --watch, show, promote, cancel."""

import json
import os
import subprocess
import sys

import pytest
import requests

from tests.helpers import ROOT, make_settings, start_serve, tiny_dataset_csv, upload_tiny

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
    # MODEL_REFRESH_SECONDS=0: an abstain threshold set below reaches every API process at once
    base, _, _ = start_serve(tmp_path, processes, MODEL_REFRESH_SECONDS="0")
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
    # the listing's val acc is the served model's, as `jobs ID` shows it
    listing = textclf(base, "jobs").stdout
    assert f"{job['metrics']['val_accuracy']:.3f}" in next(line for line in listing.splitlines() if job_id in line)
    model_id = job["model_id"]
    assert model_id in textclf(base, "models").stdout
    assert "per class" in textclf(base, "models", model_id).stdout

    assert f"alias default -> {model_id}" in textclf(base, "alias", "set", "default", model_id).stdout
    table = textclf(base, "predict", "the striker scored a late goal", "stir the sauce slowly", "--top-k", "2").stdout
    assert "sports" in table and "cooking" in table and f"model {model_id}" in table

    texts = tmp_path / "texts.txt"
    texts.write_text("the team won the final\n\nbake the bread until golden\n")
    reply = json.loads(textclf(base, "predict", "--file", str(texts), "--alias", "default", "--json").stdout)
    # --json prints the API's own reply, as README and --help say
    assert reply == requests.post(f"{base}/v1/predict?alias=default", timeout=30, json={
        "texts": ["the team won the final", "bake the bread until golden"], "top_k": 1}).json()
    assert reply["model_id"] == model_id
    assert [p["label"] for p in reply["predictions"]] == ["sports", "cooking"]
    # the global options before the command's name; one text per request: one reply, the predictions in order
    batched = json.loads(textclf(base, "--url", base, "predict", "--file", str(texts), "--batch-size", "1",
                                 "--json").stdout)
    assert [p["label"] for p in batched["predictions"]] == ["sports", "cooking"]
    assert batched["model_id"] == model_id and set(batched) == set(reply)

    # an abstained prediction (label null) is shown as such in the table
    patched = requests.patch(f"{base}/v1/models/{model_id}", json={"abstain_threshold": 1.0}, timeout=30)
    assert patched.status_code == 200, patched.text
    abstained = textclf(base, "predict", "stir the sauce slowly").stdout
    assert "(abstained)" in abstained and f"model {model_id}" in abstained

    # API errors: the API's message, a non-zero status
    bad = textclf(base, "train", dataset["id"], "--set", "epochs=0", ok=False)
    assert bad.returncode == 1 and "validation_error" in bad.stderr and "epochs" in bad.stderr
    missing = textclf(base, "predict", "hi", "--alias", "nope", ok=False)
    assert missing.returncode == 1 and "No alias named 'nope'" in missing.stderr
    done = textclf(base, "jobs", "cancel", job_id, ok=False)
    assert done.returncode == 1 and "already ended" in done.stderr


def test_sweep_cli_story(tmp_path, processes):
    base, _, _ = start_serve(tmp_path, processes)
    dataset_id = upload_tiny(base)

    # a grid of two optimizers, watched to the end: the last leaderboard on stderr, the best child on stdout
    run = textclf(base, "sweep", "create", dataset_id, "--grid", "optimizer.name=sgd,adam", "--set", "epochs=2",
                  "--set", "batch_size=8", "--set", "test_split=0.2", "--name", "tiny-opt", "--watch")
    sweep_id = next(line.split()[1].rstrip(":") for line in run.stderr.splitlines() if line.startswith("sweep "))
    assert "leaderboard (val_macro_f1, higher is better)" in run.stderr
    sweep = json.loads(textclf(base, "sweep", "show", sweep_id, "--json").stdout)
    assert sweep["status"] == "succeeded" and sweep["name"] == "tiny-opt"
    assert sweep["grid"] == {"optimizer.name": ["sgd", "adam"]}
    assert sweep["base"] == {"epochs": 2, "batch_size": 8, "test_split": 0.2}
    assert [(c["params"], c["status"], len(c["history"])) for c in sweep["children"]] == [
        ({"optimizer.name": "sgd"}, "succeeded", 2), ({"optimizer.name": "adam"}, "succeeded", 2)]
    best = sweep["best"]
    assert f"best: child #{best['index']} optimizer.name={best['params']['optimizer.name']}" in run.stdout
    assert best["model_id"] in run.stdout

    listed = textclf(base, "sweep").stdout
    assert sweep_id in listed and "tiny-opt" in listed and "succeeded" in listed
    board = textclf(base, "sweep", sweep_id).stdout
    rows = [line.split() for line in board.splitlines() if line.split()[2:3] in (["sgd"], ["adam"])]
    assert sorted(row[2] for row in rows) == ["adam", "sgd"] and all(row[3] == "succeeded" for row in rows)
    assert rows[0][:3] == ["1", str(best["index"]), best["params"]["optimizer.name"]]

    # promote: the alias serves the best child's model
    promoted = textclf(base, "sweep", "promote", sweep_id, "prod").stdout
    assert f"alias prod -> {best['model_id']} (child #{best['index']})" in promoted
    reply = json.loads(textclf(base, "predict", "the striker scored a late goal", "--alias", "prod", "--json").stdout)
    assert reply["model_id"] == best["model_id"]

    # a random search, cancelled before any child can finish: watching it ends with status 1, nothing to promote
    created = json.loads(textclf(base, "sweep", "create", dataset_id, "--random", "3", "--space",
                                 "optimizer.lr=log:1e-3:1e-1", "--space", "optimizer.name=adam,sgd", "--seed", "1",
                                 "--set", "epochs=20", "--set", "batch_size=8", "--set", "early_stopping=null",
                                 "--json").stdout)
    assert created["search"] == "random" and len(created["children"]) == 3
    for child in created["children"]:
        assert 1e-3 <= child["params"]["optimizer.lr"] <= 0.1 and child["params"]["optimizer.name"] in ("adam", "sgd")
    cancelled = textclf(base, "sweep", "cancel", created["id"]).stdout
    assert f"sweep {created['id']} cancel" in cancelled
    watched = textclf(base, "sweep", "show", created["id"], "--watch", "--json", ok=False)
    assert watched.returncode == 1
    final = json.loads(watched.stdout)
    assert final["status"] == "cancelled" and {c["status"] for c in final["children"]} == {"cancelled"}
    refused = textclf(base, "sweep", "promote", created["id"], "prod", ok=False)
    assert refused.returncode == 1 and "(HTTP 409, conflict)" in refused.stderr

    # a key that is no spec field: the API's 422 names it, nothing is created
    bad = textclf(base, "sweep", "create", dataset_id, "--grid", "optimizer.nme=sgd,adam", ok=False)
    assert bad.returncode == 1 and "validation_error" in bad.stderr and "optimizer.nme" in bad.stderr
    assert json.loads(textclf(base, "sweep", "--json").stdout)["total"] == 2


def test_cli_keys_before_or_after_the_command_and_a_missing_or_rejected_key(tmp_path, processes):
    base, _, settings = start_serve(tmp_path, processes, make_settings(tmp_path, AUTH_REQUIRED=True))
    admin = (settings.data_dir / "admin.key").read_text().strip()

    # --url and --key before the command's name, after it, or from the environment
    assert json.loads(textclf(base, "--url", base, "--key", admin, "datasets", "list", "--json").stdout)["total"] == 0
    assert json.loads(textclf(base, "datasets", "list", "--json", "--key", admin).stdout)["total"] == 0

    # the server's two 401s: no key, or a key it does not know; the message says which
    missing = textclf(base, "--url", base, "datasets", "list", ok=False)
    assert missing.returncode == 1 and "An API key is required" in missing.stderr
    assert "this server needs an API key" in missing.stderr
    rejected = textclf(base, "--key", "tc_not-a-key", "datasets", "list", ok=False)
    assert rejected.returncode == 1 and "The API key is not valid" in rejected.stderr
    assert "rejected the API key" in rejected.stderr and "needs an API key" not in rejected.stderr
