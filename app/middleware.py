"""Per-request plumbing: limits on the request line and headers, a request id echoed to the client (and put on
every log record), security headers on every reply, and one access-log line and Prometheus observation per
request."""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, request
from werkzeug.exceptions import BadRequest, RequestHeaderFieldsTooLarge, RequestURITooLarge

from app.metrics import HTTP_LATENCY, HTTP_REQUESTS
from core.logs import request_id_var

access_log = logging.getLogger("textclf.access")

REQUEST_ID_HEADER = "X-Request-ID"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")

# The API serves JSON only: nothing may be framed, sniffed as another type, or load sub-resources.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Cache-Control": "no-store",
}


# The HTTP server (Granian) accepts request lines and headers up to its 400 KiB buffer; we answer less, in our
# JSON shape, with nginx's and gunicorn's usual bounds: 8 KiB for the URL and for any one header, 100 headers.
MAX_URL_BYTES = 8192
MAX_HEADER_BYTES = 8192
MAX_HEADERS = 100


def init_app(app: Flask) -> None:
    app.wsgi_app = RequestPlumbing(app.wsgi_app)

    @app.before_request
    def _route_and_framing() -> None:
        # The URL rule, not the path, names the route in metrics and logs: one series per route, however many
        # model ids there are.
        rule = request.url_rule
        request.environ[ROUTE_KEY] = rule.rule if rule is not None else UNMATCHED
        check_request_framing(request.environ)


ROUTE_KEY = "textclf.route"
UNMATCHED = "(unmatched)"
# What start_response gets added, as (name, value, lower-case name): built once, not per reply.
_EXTRA_HEADERS = tuple((name, value, name.lower()) for name, value in SECURITY_HEADERS.items())


class RequestPlumbing:
    """WSGI middleware around the Flask app: the request id, the security headers and the request's metrics and
    access-log line. At this level the headers cost a few list operations per reply, where Flask's after_request
    with werkzeug's Headers.setdefault cost about 0.03 ms, and /healthz in the app got a third cheaper
    (bench/README.md)."""

    def __init__(self, wsgi_app) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict, start_response):
        started = time.perf_counter()
        # Keep the caller's id (e.g. from a proxy) when it is a plain token, so logs join up across hops.
        incoming = environ.get("HTTP_X_REQUEST_ID", "")
        request_id = incoming if incoming and _SAFE_ID.match(incoming) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        status_line = ""

        def start(status: str, headers: list[tuple[str, str]], exc_info=None):
            nonlocal status_line
            status_line = status
            present = {name.lower() for name, _ in headers}
            headers.extend((name, value) for name, value, lower in _EXTRA_HEADERS if lower not in present)
            headers.append((REQUEST_ID_HEADER, request_id))
            return start_response(status, headers, exc_info)

        try:
            return self.wsgi_app(environ, start)
        finally:
            if status_line:
                _observe(environ, int(status_line[:3]), time.perf_counter() - started)
            request_id_var.reset(token)  # log records written between requests belong to no request


def _observe(environ: dict, status: int, seconds: float) -> None:
    route = environ.get(ROUTE_KEY, UNMATCHED)
    method = environ.get("REQUEST_METHOD", "")
    HTTP_REQUESTS.labels(method, route, str(status)).inc()
    HTTP_LATENCY.labels(method, route).observe(seconds)
    if access_log.isEnabledFor(logging.INFO):
        # WSGI hands the path over as latin-1 code points of its UTF-8 bytes (PEP 3333); log what the client sent.
        path = environ.get("PATH_INFO", "").encode("latin-1", "replace").decode("utf-8", "replace")
        access_log.info("%s %s %d %.2f ms", method, route, status, seconds * 1000,
                        extra={"method": method, "route": route, "path": path, "status": status,
                               "duration_ms": round(seconds * 1000, 3)})


def check_request_framing(environ: dict) -> None:
    """Refuse, before any view runs, what the HTTP server let through but we do not serve: over-long URLs and
    headers (414/431), and a body framed two ways (400: request smuggling, RFC 9112 section 6.3)."""
    url_bytes = len(environ.get("PATH_INFO", "").encode("latin-1", "replace")) + len(environ.get("QUERY_STRING", ""))
    if url_bytes > MAX_URL_BYTES:
        raise RequestURITooLarge(f"The URL is {url_bytes} bytes; at most {MAX_URL_BYTES} are served.")
    headers = [(k, v) for k, v in environ.items() if k.startswith("HTTP_") or k in ("CONTENT_TYPE", "CONTENT_LENGTH")]
    if len(headers) > MAX_HEADERS:
        raise RequestHeaderFieldsTooLarge(f"The request has {len(headers)} headers; at most {MAX_HEADERS} are served.")
    for key, value in headers:
        if len(key) + len(str(value)) > MAX_HEADER_BYTES:
            name = key.removeprefix("HTTP_").replace("_", "-").title()
            raise RequestHeaderFieldsTooLarge(f"Header {name} is over {MAX_HEADER_BYTES} bytes.")
    if environ.get("HTTP_TRANSFER_ENCODING") and environ.get("CONTENT_LENGTH"):
        raise BadRequest("The request has both Content-Length and Transfer-Encoding; send one of them.")
