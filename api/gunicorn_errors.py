"""gunicorn's own error pages (bad request line, headers too large) as our JSON error shape.

gunicorn answers requests it cannot parse before Flask sees them, with an HTML page written
by `gunicorn.util.write_error`. `gunicorn.conf.py` installs `write_json_error` in its place.
"""

from __future__ import annotations

import json
import socket

from gunicorn import util

from api.errors import error_body, http_error_code


def write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """Write a complete HTTP error response with a JSON body and close semantics."""
    body = json.dumps(error_body(http_error_code(status_int, reason), mesg or reason)).encode()
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
