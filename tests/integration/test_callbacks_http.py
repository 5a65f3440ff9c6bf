"""Completion callbacks over real HTTP: a receiver in this process gets the signed final view; a 500 is retried."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from rq.registry import FinishedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

from runner.rq_seam.queues import queue_for
from runner.services.callbacks import CALLBACK_QUEUE, DELIVERY_TIMEOUT_SECONDS
from tests.integration.conftest import Stack, wait_until
from tests.receiver import CallbackReceiver, TricklingReceiver

SECRET = "integration-callback-secret"
# The first delivery retry comes 5 s after a failed attempt (runner.services.callbacks.DELIVERY_BACKOFF).
FIRST_RETRY_SECONDS = 5
# How far past the delivery's deadline the worker may hang up (a tick of the watchdog, a loaded machine).
DEADLINE_MARGIN = 1.5
OK_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


@pytest.fixture(scope="module")
def callback_stack(stack_factory: Callable[..., Stack]) -> Stack:
    """A stack whose API and workers accept receivers on 127.0.0.1 and sign with SECRET."""
    return stack_factory(extra_env={"RUNNER_CALLBACK_ALLOW_PRIVATE": "1", "RUNNER_CALLBACK_SECRET": SECRET})


@pytest.fixture
def receiver() -> Iterator[CallbackReceiver]:
    with CallbackReceiver() as running:
        yield running


def check_signature(body: bytes, header: str) -> None:
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(header, expected)


def test_a_finished_job_posts_its_signed_final_view(callback_stack: Stack, receiver: CallbackReceiver) -> None:
    delivered = FinishedJobRegistry(CALLBACK_QUEUE, connection=callback_stack.redis)
    delivered_before = delivered.count
    response = callback_stack.invoke("simple_calculation", {"expression": "6*7"}, wait=10)
    assert response.status_code == 200  # no callback asked: nothing is sent
    job = callback_stack.post("/functions/simple_calculation/invocations", json={"expression": "6*7"},
                              headers={"X-Callback-Url": f"{receiver.url}/hooks/done?source=runner"})
    assert job.status_code == 202, job.text
    job_id = job.json()["id"]
    [delivery] = receiver.wait_for(1, timeout=15)
    assert delivery.path == "/hooks/done?source=runner"
    assert delivery.headers["Content-Type"] == "application/json"
    assert (delivery.headers["X-Runner-Job-Id"], delivery.headers["X-Runner-Event"]) == (job_id, "finished")
    check_signature(delivery.body, delivery.headers["X-Runner-Signature"])
    view = json.loads(delivery.body)
    assert view == callback_stack.job(job_id)
    assert (view["status"], view["result"]["result"]) == ("finished", 42)
    row = callback_stack.store.get(job_id)
    assert row is not None and row.callback_url == f"{receiver.url}/hooks/done?source=runner"
    # One delivery job ran and finished, and none is left to run, scheduled, or running: no duplicate can follow.
    wait_until(lambda: delivered.count == delivered_before + 1, 10, "the delivery job to be recorded as finished")
    assert queue_for(CALLBACK_QUEUE, callback_stack.redis).count == 0
    assert ScheduledJobRegistry(CALLBACK_QUEUE, connection=callback_stack.redis).count == 0
    assert StartedJobRegistry(CALLBACK_QUEUE, connection=callback_stack.redis).count == 0
    assert len(receiver.deliveries) == 1


def test_a_failed_and_a_stopped_job_post_too(callback_stack: Stack, receiver: CallbackReceiver,
                                             tmp_path: Path) -> None:
    headers = {"X-Callback-Url": f"{receiver.url}/hook"}
    failed = callback_stack.post("/functions/permanent_failure/invocations", json={"reason": "nope"},
                                 headers=headers).json()["id"]
    gated = callback_stack.post("/functions/gated_progress/invocations", json={"gate": str(tmp_path / "never")},
                                headers=headers).json()["id"]
    callback_stack.wait_for(gated, lambda view: view["progress"]["percent"] == 50)
    assert callback_stack.post(f"/jobs/{gated}/cancel").json()["status"] == "stopped"
    deliveries = receiver.wait_for(2, timeout=15)
    events = {d.headers["X-Runner-Job-Id"]: d.headers["X-Runner-Event"] for d in deliveries}
    assert events == {failed: "failed", gated: "stopped"}
    for delivery in deliveries:
        check_signature(delivery.body, delivery.headers["X-Runner-Signature"])
        assert json.loads(delivery.body)["status"] == delivery.headers["X-Runner-Event"]


def test_a_receiver_that_fails_once_gets_the_same_signed_body_again(callback_stack: Stack) -> None:
    with CallbackReceiver([500]) as flaky:
        job_id = callback_stack.post("/functions/simple_calculation/invocations", json={"expression": "2+2"},
                                     headers={"X-Callback-Url": f"{flaky.url}/hook"}).json()["id"]
        first, second = flaky.wait_for(2, timeout=FIRST_RETRY_SECONDS + 10)
    assert first.body == second.body and first.headers["X-Runner-Job-Id"] == job_id
    check_signature(second.body, second.headers["X-Runner-Signature"])
    gap = second.at - first.at
    print(f"\ncallback retry came {gap:.2f} s after a 500")
    # RQ keeps retry times in whole seconds (rounded down), so the retry may come up to 1 s early.
    assert FIRST_RETRY_SECONDS - 1 <= gap < FIRST_RETRY_SECONDS + 3


def test_a_receiver_that_trickles_its_answer_holds_a_worker_10_s_at_most_then_is_retried(callback_stack: Stack) -> None:
    # The receiver: a byte every 5 s, which no per-read timeout of 10 s ever trips. The status
    # line never completes within the deadline, so the delivery fails and is retried; the retry is answered.
    delivered = FinishedJobRegistry(CALLBACK_QUEUE, connection=callback_stack.redis)
    delivered_before = delivered.count
    with TricklingReceiver(OK_ANSWER, interval=5, then=OK_ANSWER) as receiver:
        job_id = callback_stack.post("/functions/simple_calculation/invocations", json={"expression": "2+3"},
                                     headers={"X-Callback-Url": f"{receiver.url}/hook"}).json()["id"]
        first, second = receiver.wait_for(2, timeout=DELIVERY_TIMEOUT_SECONDS + FIRST_RETRY_SECONDS + 15)
    assert first.closed is not None and second.closed is not None
    held, gap = first.closed - first.opened, second.opened - first.closed
    print(f"\ntrickling receiver held the worker {held:.2f} s; the retry came {gap:.2f} s later")
    assert held < DELIVERY_TIMEOUT_SECONDS + DEADLINE_MARGIN
    assert FIRST_RETRY_SECONDS - 1 <= gap < FIRST_RETRY_SECONDS + 3  # DELIVERY_BACKOFF's first step
    assert f"X-Runner-Job-Id: {job_id}".encode() in second.request
    assert first.request.partition(b"\r\n\r\n")[2] == second.request.partition(b"\r\n\r\n")[2]
    wait_until(lambda: delivered.count == delivered_before + 1, 10, "the retried delivery to finish")
