"""Serves the OpenAPI document."""

from __future__ import annotations

import functools

from flask import Blueprint

from app.openapi import build_openapi

bp = Blueprint("openapi", __name__)


@functools.cache
def _document() -> dict:
    return build_openapi()


@bp.get("/openapi.json")
def openapi_json():
    return _document()
