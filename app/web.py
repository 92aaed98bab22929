"""The browser pages: the dashboard at / and interactive API docs at /docs.

Everything a page loads comes from this server: the dashboard's own files in app/static/, and Swagger UI's
files from the `flask-swagger-ui` package (no CDN: our machines, and many users', have no internet).
"""

from __future__ import annotations

from importlib.resources import files

from flask import Blueprint, Response, abort, send_from_directory

bp = Blueprint("web", __name__)

STATIC = files("app") / "static"
# Swagger UI's distribution as the package ships it; only the files /docs uses are served from it.
SWAGGER_DIST = files("flask_swagger_ui") / "dist"
SWAGGER_FILES = {"swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png", "LICENSE"}

# Pages may load scripts, styles and images from this origin and call its API, nothing else: no inline
# script, no third-party host. (The API's own replies keep the stricter `default-src 'none'`.)
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


def _page(path: str) -> Response:
    response = send_from_directory(STATIC, path)
    response.headers["Content-Security-Policy"] = PAGE_CSP
    return response


# One HTML file for every dashboard page: app.js reads the path and draws the page.
@bp.get("/")
@bp.get("/jobs/<job_id>")
@bp.get("/models")
@bp.get("/try")
@bp.get("/sweeps")
@bp.get("/sweeps/<sweep_id>")
def dashboard(job_id: str | None = None, sweep_id: str | None = None) -> Response:
    return _page("dashboard/index.html")


@bp.get("/docs")
def docs() -> Response:
    return _page("docs/index.html")


@bp.get("/docs/swagger-ui/<name>")
def swagger_asset(name: str) -> Response:
    if name not in SWAGGER_FILES:
        abort(404)
    return send_from_directory(SWAGGER_DIST, name)
