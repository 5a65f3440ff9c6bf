"""The one error shape: Werkzeug's and gunicorn's own errors get the same codes and body as ours."""

from __future__ import annotations

import json
import socket

import pytest
from flask.testing import FlaskClient

from api.errors import error_body, http_error_code
from api.gunicorn_errors import write_json_error


@pytest.mark.parametrize(
    ("status", "reason", "code"),
    [
        (400, "Bad Request", "malformed_request"),
        (403, "Forbidden", "forbidden"),
        (431, "Request Header Fields Too Large", "headers_too_large"),
        (500, "Internal Server Error", "internal_error"),
        (402, "Payment Required", "payment_required"),
        (599, None, "http_error"),
    ],
)
def test_http_statuses_have_one_code_each(status: int, reason: str | None, code: str) -> None:
    assert http_error_code(status, reason) == code


def test_gunicorn_errors_are_the_json_error_shape() -> None:
    server, client = socket.socketpair()
    with server, client:
        write_json_error(server, 431, "Request Header Fields Too Large", "Error parsing headers: 'limit'")
        server.shutdown(socket.SHUT_WR)
        raw = b"".join(iter(lambda: client.recv(65536), b""))
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin1").split("\r\n")
    assert lines[0] == "HTTP/1.1 431 Request Header Fields Too Large"
    assert "Content-Type: application/json" in lines and "Connection: close" in lines
    assert f"Content-Length: {len(body)}" in lines
    assert json.loads(body) == error_body("headers_too_large", "Error parsing headers: 'limit'")
    assert json.loads(body) == {"error": "headers_too_large", "message": "Error parsing headers: 'limit'",
                                "details": None}


def test_werkzeug_errors_use_the_same_codes(client: FlaskClient) -> None:
    response = client.delete("/functions")
    assert response.status_code == 405
    assert response.get_json() == error_body(http_error_code(405), response.get_json()["message"])
    assert response.get_json()["error"] == "method_not_allowed"
