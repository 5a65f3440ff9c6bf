"""The web front's framing: where a request ends, fed in any pieces (api.request_framing)."""

from __future__ import annotations

import pytest

from api.request_framing import FramingLimits, RequestFramer, Unframeable

LIMITS = FramingLimits(max_head_bytes=4096, max_body_bytes=1000)


def feed_in_pieces(data: bytes, size: int) -> tuple[RequestFramer, int | None]:
    """Feed `data` `size` bytes at a time; the framer and the end offset in `data` (None: not whole)."""
    framer = RequestFramer(LIMITS)
    for start in range(0, len(data), size):
        end = framer.feed(data[start:start + size])
        if end is not None:
            return framer, start + end
    return framer, None


def post(body: bytes, *headers: str) -> bytes:
    head = "POST /x HTTP/1.1\r\nHost: x\r\n" + "".join(f"{line}\r\n" for line in headers) + "\r\n"
    return head.encode() + body


def chunked(*chunks: bytes, trailer: bytes = b"") -> bytes:
    return b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks) + b"0\r\n" + trailer + b"\r\n"


NEXT = b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n"
WHOLE = [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
    post(b'{"a": 1}', "Content-Length: 8"),
    post(b"", "Content-Length: 0"),
    post(chunked(b"{}", b"abc;d"), "Transfer-Encoding: chunked"),
    post(chunked(b"hello", trailer=b"X-T: 1\r\n"), "Transfer-Encoding: chunked"),
    post(b"1;name=value\r\nx\r\n0\r\n\r\n", "Transfer-Encoding: chunked"),
]


@pytest.mark.parametrize("request_bytes", WHOLE)
@pytest.mark.parametrize("piece", [1, 2, 7, 4096])
def test_a_request_ends_where_it_ends_whatever_the_pieces(request_bytes: bytes, piece: int) -> None:
    framer, end = feed_in_pieces(request_bytes + NEXT, piece)
    assert end == len(request_bytes)
    assert framer.complete


@pytest.mark.parametrize("request_bytes", WHOLE)
def test_a_request_cut_short_is_not_whole(request_bytes: bytes) -> None:
    framer, end = feed_in_pieces(request_bytes[:-1], 3)
    assert end is None and not framer.complete
    assert framer.started


def test_the_body_is_counted_and_wanted_until_it_is_in() -> None:
    framer = RequestFramer(LIMITS)
    assert framer.feed(post(b"12345", "Content-Length: 10")) is None
    assert framer.head_complete and framer.wants_body and framer.body_bytes == 5
    assert framer.feed(b"67890" + NEXT) == 5
    assert not framer.wants_body


@pytest.mark.parametrize(("headers", "expects"), [
    (("Content-Length: 2", "Expect: 100-continue"), True),
    (("Content-Length: 2", "expect: 100-Continue"), True),
    (("Content-Length: 2",), False),
])
def test_a_wish_for_100_continue_is_noticed(headers: tuple[str, ...], expects: bool) -> None:
    framer = RequestFramer(LIMITS)
    assert framer.feed(post(b"", *headers)) is None
    assert framer.expects_continue is expects


@pytest.mark.parametrize("request_bytes", [
    post(b"{}", "Content-Length: 2", "Transfer-Encoding: chunked"),
    post(b"{}", "Content-Length: 2", "Content-Length: 3"),
    post(b"{}", "Content-Length: -2"),
    post(b"{}", "Transfer-Encoding: gzip"),
    post(b"zz\r\n{}\r\n0\r\n\r\n", "Transfer-Encoding: chunked"),
    post(b"-1\r\n{}\r\n0\r\n\r\n", "Transfer-Encoding: chunked"),
    post(b"2\r\n{}XX0\r\n\r\n", "Transfer-Encoding: chunked"),
    post(b"2\n{}\r\n0\r\n\r\n", "Transfer-Encoding: chunked"),
    post(b"", "Content-Length: 1001"),
    post(b"3e9\r\n", "Transfer-Encoding: chunked"),
    post(b"1" * 5000 + b"\r\n", "Transfer-Encoding: chunked"),
    b"GET / HTTP/1.1\r\nX: " + b"a" * 5000,
], ids=["length-and-chunked", "two-lengths", "negative-length", "not-chunked", "bad-size", "negative-size",
        "no-crlf-after-data", "bare-lf", "length-over-limit", "chunk-over-limit", "long-size-line", "long-head"])
def test_what_cannot_be_framed_is_handed_over_as_it_is(request_bytes: bytes) -> None:
    with pytest.raises(Unframeable):
        feed_in_pieces(request_bytes, 5)
