"""API key secrets, the scope map and the rate-limit classes: pure functions and the app's route table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app import create_app
from app.auth import ROUTE_SCOPES, allows, is_public, required_scope
from core.api_keys import generate_key, hash_key
from core.spec import Scope
from tests.helpers import make_settings

pytestmark = pytest.mark.unit


def test_generated_keys_are_long_random_and_carry_their_prefix():
    secret, prefix = generate_key()
    assert re.fullmatch(r"tc_[0-9a-f]{8}_[A-Za-z0-9_-]{43}", secret), secret
    assert secret.startswith(prefix + "_") and len(prefix) == 11
    assert len({generate_key()[0] for _ in range(100)}) == 100


def test_hash_is_sha256_hex_and_differs_per_key():
    secret, _ = generate_key()
    digest = hash_key(secret)
    assert re.fullmatch(r"[0-9a-f]{64}", digest) and digest == hash_key(secret)
    assert secret not in digest
    assert hash_key(secret + "x") != digest
    assert hash_key("tc_\udc80") != hash_key("tc_")  # odd header bytes hash, they do not raise


@pytest.mark.parametrize(("scopes", "needed", "allowed"), [
    (["admin"], Scope.train, True), (["admin"], Scope.admin, True),
    (["read"], Scope.read, True), (["read"], Scope.train, False), (["read"], Scope.admin, False),
    (["train"], Scope.read, False), (["predict", "read"], Scope.predict, True), (["predict"], None, True),
    ([], Scope.read, False),
])
def test_allows(scopes, needed, allowed):
    assert allows(scopes, needed) is allowed


def test_required_scope_per_method():
    assert required_scope("GET", "/v1/jobs") == Scope.read
    assert required_scope("HEAD", "/v1/jobs") == Scope.read
    assert required_scope("POST", "/v1/jobs") == Scope.train
    assert required_scope("POST", "/v1/predict") == Scope.predict
    assert required_scope("PUT", "/v1/aliases/<name>") == Scope.admin
    assert required_scope("GET", "/v1/keys") == Scope.admin
    assert required_scope("POST", "/v1/something-new") == Scope.admin  # unlisted: closed to all but admin
    assert required_scope("OPTIONS", "/v1/jobs") is None and required_scope("GET", None) is None


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/openapi.json", "/", "/docs", "/docs/swagger.js",
                                  "/static/app.js", "/models", "/try", "/jobs/123"])
def test_public_paths(path):
    assert is_public(path)


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/keys", "/metrics", "/docsx", "/staticx", "/v1/healthz"])
def test_private_paths(path):
    assert not is_public(path)


def test_every_v1_route_has_a_declared_scope_and_every_declared_route_exists(tmp_path: Path):
    """A new /v1 endpoint must be added to app.auth.ROUTE_SCOPES (else only admin keys may call it)."""
    app = create_app(make_settings(tmp_path))
    routes = {(method, rule.rule) for rule in app.url_map.iter_rules()
              for method in rule.methods - {"HEAD", "OPTIONS"}}
    v1 = {r for r in routes if r[1].startswith("/v1/")}
    assert v1, "no /v1 routes found"
    missing = sorted(v1 - set(ROUTE_SCOPES))
    assert not missing, f"routes without a scope in app/auth.py ROUTE_SCOPES: {missing}"
    unknown = sorted(r for r in ROUTE_SCOPES if r[1].startswith("/v1/") and r not in v1)
    assert not unknown, f"ROUTE_SCOPES names routes that do not exist: {unknown}"
    # Everything outside /v1 is either public or listed too.
    others = sorted(r for r in routes - v1 if not is_public(r[1]) and r not in ROUTE_SCOPES)
    assert not others, f"routes outside /v1 that are neither public nor in ROUTE_SCOPES: {others}"


def test_openapi_documents_the_bearer_scheme_and_the_auth_errors():
    from app.openapi import build_openapi

    doc = build_openapi()
    assert doc["components"]["securitySchemes"]["bearer"] == {**doc["components"]["securitySchemes"]["bearer"],
                                                              "type": "http", "scheme": "bearer"}
    assert doc["security"] == [{"bearer": []}]
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            if is_public(path):
                assert operation["security"] == [], path
            else:
                assert {"401", "403", "429"} <= set(operation["responses"]), (method, path)
                rule = path.replace("{", "<").replace("}", ">")
                assert (method.upper(), rule) in ROUTE_SCOPES, (method, path)
