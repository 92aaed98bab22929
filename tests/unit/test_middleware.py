"""Request plumbing (app/middleware.py): request-line and header limits checked before any view runs, and the
headers and access-log line every reply gets."""

import pytest
from werkzeug.exceptions import BadRequest, RequestHeaderFieldsTooLarge, RequestURITooLarge

from app.middleware import MAX_HEADER_BYTES, MAX_HEADERS, MAX_URL_BYTES, check_request_framing

pytestmark = pytest.mark.unit


def environ(**extra) -> dict:
    return {"REQUEST_METHOD": "GET", "PATH_INFO": "/healthz", "QUERY_STRING": "", "HTTP_HOST": "x", **extra}


def test_an_ordinary_request_passes():
    check_request_framing(environ(HTTP_AUTHORIZATION="Bearer " + "k" * 64, CONTENT_LENGTH="10"))


@pytest.mark.parametrize("extra, error", [
    ({"PATH_INFO": "/" + "a" * MAX_URL_BYTES}, RequestURITooLarge),
    ({"QUERY_STRING": "q=" + "a" * MAX_URL_BYTES}, RequestURITooLarge),
    ({"HTTP_X_BIG": "a" * MAX_HEADER_BYTES}, RequestHeaderFieldsTooLarge),
    ({f"HTTP_X_{i}": "v" for i in range(MAX_HEADERS)}, RequestHeaderFieldsTooLarge),
    ({"HTTP_TRANSFER_ENCODING": "chunked", "CONTENT_LENGTH": "5"}, BadRequest),
], ids=["long_path", "long_query", "big_header", "too_many_headers", "two_framings"])
def test_what_is_refused(extra, error):
    with pytest.raises(error):
        check_request_framing(environ(**extra))


def test_server_environment_variables_are_not_counted_as_headers():
    # Granian puts the process environment into the WSGI environ too: only HTTP_* keys are headers.
    check_request_framing(environ(**{f"SOME_VAR_{i}": "x" * 9000 for i in range(200)}))


def test_security_headers_fill_in_without_overriding_a_view_and_name_the_route(caplog):
    """RequestPlumbing adds each security header once, keeps one a view set itself, and logs the URL rule."""
    import logging

    from flask import Flask

    from app import middleware

    app = Flask(__name__)
    middleware.init_app(app)

    @app.get("/things/<thing_id>")
    def thing(thing_id: str):
        return {"id": thing_id}, 200, {"Cache-Control": "max-age=60"}

    with caplog.at_level(logging.INFO, logger="textclf.access"):
        resp = app.test_client().get("/things/caf%C3%A9", headers={"X-Request-ID": "req.7"})
    assert resp.headers.getlist("Cache-Control") == ["max-age=60"]
    for name, value in middleware.SECURITY_HEADERS.items():
        if name != "Cache-Control":
            assert resp.headers.getlist(name) == [value]
    assert resp.headers.getlist("X-Request-ID") == ["req.7"]
    (record,) = [r for r in caplog.records if r.name == "textclf.access"]
    assert (record.route, record.path, record.status) == ("/things/<thing_id>", "/things/café", 200)
