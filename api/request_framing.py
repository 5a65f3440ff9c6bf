"""Where an HTTP/1.1 request ends, found as its bytes arrive: the web front's framing (api.buffering_worker).

The front reads requests without a thread and hands one to a thread only once it is whole. For
that it needs to know where a request ends, and nothing more: the end of the head (an empty
line), then the body by its Content-Length or by its chunked framing. It does not judge the
request: anything it cannot frame (two lengths, a bad chunk size, an unknown transfer coding, a
head or body over the front's limits) is handed over as it is, and gunicorn's parser, which reads
the same bytes in the thread, answers with its usual error.
"""

from __future__ import annotations

from dataclasses import dataclass

CRLF = b"\r\n"
HEAD_END = b"\r\n\r\n"
# A chunk-size line or a trailer line longer than this is not framing anyone needs.
MAX_CHUNK_LINE = 4096
HEX_DIGITS = b"0123456789abcdefABCDEF"


class Unframeable(Exception):
    """Raised when the front cannot (or will not) find the request's end: gunicorn's parser judges it."""


@dataclass(frozen=True)
class FramingLimits:
    """The largest head and body the front buffers before handing a request over unfinished."""

    max_head_bytes: int
    max_body_bytes: int


class RequestFramer:
    """Fed a connection's bytes in order; says where the current request ends."""

    def __init__(self, limits: FramingLimits) -> None:
        self.limits = limits
        self.head = bytearray()
        self.head_complete = False
        self.complete = False
        self.expects_continue = False
        self.body_bytes = 0
        self._remaining: int | None = None  # bytes left of a Content-Length body (or of a chunk's data)
        self._chunked = False
        self._chunk_state = "size"  # size, data, data-end, trailer
        self._line = bytearray()

    @property
    def started(self) -> bool:
        """True once a byte of this request arrived."""
        return bool(self.head)

    def feed(self, data: bytes) -> int | None:
        """Consume `data`; the count of its bytes that finish the request, or None when more are needed."""
        used = 0
        if not self.head_complete:
            used = self._feed_head(data)
            if not self.head_complete:
                return None
        if self._done():
            end: int | None = used
        elif self._chunked:
            end = self._feed_chunks(data, used)
        else:
            end = self._feed_length(data, used)
        self.complete = end is not None
        return end

    def _feed_head(self, data: bytes) -> int:
        start = len(self.head)
        self.head += data
        # Empty lines before a request line are allowed (RFC 9112 section 2.2): not an end of head.
        while self.head.startswith(CRLF):
            del self.head[:2]
            start = max(0, start - 2)
        end = self.head.find(HEAD_END, max(0, start - 3))
        if end < 0:
            if len(self.head) > self.limits.max_head_bytes:
                raise Unframeable("request head over the limit")
            return len(data)
        overshoot = len(self.head) - (end + len(HEAD_END))
        del self.head[end + len(HEAD_END):]
        self.head_complete = True
        self._read_head()
        return len(data) - overshoot

    def _read_head(self) -> None:
        lines = bytes(self.head).split(CRLF)
        request_line, fields = lines[0], lines[1:]
        version = request_line.rsplit(b" ", 1)[-1]
        lengths: set[bytes] = set()
        codings: list[bytes] = []
        for line in fields:
            name, colon, value = line.partition(b":")
            if not colon:
                continue  # the blank end of the head, or a broken line gunicorn refuses
            name, value = name.strip().lower(), value.strip()
            if name == b"content-length":
                lengths.update(part.strip() for part in value.split(b","))
            elif name == b"transfer-encoding":
                codings += [coding.strip().lower() for coding in value.split(b",")]
            elif name == b"expect" and value.lower() == b"100-continue":
                self.expects_continue = version == b"HTTP/1.1"
        if codings and lengths:
            raise Unframeable("both Content-Length and Transfer-Encoding")
        if codings:
            if codings[-1] != b"chunked":
                raise Unframeable("a transfer coding other than chunked last")
            self._chunked = True
            return
        if len(lengths) > 1 or any(not length.isdigit() for length in lengths):
            raise Unframeable("an unusable Content-Length")
        self._remaining = int(lengths.pop()) if lengths else 0
        if self._remaining > self.limits.max_body_bytes:
            raise Unframeable("a body over the limit")

    def _done(self) -> bool:
        return self.complete or (not self._chunked and self._remaining == 0)

    @property
    def wants_body(self) -> bool:
        """True when the head is in and the body is still to come."""
        return self.head_complete and not self._done()

    def _feed_length(self, data: bytes, offset: int) -> int | None:
        assert self._remaining is not None
        taken = min(self._remaining, len(data) - offset)
        self._remaining -= taken
        self.body_bytes += taken
        return offset + taken if self._remaining == 0 else None

    def _feed_chunks(self, data: bytes, offset: int) -> int | None:
        position = offset
        while position < len(data):
            if self._chunk_state == "data":
                assert self._remaining is not None
                taken = min(self._remaining, len(data) - position)
                self._remaining -= taken
                self.body_bytes += taken
                position += taken
                if self._remaining == 0:
                    self._chunk_state, self._remaining = "data-end", 2
                continue
            if self._chunk_state == "data-end":
                assert self._remaining is not None
                expected = CRLF[2 - self._remaining:]
                taken = min(self._remaining, len(data) - position)
                if data[position:position + taken] != expected[:taken]:
                    raise Unframeable("chunk data not followed by CRLF")
                self._remaining -= taken
                position += taken
                if self._remaining == 0:
                    self._chunk_state = "size"
                continue
            newline = data.find(b"\n", position)
            piece_end = len(data) if newline < 0 else newline + 1
            self._line += data[position:piece_end]
            position = piece_end
            if len(self._line) > MAX_CHUNK_LINE:
                raise Unframeable("a chunk line over the limit")
            if newline < 0:
                return None
            line, self._line = bytes(self._line), bytearray()
            if not line.endswith(CRLF):
                raise Unframeable("a chunk line without CR")
            if self._chunk_state == "trailer":
                if line == CRLF:
                    return position
                continue
            size_text = line[:-2].split(b";", 1)[0].strip()
            if not size_text or size_text.strip(HEX_DIGITS):
                raise Unframeable("a chunk size that is not hexadecimal")
            size = int(size_text, 16)
            if size == 0:
                self._chunk_state = "trailer"
                continue
            if self.body_bytes + size > self.limits.max_body_bytes:
                raise Unframeable("a body over the limit")
            self._chunk_state, self._remaining = "data", size
        return None
