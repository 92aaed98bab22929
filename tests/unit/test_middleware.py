"""Request-line and header limits, checked before any view runs."""

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
