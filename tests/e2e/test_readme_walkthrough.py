"""The README's curl commands, as written, against a real `textclf serve` with API keys on: the API walkthrough
(make a dataset, upload, train, poll, predict, models, aliases, sweep, promote), setting an abstain threshold and
downloading a bundle.

The commands are parsed out of README.md, so a change there changes what runs here. Only what a user would fill
in is substituted: the ids from earlier replies and the port (the test's server has a free one, not 8000)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tests.helpers import ROOT, child_env, make_settings, start_serve
from tests.tiny_bert import build_tiny_bert

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
README_URL = "http://127.0.0.1:8000"


def bash_block(readme: str, after: str) -> str:
    """The first ```bash block after the text `after`."""
    return re.search(r"```bash\n(.*?)```", readme[readme.index(after):], re.S).group(1)


def commands(block: str) -> list[str]:
    """The block's shell commands, one string each (a command may span lines); comment lines dropped."""
    found, lines = [], []
    for line in block.splitlines():
        if not lines and (not line.strip() or line.lstrip().startswith("#")):
            continue
        lines.append(line)
        text = "\n".join(lines)
        # Complete when bash parses it (no open quote or brace; a <placeholder> read as a word, not redirections)
        # and no backslash continues it.
        check = ["bash", "-n", "-c", re.sub(r"<(\w+)>", r"\1", text)]
        if not line.endswith("\\") and subprocess.run(check, capture_output=True).returncode == 0:
            found.append(text)
            lines = []
    assert not lines, f"unfinished command in the README: {lines}"
    return found


class Shell:
    """Runs README commands with bash in the user's folder, the block's variable assignments (AUTH=...) first."""

    def __init__(self, cwd: Path, base: str, env: dict[str, str] | None = None):
        self.cwd, self.base, self.env, self.assignments = cwd, base, env, []
        self.ids: dict[str, str] = {}  # placeholder in the README -> the id a user copies from a reply

    def run(self, command: str) -> str:
        if re.match(r"^[A-Z_]+=", command):
            self.assignments.append(command)
            return ""
        for placeholder, value in self.ids.items():
            command = command.replace(placeholder, value)
        assert not re.search(r"<\w+>|[0-9a-f]{4}\.\.\.", command), f"an id left to fill in: {command}"
        script = "\n".join([*self.assignments, command.replace(README_URL, self.base)])
        done = subprocess.run(["bash", "-c", script], cwd=self.cwd, env=self.env, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def json(self, command: str) -> dict:
        reply = json.loads(self.run(command))
        assert list(reply) != ["error"], f"{command}\n{reply}"  # an error reply holds that key alone
        return reply


def test_the_readme_curl_commands_run_as_written(tmp_path: Path, processes):
    readme = (ROOT / "README.md").read_text()
    walkthrough = commands(bash_block(readme, "## API walkthrough"))
    # As after `make serve`: the data folder textclf-data/ in the folder the user runs the commands from.
    settings = make_settings(tmp_path, TEXTCLF_DATA_DIR=tmp_path / "textclf-data", AUTH_REQUIRED=True)
    base, _, _ = start_serve(tmp_path, processes, settings)
    # `textclf` as on the server: the same settings, the venv's scripts on PATH
    env = {**child_env(settings), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    shell = Shell(tmp_path, base, env)
    steps = iter(walkthrough)

    def step(*words: str) -> str:
        """The next command; it must contain `words` (the test and the README then agree on what runs)."""
        command = next(steps)
        assert all(w in command for w in words), f"expected {words} in the README's next command: {command}"
        return command

    shell.run(step('AUTH="Authorization: Bearer'))
    shell.run(step("> train.csv"))
    dataset = shell.json(step("-F file=@train.csv"))
    assert dataset["row_count"] == 36 and dataset["labels"] == {"HUM": 12, "LOC": 12, "NUM": 12}, dataset
    shell.ids["6f1c..."] = shell.ids["<dataset_id>"] = dataset["id"]
    assert shell.json(step('"records"'))["row_count"] == 2
    assert shell.json(step("--data-binary @train.csv"))["row_count"] == 36

    accepted = shell.run(step("curl -si", "/v1/jobs"))
    assert accepted.startswith("HTTP/1.1 202"), accepted
    job_id = re.search(r"^Location: /v1/jobs/(\S+)", accepted, re.M | re.I).group(1)
    assert shell.json(step("/v1/jobs", '"fasttext"'))["status"] == "queued"

    shell.ids["0b7e..."] = job_id
    poll = step("/v1/jobs/0b7e...")
    deadline = time.monotonic() + 300
    while (job := shell.json(poll))["status"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, job
        time.sleep(1)
    assert job["status"] == "succeeded", job
    model_id = shell.ids["<model_id>"] = job["model_id"]
    assert job_id in [j["id"] for j in shell.json(step("/v1/jobs?status=succeeded"))["items"]]

    # the reply the README shows: the model's default name, no alias (the model was named by id)
    reply = shell.json(step("/v1/models/<model_id>/predict", "Denver to Aspen"))
    assert (reply["model_id"], reply["model_name"], reply["model_version"], reply["alias"]) == (
        model_id, f"model-{model_id[:8]}", 1, None)
    assert reply["predictions"][0]["label"] == "NUM" and len(reply["predictions"][0]["top_k"]) == 3, reply
    assert len(shell.json(step("/v1/predict -d"))["predictions"]) == 1
    assert model_id in [m["id"] for m in shell.json(step("/v1/models "))["items"]]
    assert shell.json(step("/v1/models/<model_id>/evaluation"))["validation"]
    assert shell.json(step("-X PUT", "/v1/aliases/default"))["model_id"] == model_id
    assert shell.json(step("/v1/predict?alias=default"))["model_id"] == model_id

    sweep = shell.json(step("/v1/sweeps -d"))
    assert len(sweep["children"]) == 6 and sweep["max_parallel"] == 1, sweep
    shell.ids["<sweep_id>"] = sweep["id"]
    # Promoting needs one child that succeeded, not the whole sweep: stop waiting there.
    show = step("/v1/sweeps/<sweep_id> ")
    deadline = time.monotonic() + 300
    while (sweep := shell.json(show))["best"] is None:
        assert time.monotonic() < deadline and sweep["status"] not in ("succeeded", "failed", "cancelled"), sweep
        time.sleep(1)
    promoted = shell.json(step("/v1/sweeps/<sweep_id>/promote"))
    assert promoted["alias"] == "prod" and promoted["model_id"] == sweep["best"]["model_id"]
    assert next(steps, None) is None, "a README command this test does not run"

    # Serving: an abstain threshold set later; the model bundle downloaded
    (patch,) = commands(bash_block(readme, "**Abstaining.**"))
    assert shell.json(patch)["abstain_threshold"] == {"HUM": 0.7, "LOC": 0.5}
    (download,) = commands(bash_block(readme, "### Model bundle"))
    shell.run(download)
    with zipfile.ZipFile(tmp_path / "model.zip") as bundle:
        assert json.loads(bundle.read("model_card.json"))["id"] == model_id
    # Base models: installed by the CLI and over HTTP, listed, fine-tuned (the tiny random BERT stands where a user
    # has all-MiniLM-L6-v2)
    build_tiny_bert(tmp_path / "all-MiniLM-L6-v2")
    add, pack, upload, listing, fine_tune = commands(bash_block(readme, "**Base models.**"))
    shell.run(add)
    shell.run(pack)
    assert shell.json(upload)["name"] == "minilm"
    assert [m["name"] for m in shell.json(listing)["items"]] == ["all-MiniLM-L6-v2", "minilm"]
    job = shell.json(fine_tune)
    assert job["spec"]["model"]["name"] == "encoder" and job["spec"]["model"]["base_model"] == "minilm"
    poll = f'curl -s -H "$AUTH" {README_URL}/v1/jobs/{job["id"]}'
    deadline = time.monotonic() + 300
    while (job := shell.json(poll))["status"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, job
        time.sleep(1)
    assert job["status"] == "succeeded" and job["metrics"]["base_model"]["name"] == "minilm", job

    # -f: with a key that is not valid, curl fails and writes no file
    (tmp_path / "model.zip").unlink()
    shell.assignments = ['AUTH="Authorization: Bearer tc_not-a-key"']
    with pytest.raises(AssertionError, match="401"):
        shell.run(download)
    assert not (tmp_path / "model.zip").exists()
