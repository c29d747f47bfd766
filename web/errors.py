"""JSON errors: `{"error": {"code", "message"}}` with the right status, never an HTML page for the API."""

from __future__ import annotations

import logging

from flask import Flask, g, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error the client should see, with its HTTP status and a message a person understands."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(status: int, code: str, message: str) -> ResponseReturnValue:
    """The JSON error body with its status (the code is kept for the metrics)."""
    g.error_code = code
    return jsonify({"error": {"code": code, "message": message}}), status


def register(app: Flask) -> None:
    """Install handlers so every error leaves as JSON."""

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> ResponseReturnValue:
        return error_response(exc.status, exc.code, exc.message)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> ResponseReturnValue:
        status = exc.code or 500
        if status == 413:
            return error_response(413, "too_large", "The upload is larger than this service accepts.")
        if status == 429:
            return error_response(429, "rate_limited",
                                  f"Too many uploads from your address ({exc.description}); wait a moment and retry.")
        code = (exc.name or "error").lower().replace(" ", "_")
        return error_response(status, code, exc.description or exc.name)

    # Only losing the database is "unavailable"; any other database error is a bug and stays a 500.
    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)
    def _db_error(exc: DBAPIError) -> ResponseReturnValue:
        log.error("database unavailable: %s", exc.orig)
        return error_response(503, "database_unavailable", "The database is unavailable; try again shortly.")

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> ResponseReturnValue:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "Something went wrong on our side.")
