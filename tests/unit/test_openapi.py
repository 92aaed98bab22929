import subprocess
import sys

import jsonschema
import pytest

from app.openapi import REF, build_openapi
from app.spec import TrainingSpec

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
    code = ("import sys; import app; from app import create_app; import app.cli, app.api.models, app.predictors; "
            "assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr
