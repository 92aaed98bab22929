"""Per-request plumbing: a request id echoed to the client (and put on every log record), security headers on
every reply, and one access-log line and Prometheus observation per request."""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, Response, g, request

from app.logs import request_id_var
from app.metrics import HTTP_LATENCY, HTTP_REQUESTS

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


def init_app(app: Flask) -> None:
    @app.before_request
    def _request_id() -> None:
        # Keep the caller's id (e.g. from a proxy) when it is a plain token, so logs join up across hops.
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        g.request_id = incoming if _SAFE_ID.match(incoming) else uuid.uuid4().hex
        g.started = time.perf_counter()
        request_id_var.set(g.request_id)

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
