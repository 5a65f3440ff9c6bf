"""One connection of the web front (api.buffering_worker) while it reads a request: limits, buffer, deadlines.

`FrontConn` takes the bytes the worker's main loop reads, finds the request's end
(api.request_framing), keeps the request in a buffer (memory, then a temporary file), and moves
its deadline as the head and the body arrive. Once the request is whole, `parser_for_thread`
gives gunicorn's parser the buffered bytes to read in a thread.
"""

from __future__ import annotations

import math
import os
import select
import socket
import tempfile
import time
from dataclasses import dataclass
from typing import IO, Any

from gunicorn.http.message import Request
from gunicorn.http.parser import RequestParser
from gunicorn.workers.gthread import TConn

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
