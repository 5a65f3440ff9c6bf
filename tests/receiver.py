"""A real HTTP server on 127.0.0.1 that records the POSTs it gets (completion-callback tests)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Delivery:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float


class CallbackReceiver:
    """Answers each POST with the next planned status (then 200), and keeps what it received."""

    def __init__(self, statuses: Iterable[int] = ()) -> None:
        self.planned = list(statuses)
        self.deliveries: list[Delivery] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        # A short poll interval lets shutdown() return at once.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)

    @property
    def url(self) -> str:
        """The receiver's base URL."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> CallbackReceiver:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def wait_for(self, count: int, timeout: float) -> list[Delivery]:
        """The first `count` deliveries; AssertionError naming what came if they do not arrive in time."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                got = list(self.deliveries)
            if len(got) >= count:
                return got[:count]
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} deliveries within {timeout:g} s, got {len(got)}")
            time.sleep(0.02)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    receiver.deliveries.append(Delivery(self.path, dict(self.headers.items()), body, time.time()))
                    status = receiver.planned.pop(0) if receiver.planned else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_args: Any) -> None:
                pass  # keep test output quiet

        return Handler
