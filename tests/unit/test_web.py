"""The browser pages: the dashboard and /docs load only files this server serves (no CDN), under a strict CSP."""

import re
from pathlib import Path

import pytest

from app import create_app
from tests.helpers import make_settings

pytestmark = pytest.mark.unit

STATIC = Path(__file__).resolve().parents[2] / "app" / "static"
PAGES = ["/", "/models", "/try", "/jobs/0b7e5a52-8f43-4c55-9d8e-2f1f0a6e3c11", "/sweeps",
         "/sweeps/5e1f0a52-8f43-4c55-9d8e-2f1f0a6e3c11", "/docs"]
# The SVG namespace is an identifier, not something a browser fetches.
ALLOWED_URLS = {"http://www.w3.org/2000/svg"}


@pytest.fixture
def client(tmp_path):
    return create_app(make_settings(tmp_path)).test_client()


def fetch(client, url: str):
    """GET and close the reply (file replies hold the file open until closed)."""
    with client.get(url) as reply:
        reply.get_data()
        return reply


def referenced(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', html)


@pytest.mark.parametrize("path", PAGES)
def test_page_loads_only_local_files(client, path):
    reply = fetch(client, path)
    assert reply.status_code == 200 and reply.mimetype == "text/html"
    html = reply.get_data(as_text=True)
    assert not re.search(r"https?:|//[a-z]", html, re.IGNORECASE), "the page names another host"
    csp = reply.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "http" not in csp
    assets = [url for url in referenced(html) if not url.startswith("data:")]
    assert any(url.endswith(".js") for url in assets)
    for url in assets:
        if url.startswith("/") and not url.endswith(".json"):
            asset = fetch(client, url)
            assert asset.status_code == 200 and asset.get_data(), url


@pytest.mark.parametrize("path", PAGES)
def test_pages_need_no_key_where_the_api_does(tmp_path, path):
    """The pages hold no data (the API calls they make carry the user's key), so a browser can always load them."""
    client = create_app(make_settings(tmp_path, AUTH_REQUIRED=True)).test_client()
    assert fetch(client, path).status_code == 200
    assert fetch(client, "/v1/jobs").status_code == 401


def test_every_dashboard_page_is_in_the_navigation_and_routed_by_app_js():
    html = (STATIC / "dashboard" / "index.html").read_text()
    app_js = (STATIC / "dashboard" / "app.js").read_text()
    for page in ("/models", "/try", "/sweeps"):
        assert f'href="{page}"' in html and f'"{page}"' in app_js, page
    assert r"/^\/sweeps\/([^/]+)$/" in app_js


def test_own_scripts_and_styles_fetch_nothing_from_outside():
    files = [p for p in STATIC.rglob("*") if p.suffix in {".js", ".css", ".html"}]
    assert len(files) >= 8
    for path in files:
        urls = set(re.findall(r"https?://[^\s\"'`)]+", path.read_text()))
        assert urls <= ALLOWED_URLS, (path, urls)


def test_dashboard_modules_import_files_that_exist():
    for script in (STATIC / "dashboard").glob("*.js"):
        for name in re.findall(r'from "\./([\w.]+)"', script.read_text()):
            assert (STATIC / "dashboard" / name).is_file(), (script.name, name)


def test_docs_points_swagger_ui_at_our_document_without_the_online_validator():
    init = (STATIC / "docs" / "docs.js").read_text()
    assert 'url: "/openapi.json"' in init and "validatorUrl: null" in init


def test_only_the_swagger_files_docs_uses_are_served(client):
    bundle = fetch(client, "/docs/swagger-ui/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and b"SwaggerUIBundle" in bundle.get_data()
    assert fetch(client, "/docs/swagger-ui/swagger-ui.css").status_code == 200
    for name in ("oauth2-redirect.html", "..%2Fflask_swagger_ui.py", "nothing.js"):
        reply = fetch(client, f"/docs/swagger-ui/{name}")
        assert reply.status_code == 404 and reply.is_json


def test_api_replies_keep_the_strict_policy(client):
    reply = fetch(client, "/healthz")
    assert reply.headers["Content-Security-Policy"].startswith("default-src 'none'")
