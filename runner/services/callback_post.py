"""One POST of a completion callback, to a checked address, over by a deadline however slow the receiver.

A socket timeout bounds each read or write, not the exchange: a receiver that sends a byte every
few seconds never trips it and holds the worker as long as it likes. So a delivery has one
deadline for all of it (connecting to each address in turn, TLS, sending, the answer's status line
and headers), and a watchdog timer shuts the socket down when it comes, which wakes whatever
read or write is blocked on it. The status decides the outcome; up to 64 KiB of the answer's body
is read, courteously, only within what is left of the deadline.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
from contextlib import suppress

from runner.services.callback_target import CallbackTarget

# Read of a receiver's body: not ours to keep, read so that it can finish writing it.
MAX_BODY_BYTES = 64 * 1024


class DeadlinePassed(TimeoutError):
    """The delivery's deadline came before the receiver's answer."""


class Deadline:
    """The end of one delivery: the time left, and a watchdog that shuts the watched socket down at it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._passed = False
        self._timer = threading.Timer(seconds, self._cut)
        self._timer.daemon = True
        self._timer.start()

    @property
    def passed(self) -> bool:
        """Whether the deadline has come."""
        return self._passed or time.monotonic() >= self.at

    def remaining(self) -> float:
        """Seconds left; DeadlinePassed when none are."""
        left = self.at - time.monotonic()
        if self._passed or left <= 0:
            raise DeadlinePassed(f"no answer within {self.seconds:g} s")
        return left

    def watch(self, sock: socket.socket | None) -> None:
        """Shut `sock` down at the deadline (at once if it has come); None: stop watching."""
        with self._lock:
            self._socket = sock
            if sock is not None and self._passed:
                self._shut(sock)

    def close(self) -> None:
        """The delivery is over: no socket is touched any more."""
        self._timer.cancel()
        self.watch(None)

    def _cut(self) -> None:
        with self._lock:
            self._passed = True
            if self._socket is not None:
                self._shut(self._socket)

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        with suppress(OSError):  # socket.socket's own: an SSLSocket's would also drop its TLS state mid-read
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to a checked address, whatever the host name resolves to by now, within a deadline."""

    def __init__(self, host: str, port: int, address: str, deadline: Deadline) -> None:
        super().__init__(host, port, timeout=deadline.remaining())
        self.address = address
        self.deadline = deadline

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.deadline.remaining())
        self.deadline.watch(self.sock)


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    """HTTPS to a checked address, with the certificate checked against the host name."""

    default_port = http.client.HTTPS_PORT

    def __init__(self, host: str, port: int, address: str, deadline: Deadline) -> None:
        super().__init__(host, port, address, deadline)
        self.tls = ssl.create_default_context()

    def connect(self) -> None:
        raw = socket.create_connection((self.address, self.port), self.deadline.remaining())
        # The handshake is bounded as a whole by the socket's timeout (CPython's ssl keeps a deadline
        # across its reads), which is the time left.
        self.sock = self.tls.wrap_socket(raw, server_hostname=self.host)
        self.deadline.watch(self.sock)


def post(target: CallbackTarget, address: str, body: bytes, headers: dict[str, str], deadline: Deadline) -> int:
    """POST `body` to `target` at `address` and return the answer's status; DeadlinePassed when the deadline
    came first, OSError or HTTPException when the exchange failed."""
    kind = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
    connection = kind(target.host, target.port, address, deadline)
    response: http.client.HTTPResponse | None = None
    try:
        try:
            connection.request("POST", target.path, body=body, headers=headers)
            response = connection.getresponse()
        except (OSError, http.client.HTTPException):
            if deadline.passed:
                raise DeadlinePassed(f"no answer within {deadline.seconds:g} s") from None
            raise
        with suppress(OSError, http.client.HTTPException):  # the deadline may cut it short: the status stands
            response.read(MAX_BODY_BYTES)
        return int(response.status)
    finally:
        deadline.watch(None)
        if response is not None:
            response.close()
        connection.close()
