import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jsonschema
import pytest

from app.openapi import REF, build_openapi
from core.spec import TrainingSpec

pytestmark = pytest.mark.unit


def test_served_document_embeds_exactly_the_training_spec_schema():
    doc = build_openapi()
    expected = TrainingSpec.model_json_schema(ref_template=REF)
    defs = expected.pop("$defs")
    schemas = doc["components"]["schemas"]
    assert schemas["TrainingSpec"] == expected
    for name, schema in defs.items():
        assert schemas[name] == schema
    body = doc["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/TrainingSpec"}


def test_document_is_valid_openapi_31():
    from openapi_spec_validator import validate

    validate(build_openapi())


def test_every_ref_resolves():
    doc = build_openapi()
    refs = []

    def walk(node):
        if isinstance(node, dict):
            if "$ref" in node:
                refs.append(node["$ref"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc)
    names = set(doc["components"]["schemas"])
    assert refs and all(r.rsplit("/", 1)[1] in names for r in refs)
    jsonschema.Draft202012Validator.check_schema(doc["components"]["schemas"]["TrainingSpec"])


def loaded_modules(code: str, prefixes: tuple[str, ...]) -> list[str]:
    """Run `code` in a fresh interpreter, then list the loaded modules that are, or are inside, one of `prefixes`."""
    report = ("import json, sys; "
              f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {list(prefixes)!r})))")
    out = subprocess.run([sys.executable, "-c", f"{code}\n{report}"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_api_never_imports_torch_or_the_worker(tmp_path: Path):
    """create_app() imports every blueprint; it, the CLI and the serving code load neither torch, transformers nor
    worker/ (an encoder model is served from its ONNX graph and tokenizer.json)."""
    settings = {"TEXTCLF_DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": f"sqlite:///{tmp_path / 'api.db'}",
                "ARTIFACT_DIR": str(tmp_path / "artifacts"), "AUTH_REQUIRED": False, "RATE_LIMIT_ENABLED": False}
    code = textwrap.dedent(f"""
        from app import create_app
        import app.cli, app.serving
        from core.config import Settings

        api = create_app(Settings(**{settings!r}))
        assert {{"datasets", "health", "jobs", "keys", "models", "sweeps"}} <= set(api.blueprints), api.blueprints
    """)
    assert loaded_modules(code, ("torch", "transformers", "worker")) == []


def test_core_loads_neither_flask_nor_torch():
    """Every module of core/, imported together: no web framework, no torch, neither role."""
    code = textwrap.dedent("""
        import importlib, pkgutil
        import core

        names = [m.name for m in pkgutil.walk_packages(core.__path__, "core.")]
        assert {"core.config", "core.db.jobs", "core.ml.predictor"} <= set(names), names
        for name in names:
            importlib.import_module(name)
    """)
    assert loaded_modules(code, ("flask", "werkzeug", "torch", "app", "worker")) == []


def test_every_operation_has_one_resource_tag_that_is_described():
    doc = build_openapi()
    described = {tag["name"]: tag["description"] for tag in doc["tags"]}
    assert set(described) == {"datasets", "jobs", "sweeps", "models", "aliases", "base-models", "predict", "keys",
                              "health", "metrics"}
    assert all(described.values())
    used = set()
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            assert len(operation.get("tags", [])) == 1 and operation["tags"][0] in described, (method, path)
            used.add(operation["tags"][0])
    assert used == set(described)  # no tag without operations
    assert doc["paths"]["/v1/models/{model_id}/predict"]["post"]["tags"] == ["predict"]
    assert doc["paths"]["/v1/models/{model_id}/bundle"]["get"]["tags"] == ["models"]


def test_readyz_is_described_with_its_worker_check():
    readyz = build_openapi()["paths"]["/readyz"]["get"]
    assert "worker" in readyz["summary"]
    assert "training worker sent a heartbeat" in readyz["description"]
    assert "WORKER_SEEN_WITHIN" in readyz["description"]
    schema = readyz["responses"]["503"]["content"]["application/json"]["schema"]
    assert set(schema["properties"]["checks"]["properties"]) == {"database", "broker", "workers"}
    assert "message" in schema["properties"]
