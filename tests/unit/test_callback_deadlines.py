"""Slow callback receivers and slow DNS: each delivery ends by its deadline, an API request waits a bounded time.

Receivers are real TCP servers on loopback that answer a byte at a time (tests/receiver.py);
a resolver that hangs is socket.getaddrinfo replaced by one that waits on an event. The
deadlines are shortened here (the integration test runs the real 10 s).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import fakeredis
import pytest
from flask.testing import FlaskClient
from rq.job import Job
from rq.registry import ScheduledJobRegistry
from rq.serializers import JSONSerializer

import runner.services.callbacks as callbacks
from runner.config import Settings
from runner.errors import CallbackDeliveryError
from runner.services.callback_target import RESOLVER_THREADS, HostLookupPending, resolve_target
from runner.services.callbacks import CALLBACK_QUEUE, deliver_callback
from runner.store.sql_store import Store
from tests.receiver import TricklingReceiver

DEADLINE = 1.5
# How far past its deadline a delivery may end (thread switches, a byte in flight, a loaded machine).
MARGIN = 0.75
TRICKLE_SECONDS = 0.25
HEADERS_THEN_OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
SLOW_HOST = "hooks.slow-dns.example"


@pytest.fixture
def short_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Deliveries to 127.0.0.1 allowed, with a 1.5 s deadline."""
    monkeypatch.setenv("RUNNER_CALLBACK_ALLOW_PRIVATE", "1")
    monkeypatch.setattr(callbacks, "DELIVERY_TIMEOUT_SECONDS", DEADLINE)


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    """How long `call` took, and what it returned or raised."""
    began = time.monotonic()
    try:
        outcome = call()
    except Exception as exc:  # noqa: BLE001 (returned for the test to judge)
        outcome = exc
    return time.monotonic() - began, outcome


def test_a_receiver_that_trickles_its_status_line_is_cut_off_at_the_deadline(short_deadline: None) -> None:
    with TricklingReceiver(HEADERS_THEN_OK, interval=TRICKLE_SECONDS) as receiver:
        took, outcome = timed(lambda: deliver_callback(f"{receiver.url}/hook", "job1", "finished", "{}"))
        [exchange] = receiver.wait_for(1, timeout=5)
    assert isinstance(outcome, CallbackDeliveryError), outcome  # retried per the policy, not given up
    assert f"no answer within {DEADLINE:g} s" in str(outcome)
    assert took < DEADLINE + MARGIN
    assert exchange.closed is not None and exchange.closed - exchange.opened < DEADLINE + MARGIN


def test_a_receiver_that_answers_200_and_trickles_its_body_is_delivered_by_the_deadline(short_deadline: None) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
    with TricklingReceiver(b"." * 1000, head=head, interval=TRICKLE_SECONDS) as receiver:
        took, outcome = timed(lambda: deliver_callback(f"{receiver.url}/hook", "job1", "finished", "{}"))
    assert outcome == {"status": 200, "address": "127.0.0.1"}, outcome
    assert took < DEADLINE + MARGIN


def test_the_deadline_covers_every_address_together(short_deadline: None, monkeypatch: pytest.MonkeyPatch) -> None:
    with TricklingReceiver(HEADERS_THEN_OK, interval=TRICKLE_SECONDS, slow=2,
                           addresses=("127.0.0.1", "127.0.0.2")) as receiver:
        both = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, receiver.port))
                for address in ("127.0.0.1", "127.0.0.2")]
        monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: both)
        took, outcome = timed(lambda: deliver_callback(f"http://hooks.example:{receiver.port}/", "j", "failed", "{}"))
        [exchange] = receiver.wait_for(1, timeout=5)
    assert isinstance(outcome, CallbackDeliveryError) and "no answer within" in str(outcome), outcome
    assert took < DEADLINE + MARGIN
    assert len(receiver.exchanges) == 1  # the first address took the whole deadline: the second was not tried


def test_a_tls_receiver_that_trickles_its_handshake_is_cut_off_at_the_deadline(short_deadline: None) -> None:
    # A TLS record header announcing 16 KB of handshake, then the record a byte at a time.
    record = b"\x16\x03\x03\x40\x00" + b"\x02" * 0x4000
    with TricklingReceiver(record, interval=TRICKLE_SECONDS) as receiver:
        url = f"https://127.0.0.1:{receiver.port}/hook"
        took, outcome = timed(lambda: deliver_callback(url, "job1", "finished", "{}"))
    assert isinstance(outcome, CallbackDeliveryError) and "no answer within" in str(outcome), outcome
    assert took < DEADLINE + MARGIN


class HangingResolver:
    """socket.getaddrinfo for SLOW_HOST waits until released (at most `longest` s), then fails as a slow DNS does."""

    def __init__(self, longest: float = 30.0) -> None:
        self.longest = longest
        self.release = threading.Event()
        self.asked = 0
        self._real = socket.getaddrinfo

    def __call__(self, host: str, *args: Any, **kwargs: Any) -> Any:
        if host != SLOW_HOST:
            return self._real(host, *args, **kwargs)
        if kwargs.get("flags", 0) & socket.AI_NUMERICHOST:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        self.asked += 1
        self.release.wait(self.longest)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")


@pytest.fixture
def hanging(monkeypatch: pytest.MonkeyPatch) -> Iterator[HangingResolver]:
    resolver = HangingResolver()
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    yield resolver
    resolver.release.set()  # the resolver threads end, and give their places back
    deadline = time.monotonic() + 5
    while any(thread.name == "runner-resolver" for thread in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)


def test_an_invocation_waits_for_a_hanging_dns_at_most_the_bound_and_is_accepted(
    client: FlaskClient, hanging: HangingResolver, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(callbacks, "API_RESOLVE_SECONDS", 0.5)
    url = f"http://{SLOW_HOST}/hook"
    took, response = timed(lambda: client.post("/functions/simple_calculation/invocations",
                                               json={"expression": "6*7"}, headers={"X-Callback-Url": url}))
    assert response.status_code == 202, response.get_data(as_text=True)
    assert 0.5 <= took < 0.5 + MARGIN and hanging.asked == 1
    row = store.get(response.get_json()["id"])
    assert row is not None and row.callback_url == url  # judged at delivery


def test_an_unsafe_url_is_still_refused_while_the_dns_hangs(client: FlaskClient, hanging: HangingResolver) -> None:
    response = client.post("/functions/simple_calculation/invocations", json={"expression": "6*7"},
                           headers={"X-Callback-Url": f"ftp://{SLOW_HOST}/hook"})
    assert response.status_code == 422 and hanging.asked == 0


def test_lookups_are_bounded_in_time_and_in_threads(hanging: HangingResolver) -> None:
    outcomes: list[tuple[float, Any]] = []
    callers = [threading.Thread(target=lambda: outcomes.append(timed(lambda: resolve_target(
        f"http://{SLOW_HOST}/", allow_private=False, within=0.5)))) for _ in range(RESOLVER_THREADS + 4)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(5)
    assert len(outcomes) == len(callers)
    for took, outcome in outcomes:
        assert isinstance(outcome, HostLookupPending) and took < 0.5 + MARGIN
    assert hanging.asked == RESOLVER_THREADS  # the others found every resolver thread busy
    assert sum(thread.name == "runner-resolver" for thread in threading.enumerate()) == RESOLVER_THREADS
    # IP literals need no resolver thread: judged at once, even now.
    assert resolve_target("http://8.8.8.8/", allow_private=False, within=0.5).addresses == ("8.8.8.8",)


def test_a_delivery_whose_dns_hangs_ends_in_time_and_is_retried(
    make_client: Callable[..., FlaskClient], settings: Settings, run_jobs: Callable[..., bool],
    connection: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(callbacks, "DELIVERY_RESOLVE_SECONDS", 0.5)
    client = make_client(settings=replace(settings, callback_allow_private=False))
    url = f"http://{SLOW_HOST}/hook"
    resolver = HangingResolver(longest=0)  # the API's lookup fails at once as a temporary failure: accepted
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    assert client.post("/functions/simple_calculation/invocations", json={"expression": "1+1"},
                       headers={"X-Callback-Url": url}).status_code == 202
    run_jobs(["demo_tasks"])
    resolver.longest = 30  # from now on the DNS hangs
    took, _ = timed(lambda: run_jobs([CALLBACK_QUEUE]))
    resolver.release.set()
    assert took < 0.5 + 2  # the lookup's bound, plus running a job in-process
    [delivery_id] = ScheduledJobRegistry(CALLBACK_QUEUE, connection=connection).get_job_ids()
    delivery = Job.fetch(delivery_id, connection=connection, serializer=JSONSerializer)
    assert delivery.retries_left == len(callbacks.DELIVERY_BACKOFF) - 1  # retried later, not given up
    assert "Callback URL not checked yet: its host 'hooks.slow-dns.example' did not resolve" in caplog.text
