import subprocess
import sys

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


def test_api_never_imports_torch():
    code = ("import sys; import app; from app import create_app; import app.cli, app.api.models, app.serving; "
            "assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_every_operation_has_one_resource_tag_that_is_described():
    doc = build_openapi()
    described = {tag["name"]: tag["description"] for tag in doc["tags"]}
    assert set(described) == {"datasets", "jobs", "sweeps", "models", "aliases", "predict", "keys", "health",
                              "metrics"}
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
