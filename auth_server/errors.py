"""Every error leaves the API as JSON `{"error": "..."}` with the matching HTTP status."""

from __future__ import annotations

import logging

import pymysql
from flask import Flask, Response, jsonify
from werkzeug.exceptions import ClientDisconnected, HTTPException

from auth_server.db import DatabaseUnavailableError, database_unavailable
from auth_server.policy import ValidationError
from auth_server.store import DuplicatePermissionError
from auth_server.throttle import LoginThrottledError

log = logging.getLogger(__name__)


class ApiError(Exception):
    """Raised by a view to answer with `status` and a message the caller can act on."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def unauthorized(message: str) -> ApiError:
    # RFC 6750: a 401 for a bearer-token API names the scheme.
    return ApiError(401, message, {"WWW-Authenticate": 'Bearer realm="iot-platform"'})


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    response = jsonify(error=message)
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return error_response(exc.status, exc.message, exc.headers)

    @app.errorhandler(ValidationError)
    def _validation_error(exc: ValidationError) -> Response:
        return error_response(400, str(exc))

    @app.errorhandler(LoginThrottledError)
    def _throttled(exc: LoginThrottledError) -> Response:
        return error_response(
            429,
            f"too many failed logins; try again in {exc.retry_after_s} s",
            {"Retry-After": str(exc.retry_after_s)},
        )

    @app.errorhandler(DuplicatePermissionError)
    def _duplicate_permission(_exc: DuplicatePermissionError) -> Response:
        return error_response(409, "two permissions name the same series; nothing was changed")

    @app.errorhandler(ClientDisconnected)
    def _body_cut_short(exc: ClientDisconnected) -> Response:
        # Werkzeug raises this for any failed read of the body; a socket timeout there means
        # the client paused longer than AUTH_CLIENT_TIMEOUT (python -m auth_server sets it).
        if isinstance(exc.__context__, TimeoutError):
            return error_response(408, "the request body did not arrive in time")
        return error_response(400, "the request body ended before its announced length")

    @app.errorhandler(DatabaseUnavailableError)
    def _database_unavailable(exc: DatabaseUnavailableError) -> Response:
        log.error("%s", exc)
        return error_response(503, "the account database is unavailable, try again later")

    @app.errorhandler(pymysql.MySQLError)
    def _mysql_error(exc: pymysql.MySQLError) -> Response:
        if database_unavailable(exc):
            # MySQL went away mid-request (a restart: the pool drops that connection, and the
            # next request gets a new one), or the accounts database is gone.
            log.error("the account database failed during the request: %s", exc)
            return error_response(503, "the account database is unavailable, try again later")
        log.exception("unhandled MySQL error")
        return error_response(500, "internal server error")

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        # 404, 405, 413 ... from routing or werkzeug, in the same JSON shape.
        # Keep headers such as 405's Allow; the body (and its type) is ours.
        headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
        return error_response(exc.code or 500, exc.description or exc.name, headers)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        # The traceback goes to the log (it holds no request body); the caller learns nothing more.
        log.exception("unhandled error")
        return error_response(500, "internal server error")
