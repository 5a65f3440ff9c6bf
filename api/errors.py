"""The one error handler: every failure leaves the API as the same JSON shape."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify, request
from sqlalchemy import exc as sa_exc
from werkzeug.exceptions import HTTPException

from api.state import runner_state
from runner.errors import (
    ArtifactNotFound,
    BackendUnavailable,
    FunctionNotFound,
    InsufficientStorage,
    InvalidInput,
    JobNotFound,
    MalformedRequest,
    PayloadTooLarge,
    QueueNotFound,
    RequestForbidden,
    RunnerError,
    ScheduleNotFound,
    StateConflict,
    TooManyRequests,
    UnsupportedMediaType,
    UploadNotFound,
)
from runner.redis_connection import REDIS_ERRORS
from runner.services.backend_checks import backend_url, dependency_of, describe_unavailable
from runner.store.database import UNAVAILABLE_ERRORS, is_missing_table

log = logging.getLogger(__name__)

STATUS_BY_ERROR: dict[type[RunnerError], int] = {
    MalformedRequest: 400,
    RequestForbidden: 403,
    FunctionNotFound: 404,
    JobNotFound: 404,
    UploadNotFound: 404,
    ArtifactNotFound: 404,
    QueueNotFound: 404,
    ScheduleNotFound: 404,
    StateConflict: 409,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    InvalidInput: 422,
    TooManyRequests: 429,
    BackendUnavailable: 503,
    InsufficientStorage: 507,
}

# The `error` code of an HTTP error no RunnerError describes: Werkzeug's (unknown route, wrong
# method, body too large) and gunicorn's (bad request line, headers too large, proxy refused).
HTTP_ERROR_CODES = {
    400: "malformed_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    417: "expectation_failed",
    431: "headers_too_large",
    500: "internal_error",
    501: "not_implemented",
}


def http_error_code(status: int, reason: str | None = None) -> str:
    """The `error` code of an HTTP status: ours, or the reason phrase in snake case."""
    if status in HTTP_ERROR_CODES:
        return HTTP_ERROR_CODES[status]
    return reason.lower().replace(" ", "_") if reason else "http_error"


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """The one JSON error shape: a stable code, a human sentence, and what to act on (or null)."""
    return {"error": code, "message": message, "details": details}


def error_response(status: int, code: str, message: str, details: Any = None) -> Response:
    """The JSON error response every failure uses."""
    response = jsonify(error_body(code, message, details))
    response.status_code = status
    return response


def handle_runner_error(error: RunnerError) -> Response:
    """A RunnerError becomes its status code and the error shape."""
    status = next((code for kind, code in STATUS_BY_ERROR.items() if isinstance(error, kind)), 500)
    response = error_response(status, error.code, error.message, error.details)
    if isinstance(error, BackendUnavailable | TooManyRequests):
        response.headers["Retry-After"] = str(error.retry_after)
    if isinstance(error, BackendUnavailable) and error.__cause__ is not None:
        _log_unavailable(dependency_of(error), error.__cause__)
    return response


def _log_unavailable(dependency: str, cause: BaseException) -> None:
    # The client gets "The database is unavailable."; the operator's log says why, and where.
    url = backend_url(dependency, runner_state().backends)
    log.warning("%s %s answered 503: %s", request.method, request.path, describe_unavailable(dependency, url, cause))


def handle_http_error(error: HTTPException) -> Response:
    """Werkzeug's own errors (unknown route, wrong method, body too large) as JSON, not HTML."""
    status = error.code or 500
    code = http_error_code(status, error.name)
    message = error.description or error.name
    if status == 413:
        message = "The request body is larger than the limit."
        _drain_body()
    response = error_response(status, code, message)
    for name, value in error.get_headers():
        if name.lower() not in ("content-type", "content-length"):
            response.headers[name] = value
    return response


# Reading an oversized body we refused keeps the client's keep-alive connection usable (gunicorn
# closes it otherwise); past this many bytes, closing is cheaper than reading.
DRAIN_LIMIT_BYTES = 8 * 1024 * 1024


def _drain_body() -> None:
    length = request.content_length
    if length is None or length > DRAIN_LIMIT_BYTES:
        return
    stream = request.environ.get("wsgi.input")
    remaining = length
    while stream is not None and remaining > 0:
        chunk = stream.read(min(remaining, 64 * 1024))
        if not chunk:
            break
        remaining -= len(chunk)


def handle_backend_exception(error: Exception) -> Response:
    """A lost connection that no view caught is still a 503, never a 500."""
    dependency = "redis" if isinstance(error, REDIS_ERRORS) else "database"
    unavailable = BackendUnavailable(f"The {dependency} is unavailable.", {"dependency": dependency})
    unavailable.__cause__ = error
    return handle_runner_error(unavailable)


def handle_database_error(error: sa_exc.ProgrammingError) -> Response:
    """A database without the runner's tables is not ready (503), not a bug of the request (500)."""
    if not is_missing_table(error):
        return handle_unexpected(error)
    unavailable = BackendUnavailable("The database is not ready: its tables are missing.", {"dependency": "database"})
    unavailable.__cause__ = error
    return handle_runner_error(unavailable)


def handle_unexpected(error: Exception) -> Response:
    """A bug: log the traceback, answer 500 without it."""
    log.exception("unhandled error", exc_info=error)
    return error_response(500, "internal_error", "The server failed to handle the request.")


def register_error_handlers(app: Flask) -> None:
    """Install the handlers on the app."""
    app.register_error_handler(RunnerError, handle_runner_error)
    app.register_error_handler(HTTPException, handle_http_error)
    for kind in (*REDIS_ERRORS, *UNAVAILABLE_ERRORS):
        app.register_error_handler(kind, handle_backend_exception)
    app.register_error_handler(sa_exc.ProgrammingError, handle_database_error)
    app.register_error_handler(Exception, handle_unexpected)
