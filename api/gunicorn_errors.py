"""gunicorn's own error pages (bad request line, headers too large) as our JSON error shape.

gunicorn answers requests it cannot parse before Flask sees them, with an HTML page written
by `gunicorn.util.write_error`. `gunicorn.conf.py` installs `write_json_error` in its place.
"""

from __future__ import annotations

import json
import socket

from gunicorn import util

CODES = {
    400: "malformed_request",
    403: "forbidden",
    414: "uri_too_long",
    417: "expectation_failed",
    431: "headers_too_large",
    500: "internal_error",
    501: "not_implemented",
}


def write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """Write a complete HTTP error response with a JSON body and close semantics."""
    body = json.dumps(
        {
            "error": CODES.get(status_int, "http_error"),
            "message": mesg or reason,
            "details": None,
        }
    ).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode("latin1")
    util.write_nonblock(sock, head + body)


def install() -> None:
    """Replace gunicorn's HTML error writer with ours."""
    util.write_error = write_json_error
