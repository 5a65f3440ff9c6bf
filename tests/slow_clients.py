"""Slow and idle HTTP clients, for tests of the web front: hundreds of sockets that send a request a piece at a time.

`SlowClients` keeps its sockets open as an attacker would: each sends the start of a request, then
one more header line (slow heads) or one more body byte (slow bodies) every `interval` seconds,
and never finishes. When the server closes one, it notes the answer (a 408, say) and opens another
in its place, so the count stays up for as long as the clients run. Everything stays on loopback,
and `stop()` (or leaving the `with` block) closes every socket.
"""

from __future__ import annotations

import http.client
import select
import socket
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

SLOW_HEAD_START = b"GET /healthz HTTP/1.1\r\nHost: slow\r\n"
SLOW_BODY_LENGTH = 100_000
SLOW_BODY_START = (b"POST /functions/simple_calculation/invocations HTTP/1.1\r\nHost: slow\r\n"
                   b"Content-Type: application/json\r\nContent-Length: " + str(SLOW_BODY_LENGTH).encode() + b"\r\n")


@dataclass
class _Slow:
    sock: socket.socket
    kind: str
    sent: int = 0


@dataclass
class SlowClients:
    """`heads` slowloris sockets and `bodies` slow-body sockets against host:port, kept open until stopped."""

    host: str
    port: int
    heads: int
    bodies: int
    interval: float = 1.0
    extra_header: bytes = b""  # e.g. an Authorization line, so a key check could not refuse them first
    reopened: int = 0
    answers: Counter[str] = field(default_factory=Counter)
    _sockets: list[_Slow] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> SlowClients:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def open(self) -> int:
        """How many slow sockets are open now."""
        return len(self._sockets)

    def start(self) -> None:
        """Open every socket (each sends the start of its request), then keep them trickling in a thread."""
        for _ in range(self.heads):
            self._sockets.append(self._open("head"))
        for _ in range(self.bodies):
            self._sockets.append(self._open("body"))
        self._thread = threading.Thread(target=self._trickle, name="slow-clients", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop trickling and close every socket."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        for slow in self._sockets:
            slow.sock.close()
        self._sockets.clear()

    def _open(self, kind: str) -> _Slow:
        sock = socket.create_connection((self.host, self.port), timeout=5)
        sock.setblocking(False)
        start = SLOW_HEAD_START if kind == "head" else SLOW_BODY_START
        sock.send(start + self.extra_header + (b"\r\n" if kind == "body" else b""))
        return _Slow(sock, kind)

    def _trickle(self) -> None:
        while not self._stop.wait(self.interval):
            for index, slow in enumerate(self._sockets):
                if self._stop.is_set():
                    return
                piece = f"X-Slow-{slow.sent}: 1\r\n".encode() if slow.kind == "head" else b" "
                slow.sent += 1
                try:
                    if select.select([slow.sock], [], [], 0)[0]:
                        self.answers[f"{slow.kind} {_status(slow.sock.recv(200))}"] += 1
                    else:
                        slow.sock.send(piece)
                        continue
                except OSError:
                    self.answers[f"{slow.kind} closed"] += 1
                try:
                    slow.sock.close()
                    self.reopened += 1
                    self._sockets[index] = self._open(slow.kind)
                except OSError:
                    self.answers[f"{slow.kind} connect failed"] += 1


def _status(answer: bytes) -> str:
    """The status code of an answer's first bytes, or "closed" when there was none."""
    parts = answer.split(b" ", 2)
    return parts[1].decode() if answer.startswith(b"HTTP/") and len(parts) > 1 else "closed"


def timed_requests(host: str, port: int, count: int, headers: dict[str, str] | None = None,
                   timeout: float = 10.0) -> list[float]:
    """Seconds each of `count` ordinary requests took, each on a new connection: GET /healthz and
    POST /functions/simple_calculation/invocations in turn. A request with no answer within
    `timeout` counts as `timeout`; a status other than 200/202 fails."""
    body = b'{"expression": "6*7"}'
    took = []
    for index in range(count):
        connection = http.client.HTTPConnection(host, port, timeout=timeout)
        started = time.monotonic()
        try:
            if index % 2 == 0:
                connection.request("GET", "/healthz", headers=headers or {})
            else:
                connection.request("POST", "/functions/simple_calculation/invocations", body=body,
                                    headers={"Content-Type": "application/json", **(headers or {})})
            response = connection.getresponse()
            response.read()
            assert response.status in (200, 202), response.status
            took.append(time.monotonic() - started)
        except TimeoutError:
            took.append(timeout)
        finally:
            connection.close()
    return took


def summary(seconds: list[float]) -> str:
    """Median and worst, in milliseconds."""
    return f"median {statistics.median(seconds) * 1000:.1f} ms, worst {max(seconds) * 1000:.1f} ms"
