"""Slow and idle clients against real gunicorn (issue 19, item 6): they cost a socket, not a thread.

Hundreds of sockets send a request a header line (or a body byte) a second; ordinary requests
from another client must still be answered, within a stated bound, with API keys or without.
The figures are printed (`pytest -s` shows them).
"""

from __future__ import annotations

import re
import socket
import statistics
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest

from tests.integration.conftest import Stack, wait_until
from tests.slow_clients import SlowClients, summary, timed_requests

SLOW_HEADS = 200
SLOW_BODIES = 200
REQUESTS = 30
# Every ordinary request answered within this, and half of them within the median bound (they
# take a few ms alone; a frozen API answered none within 10 s).
WORST_BOUND_SECONDS = 2.0
MEDIAN_BOUND_SECONDS = 0.25
KEY = "slow-clients-test-key"


def address(stack: Stack) -> tuple[str, int]:
    parts = urlsplit(stack.url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


@pytest.fixture(scope="module")
def plain_stack(stack_factory: Callable[..., Stack]) -> Stack:
    """A stack with default settings (the tests after these build their own, which stops it)."""
    return stack_factory()


def test_expect_100_continue_gets_one_interim_answer_then_the_result(plain_stack: Stack) -> None:
    body = b'{"expression": "6*7"}'
    with socket.create_connection(address(plain_stack), timeout=10) as sock:
        sock.sendall(b"POST /functions/simple_calculation/invocations HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nExpect: 100-continue\r\nConnection: close\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        answer = b"".join(iter(lambda: sock.recv(65536), b""))
    assert answer.startswith(b"HTTP/1.1 202") and b"100 Continue" not in answer, answer[:300]


def test_pipelined_requests_are_answered_in_order(plain_stack: Stack) -> None:
    body = b'{"expression": "6*7"}'
    invoke = (b"POST /functions/simple_calculation/invocations HTTP/1.1\r\nHost: x\r\n"
              b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    last = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection(address(plain_stack), timeout=10) as sock:
        sock.sendall(invoke + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + invoke + last)
        answer = b"".join(iter(lambda: sock.recv(65536), b""))
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)
    assert statuses == [b"202", b"200", b"202", b"200"], answer[:2000]


@pytest.mark.parametrize("keys", [False, True], ids=["keyless", "api-keys"])
def test_hundreds_of_slow_clients_leave_the_api_serving_others(
        stack_factory: Callable[..., Stack], keys: bool) -> None:
    stack = stack_factory(extra_env={"RUNNER_API_KEYS": KEY} if keys else {})
    host, port = address(stack)
    headers = {"Authorization": f"Bearer {KEY}"} if keys else {}
    alone = timed_requests(host, port, REQUESTS, headers)
    extra = f"Authorization: Bearer {KEY}\r\n".encode() if keys else b""
    with SlowClients(host, port, heads=SLOW_HEADS, bodies=SLOW_BODIES, extra_header=extra) as slow:
        time.sleep(2.5)  # a few lines and bytes each: well under way, far from the 10 s head and body limits
        during = timed_requests(host, port, REQUESTS, headers)
        open_throughout = slow.open if not slow.reopened else 0  # none had been cut: the load was there all along
    print(f"\n[{'api keys' if keys else 'keyless'}] {REQUESTS} ordinary requests alone: {summary(alone)}; "
          f"with {SLOW_HEADS} slow heads and {SLOW_BODIES} slow bodies open: {summary(during)}")
    assert open_throughout == SLOW_HEADS + SLOW_BODIES, slow.answers
    assert max(during) < WORST_BOUND_SECONDS, during
    assert statistics.median(during) < MEDIAN_BOUND_SECONDS, during


def test_clients_too_slow_are_cut_with_a_json_408(stack_factory: Callable[..., Stack]) -> None:
    stack = stack_factory(extra_env={"RUNNER_WEB_HEADER_TIMEOUT": "1", "RUNNER_WEB_BODY_TIMEOUT": "1"})
    host, port = address(stack)
    with SlowClients(host, port, heads=10, bodies=10, interval=0.2) as slow:
        wait_until(lambda: slow.answers["head 408"] >= 10 and slow.answers["body 408"] >= 10, 15, "408s")
    # A body that keeps coming faster than RUNNER_WEB_BODY_MIN_RATE (4096 B/s) may take longer than 1 s.
    body = b'{"expression": "6*7"' + b" " * 8000 + b"}"
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"POST /functions/simple_calculation/invocations HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nConnection: close\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        for start in range(0, len(body), 1000):
            time.sleep(0.2)
            sock.sendall(body[start:start + 1000])
        answer = b"".join(iter(lambda: sock.recv(65536), b""))
    assert answer.startswith(b"HTTP/1.1 202"), answer[:300]


def test_slow_cut_answer_is_the_json_error_shape(stack_factory: Callable[..., Stack]) -> None:
    stack = stack_factory(extra_env={"RUNNER_WEB_HEADER_TIMEOUT": "1"})
    with socket.create_connection(address(stack), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        answer = b"".join(iter(lambda: sock.recv(65536), b""))
    assert time.monotonic() - started < 3
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408") and b"Content-Type: application/json" in head, answer
    assert body.startswith(b'{"error": "request_timeout", "message": "The request head did not arrive in time')
