"""Per-request plumbing: limits on the request line and headers, a request id echoed to the client (and put on
every log record), security headers on every reply, and one access-log line and Prometheus observation per
request."""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, Response, g, request
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
    @app.before_request
    def _request_id() -> None:
        # Keep the caller's id (e.g. from a proxy) when it is a plain token, so logs join up across hops.
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        g.request_id = incoming if _SAFE_ID.match(incoming) else uuid.uuid4().hex
        g.started = time.perf_counter()
        request_id_var.set(g.request_id)
        check_request_framing(request.environ)

    @app.teardown_request
    def _forget_request_id(_exc: BaseException | None) -> None:
        request_id_var.set(None)  # log records written between requests belong to no request

    @app.after_request
    def _headers(response: Response) -> Response:
        response.headers[REQUEST_ID_HEADER] = g.get("request_id", "")
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        _observe(response)
        return response


def _observe(response: Response) -> None:
    seconds = time.perf_counter() - g.get("started", time.perf_counter())
    # The URL rule, not the path: one series per route, however many model ids there are.
    route = request.url_rule.rule if request.url_rule is not None else "(unmatched)"
    HTTP_REQUESTS.labels(request.method, route, str(response.status_code)).inc()
    HTTP_LATENCY.labels(request.method, route).observe(seconds)
    access_log.info("%s %s %d %.2f ms", request.method, route, response.status_code, seconds * 1000,
                    extra={"method": request.method, "route": route, "path": request.path,
                           "status": response.status_code, "duration_ms": round(seconds * 1000, 3)})


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
