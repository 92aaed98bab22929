"""Small helpers the views share: JSON bodies, pagination, UUID path parts."""

from __future__ import annotations

import json
import uuid
from typing import Any, TypeVar

from flask import current_app, request
from pydantic import BaseModel

from core.errors import ErrorCode, ServiceError, detail

M = TypeVar("M", bound=BaseModel)


def json_body() -> Any:
    """The request's JSON, or a 400/415 naming what is wrong with it."""
    if not request.is_json:
        raise ServiceError(ErrorCode.unsupported_media_type, "Send a JSON body with Content-Type: application/json.",
                           415)
    # Parsed here rather than by request.get_json(): that returns None for a `null` body as for a broken one,
    # hides the decoder's message, and lets a RecursionError (deeply nested arrays) escape as a 500.
    try:
        return current_app.json.loads(request.get_data(cache=True))
    except json.JSONDecodeError as e:
        reason = f": {e.msg} (line {e.lineno}, column {e.colno})"
    except UnicodeDecodeError:
        reason = ": it is not UTF-8"
    except RecursionError:
        reason = ": it is nested too deeply"
    except ValueError:  # e.g. an integer with more digits than Python converts
        reason = ""
    raise ServiceError(ErrorCode.invalid_json, f"The request body is not valid JSON{reason}.", 400)


def parse(model: type[M], data: Any) -> M:
    """Validate `data` against `model`; pydantic's ValidationError becomes a 422 upstream."""
    if not isinstance(data, dict):
        raise ServiceError(ErrorCode.validation_error, "The request body must be a JSON object.", 422,
                           [detail([], "Input should be an object", "dict_type")])
    return model.model_validate(data)


def page_args(max_limit: int = 200) -> tuple[int, int]:
    """`limit` and `offset` query parameters, validated."""
    details = []
    values = {}
    for name, default, low, high in (("limit", 50, 1, max_limit), ("offset", 0, 0, 10**9)):
        raw = request.args.get(name, str(default))
        try:
            value = int(raw)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            details.append(detail(["query", name], f"must be an integer from {low} to {high}", "value_error"))
        values[name] = value
    if details:
        raise ServiceError(ErrorCode.validation_error, "Query parameters are invalid.", 422, details)
    return values["limit"], values["offset"]


def parse_uuid(value: str, what: str) -> uuid.UUID:
    """A path id; anything that is not a UUID cannot exist, so it is a 404."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise ServiceError(ErrorCode.not_found, f"No {what} with id {value!r}.", 404) from None
