"""The web processes' gunicorn worker: gthread, with a front that reads each request whole before a thread takes it.

gunicorn's gthread worker hands a connection to a thread as soon as its first byte arrives, and
the thread then reads the head and the body from the socket. A client that sends a header line a
second (or a body byte a second) holds that thread for as long as it likes: 20 such sockets froze
the API. Here the worker's main loop, which already waits on every idle connection without a
thread, reads each request itself (non-blocking, as bytes arrive) until it is whole, head and
body, then gives it to a thread, which parses and serves it exactly as gthread does, from the
buffered bytes. A slow or idle client costs a socket and a small buffer, never a thread.

Bounds, so slow clients cannot keep sockets forever either (each is a RUNNER_WEB_* variable):
- the head must be in within HEADER_TIMEOUT seconds of the connection (or, on a kept-alive
  connection, of its first byte; an idle kept-alive connection closes after gunicorn's keepalive);
- the body must be in within BODY_TIMEOUT seconds plus one second per BODY_MIN_RATE bytes;
- past either, the answer is a 408 in the JSON error shape, and the connection closes.
Bodies over 64 KiB are spooled to a temporary file. A request the front cannot frame (see
api.request_framing), or one over the largest body any route takes, is handed over as far as it
arrived; the thread then reads the rest from the socket itself, within HEADER_TIMEOUT.

TLS and cleartext HTTP/2 are left to gthread's own handling (terminate TLS at a proxy).
What the front assumes of the pinned gunicorn is pinned in tests/unit/test_gunicorn_front.py.
"""

from __future__ import annotations

import errno
import selectors
import socket
import time
from functools import partial
from typing import Any

from gunicorn import util
from gunicorn.workers.gthread import ThreadWorker

from api.front_connection import FrontConn, FrontLimits
from api.gunicorn_errors import write_json_error

# One read of a readable connection: a whole request usually.
READ_BYTES = 256 * 1024
# After sending a "Connection: close" answer, how long the socket lingers to read what the client still sends.
CLOSE_LINGER_SECONDS = 2.0
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class BufferingWorker(ThreadWorker):  # type: ignore[misc]
    """gthread whose main loop reads requests whole before a thread serves them (see the module's docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = FrontLimits.from_env()
        # TLS must be unwrapped, and HTTP/2 framed, in the thread: gthread's way for those.
        self.buffering = not self.cfg.is_ssl and self.cfg.http2_cleartext not in ("prior-knowledge", "upgrade", "both")
        self.reading: set[FrontConn] = set()

    def accept(self, listener: socket.socket) -> None:
        """Accept a connection and wait, without a thread, for its first request."""
        if not self.buffering:
            super().accept(listener)
            return
        try:
            client_sock, client_addr = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = FrontConn(self.cfg, client_sock, client_addr, listener.getsockname(), self.limits)
        self._read_next(conn)

    def _read_next(self, conn: FrontConn) -> None:
        self.reading.add(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))

    def _on_readable(self, conn: FrontConn, sock: socket.socket) -> None:
        try:
            data = sock.recv(READ_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if conn.lingering:
            if not data:
                self._close(conn)
            return
        if not data:  # the client stopped sending: what it sent, if anything, is served as it is
            if conn.framer.started:
                self._hand_over(conn, finished=False)
            else:
                self._close(conn)
            return
        if conn.take(data, time.monotonic()):
            self._hand_over(conn, finished=conn.framer.complete)
        elif conn.framer.expects_continue and conn.framer.wants_body and not conn.continued:
            conn.continued = True
            try:
                sock.send(CONTINUE)
            except OSError:
                self._close(conn)

    def _hand_over(self, conn: FrontConn, *, finished: bool) -> None:
        self._stop_reading(conn)
        conn.parser = conn.parser_for_thread(finished=finished)
        self.enqueue_req(conn)

    def _stop_reading(self, conn: FrontConn) -> None:
        self.reading.discard(conn)
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass

    def _close(self, conn: FrontConn) -> None:
        self._stop_reading(conn)
        conn.discard()
        self.nr_conns -= 1
        util.close(conn.sock)

    def finish_request(self, conn: FrontConn, fs: Any) -> None:
        """A thread served a request: read the next one on the connection, or close it."""
        if not self.buffering:
            super().finish_request(conn, fs)
            return
        conn.discard()
        try:
            keepalive = bool(fs.result()) if not fs.cancelled() else False
        except Exception:  # noqa: BLE001 - gthread's handle() answers errors itself; here only the socket's fate
            keepalive = False
        try:
            conn.sock.setblocking(False)
        except OSError:
            self._close(conn)
            return
        if not keepalive:
            self._linger(conn)
            return
        idle = self.cfg.keepalive if self.alive else min(self.cfg.keepalive, CLOSE_LINGER_SECONDS)
        conn.begin(time.monotonic(), idle, from_first_byte=True)
        # A pipelined request may be here already: behind the last one, or read ahead by the thread's parser.
        leftover = conn.parser.unreader.take_buffered() + conn.leftover
        conn.leftover = b""
        if leftover and conn.take(leftover, time.monotonic()):
            conn.parser = conn.parser_for_thread(finished=conn.framer.complete)
            self.enqueue_req(conn)
            return
        self._read_next(conn)

    def _linger(self, conn: FrontConn) -> None:
        # gthread's graceful close reads on the main thread for up to 2 s: here the poller waits instead.
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.nr_conns -= 1
            util.close(conn.sock)
            return
        conn.lingering = True
        conn.deadline = time.monotonic() + CLOSE_LINGER_SECONDS
        self._read_next(conn)

    def murder_keepalived(self, force: bool = False) -> None:
        """gthread's sweep, and the front's: connections whose request (or linger) is overdue."""
        super().murder_keepalived(force)
        now = time.monotonic()
        if not self.alive:  # stopping: a connection without a request under way gets gthread's short linger
            for conn in self.reading:
                if not conn.framer.started:
                    conn.deadline = min(conn.deadline, now + CLOSE_LINGER_SECONDS)
        for conn in [conn for conn in self.reading if force or conn.deadline <= now]:
            if conn.framer.started and not conn.lingering and not force:
                self._answer_timeout(conn)
            self._close(conn)

    def _answer_timeout(self, conn: FrontConn) -> None:
        part = "body" if conn.framer.head_complete else "head"
        message = (f"The request {part} did not arrive in time: the head must arrive within "
                   f"{self.limits.header_timeout:g} s, the body within {self.limits.body_timeout:g} s plus "
                   f"1 s per {self.limits.body_min_rate:g} bytes.")
        try:
            write_json_error(conn.sock, 408, "Request Timeout", message)
        except OSError:
            pass
