"""A real HTTP server on 127.0.0.1 that records the POSTs it gets (completion-callback tests)."""

from __future__ import annotations

import select
import socket
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


@dataclass
class Exchange:
    """One connection a TricklingReceiver took: when it came, and when the client hung up."""

    opened: float
    request: bytes = b""
    closed: float | None = None


class TricklingReceiver:
    """A TCP server on 127.0.0.1 that reads each request, then sends its answer a byte at a time.

    The first `slow` connections get `head` at once, then `answer` one byte every `interval`
    seconds (for as long as the client listens, up to `longest` seconds); later ones get `then` at
    once. Other loopback addresses (127.0.0.2) may listen on the same port too.
    """

    def __init__(self, answer: bytes, *, interval: float, head: bytes = b"", slow: int = 1, then: bytes = b"",
                 longest: float = 60.0, addresses: tuple[str, ...] = ("127.0.0.1",)) -> None:
        self.answer, self.interval, self.head, self.longest = answer, interval, head, longest
        self.slow, self.then = slow, then
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        first = socket.create_server((addresses[0], 0))
        self.port: int = first.getsockname()[1]
        self._servers = [first] + [socket.create_server((address, self.port)) for address in addresses[1:]]
        self._threads = [threading.Thread(target=self._serve, args=(server,), daemon=True) for server in self._servers]

    @property
    def url(self) -> str:
        """The receiver's base URL on its first address."""
        host = self._servers[0].getsockname()[0]
        return f"http://{host}:{self.port}"

    def __enter__(self) -> TricklingReceiver:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for server in self._servers:
            server.close()

    def wait_for(self, count: int, timeout: float, *, closed: bool = True) -> list[Exchange]:
        """The first `count` exchanges (ended by the client when `closed`); AssertionError past `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                done = [e for e in self.exchanges if e.closed is not None or not closed]
            if len(done) >= count:
                return done[:count]
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} exchanges within {timeout:g} s, got {len(done)}")
            time.sleep(0.02)

    def _serve(self, server: socket.socket) -> None:
        server.settimeout(0.1)
        while not self._stop.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                exchange = Exchange(time.time())
                number = len(self.exchanges)
                self.exchanges.append(exchange)
            slow = number < self.slow
            threading.Thread(target=self._answer, args=(client, exchange, slow), daemon=True).start()

    def _answer(self, client: socket.socket, exchange: Exchange, slow: bool) -> None:
        with client:
            client.settimeout(self.longest)
            try:
                exchange.request = self._read_request(client)
                if slow:
                    self._trickle(client)
                else:
                    client.sendall(self.then)
                while client.recv(4096):  # until the client hangs up
                    pass
            except OSError:
                pass
            finally:
                exchange.closed = time.time()

    def _trickle(self, client: socket.socket) -> None:
        ends = time.monotonic() + self.longest
        client.sendall(self.head)
        for byte in self.answer:
            client.sendall(bytes([byte]))
            # Wait the interval, but notice at once a client that hangs up.
            readable, _, _ = select.select([client], [], [], self.interval)
            if readable and client.recv(4096, socket.MSG_PEEK) == b"":
                return
            if self._stop.is_set() or time.monotonic() > ends:
                return

    @staticmethod
    def _read_request(client: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = client.recv(4096)
            if not chunk:
                return data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length:
            chunk = client.recv(4096)
            if not chunk:
                break
            body += chunk
        return head + b"\r\n\r\n" + body
