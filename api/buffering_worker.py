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
"""

from __future__ import annotations

import errno
import math
import os
import select
import selectors
import socket
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from typing import IO, Any

from gunicorn import util
from gunicorn.http.message import Request
from gunicorn.http.parser import RequestParser
from gunicorn.workers.gthread import TConn, ThreadWorker

from api.gunicorn_errors import write_json_error
from api.request_framing import FramingLimits, RequestFramer, Unframeable
from runner.config import Settings, SettingsError

HEADER_TIMEOUT_ENV = "RUNNER_WEB_HEADER_TIMEOUT"
BODY_TIMEOUT_ENV = "RUNNER_WEB_BODY_TIMEOUT"
BODY_MIN_RATE_ENV = "RUNNER_WEB_BODY_MIN_RATE"
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 10.0
DEFAULT_BODY_MIN_RATE = 4096.0
# Held in memory up to this, then in a temporary file: a thousand slow bodies stay small.
SPOOL_MEMORY_BYTES = 64 * 1024
# The largest head the front buffers (gunicorn's own limits are per line, 8 KiB each, 100 lines).
MAX_HEAD_BYTES = 64 * 1024
# Room above the largest body a route takes (multipart framing), so its own 413 decides.
BODY_SLACK_BYTES = 1024 * 1024
READ_BYTES = 256 * 1024
# After sending a "Connection: close" answer, how long the socket lingers to read what the client still sends.
CLOSE_LINGER_SECONDS = 2.0
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@dataclass(frozen=True)
class FrontLimits:
    """How long a request may take to arrive, and how much of it the front buffers."""

    header_timeout: float
    body_timeout: float
    body_min_rate: float
    framing: FramingLimits

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> FrontLimits:
        """The RUNNER_WEB_* timeouts, and the largest body any route takes (RUNNER_MAX_*_BYTES)."""
        env = dict(os.environ if environ is None else environ)
        settings = Settings.from_env(env)

        def positive(name: str, default: float) -> float:
            raw = env.get(name, "").strip()
            try:
                value = float(raw) if raw else default
            except ValueError:
                value = math.nan
            if not value > 0 or math.isinf(value):
                raise SettingsError(f"{name}={raw!r} is not a positive number")
            return value

        largest = max(settings.max_payload_bytes, settings.max_upload_bytes) + BODY_SLACK_BYTES
        return cls(header_timeout=positive(HEADER_TIMEOUT_ENV, DEFAULT_HEADER_TIMEOUT),
                   body_timeout=positive(BODY_TIMEOUT_ENV, DEFAULT_BODY_TIMEOUT),
                   body_min_rate=positive(BODY_MIN_RATE_ENV, DEFAULT_BODY_MIN_RATE),
                   framing=FramingLimits(max_head_bytes=MAX_HEAD_BYTES, max_body_bytes=largest))


class BufferedRequest:
    """What the thread's parser reads: the buffered bytes, then, for a request handed over unfinished, the socket."""

    def __init__(self, spool: IO[bytes], sock: socket.socket, *, finished: bool, read_seconds: float) -> None:
        self.spool = spool
        self.sock = sock
        self.finished = finished
        self.read_seconds = read_seconds
        self._deadline: float | None = None

    def recv(self, size: int) -> bytes:
        """Up to `size` bytes; b"" at the end (and once the socket is silent past the deadline)."""
        data = self.spool.read(size)
        if data or self.finished:
            return data
        # Bounded: a client that slows down after the front let its request through cannot hold the thread.
        if self._deadline is None:
            self._deadline = time.monotonic() + self.read_seconds
        remaining = self._deadline - time.monotonic()
        if remaining <= 0 or not select.select([self.sock], [], [], remaining)[0]:
            return b""
        return self.sock.recv(size)


class _AnsweredExpectRequest(Request):  # type: ignore[misc]
    # The front already said "100 Continue" to get the body: the thread must not say it again.
    _policy_expect_continue = False


class _AnsweredExpectParser(RequestParser):  # type: ignore[misc]
    mesg_class = _AnsweredExpectRequest


class FrontConn(TConn):  # type: ignore[misc]
    """A connection while the front reads its next request."""

    def __init__(self, cfg: Any, sock: socket.socket, client: Any, server: Any, limits: FrontLimits) -> None:
        super().__init__(cfg, sock, client, server)
        self.data_ready = True  # never gthread's wait for a first byte: the front only hands over whole requests
        self.limits = limits
        self.leftover = b""
        self.lingering = False
        self.begin(time.monotonic(), limits.header_timeout, from_first_byte=False)

    def begin(self, now: float, idle_seconds: float, *, from_first_byte: bool) -> None:
        """Wait for the next request: `idle_seconds` to start (then, if `from_first_byte`, HEADER_TIMEOUT more)."""
        self.framer = RequestFramer(self.limits.framing)
        self.spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)  # noqa: SIM115
        self.deadline = now + idle_seconds
        self.restart_deadline = from_first_byte
        self.continued = False
        self.head_done_at = 0.0

    def take(self, data: bytes, now: float) -> bool:
        """Add bytes read from the client; True when the request is whole (or must be handed over as it is)."""
        if not self.framer.started and self.restart_deadline:
            self.deadline = now + self.limits.header_timeout
        try:
            end = self.framer.feed(data)
        except Unframeable:
            self.spool.write(data)
            return True
        if end is not None:
            self.spool.write(data[:end])
            self.leftover = data[end:]
            return True
        self.spool.write(data)
        if self.framer.wants_body:
            if not self.head_done_at:
                self.head_done_at = now
            self.deadline = (self.head_done_at + self.limits.body_timeout
                             + self.framer.body_bytes / self.limits.body_min_rate)
        return False

    def parser_for_thread(self, *, finished: bool) -> Any:
        """gunicorn's parser over what was buffered, from the start."""
        self.spool.seek(0)
        source = BufferedRequest(self.spool, self.sock, finished=finished, read_seconds=self.limits.header_timeout)
        parser_class = _AnsweredExpectParser if self.continued else RequestParser
        return parser_class(self.cfg, source, self.client)

    def discard(self) -> None:
        """Drop the buffered request (its temporary file, if it had one)."""
        self.spool.close()


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
