"""Every error the API returns, in one JSON shape, with no stack trace or internal path in it."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException

from core.errors import ErrorCode, ServiceError, error_body, validation_details

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: ErrorCode.bad_request, 401: ErrorCode.unauthorized, 403: ErrorCode.forbidden, 404: ErrorCode.not_found,
    405: ErrorCode.method_not_allowed, 409: ErrorCode.conflict, 413: ErrorCode.payload_too_large,
    414: ErrorCode.uri_too_long, 415: ErrorCode.unsupported_media_type, 429: ErrorCode.rate_limited,
    431: ErrorCode.headers_too_large,
}


def init_app(app: Flask) -> None:
    @app.errorhandler(ServiceError)
    def _service_error(exc: ServiceError):
        return jsonify(exc.to_dict()), exc.status

    @app.errorhandler(ValidationError)
    def _validation_error(exc: ValidationError):
        body = error_body(ErrorCode.validation_error, "Request body is invalid.", validation_details(exc))
        return jsonify(body), 422

    @app.errorhandler(OperationalError)
    def _database_down(exc: OperationalError):
        log.warning("database unavailable: %s", exc.__class__.__name__)
        return jsonify(error_body(ErrorCode.unavailable, "The database is unavailable; try again shortly.")), 503

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        status = exc.code or 500
        code = _HTTP_CODES.get(status, ErrorCode.bad_request if status < 500 else ErrorCode.internal)
        message = exc.description or exc.name
        if status == 413:
            message = "Request body is larger than the configured limit (MAX_UPLOAD_BYTES)."
        response = jsonify(error_body(code, message))
        response.status_code = status
        # Keep the headers the exception carries (Allow on a 405 is required by RFC 9110), but not its HTML type.
        for name, value in exc.get_headers():
            if name.lower() != "content-type":
                response.headers.add(name, value)
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return jsonify(error_body(ErrorCode.internal, "Internal server error.")), 500
