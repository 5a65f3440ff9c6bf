"""Redis Sentinel: the primary SIGKILLed during a stream of invocations from several clients.

Real servers on loopback: a primary, a replica and three sentinels (down-after 1 s), the API
(gunicorn) and a worker as processes, REDIS_URL=redis+sentinel://..., and every 202 only once the
replica acknowledged its job (RUNNER_REDIS_MIN_REPLICAS=1). While there is no primary, invoking
answers 503 with Retry-After; the killed node is started again as a replica of the new primary
(as a supervisor would), and from then N=1 holds again: service resumes within 10 s of the kill,
and every job answered 202 finishes (`retried_sum` has retries: a job whose end went down with
the old primary is recovered as silent and runs again).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.conftest import (
    PYTHON,
    REPO_ROOT,
    Stack,
    base_environment,
    log_tail,
    require_service,
    sqlite_url,
    wait_until,
)
from tests.servers import SentinelGroup, find_redis_sentinel, find_redis_server, free_port

CLIENTS = 4
RESUME_WITHIN_SECONDS = 10.0
FAILOVER_ENV = {
    "RUNNER_REDIS_MIN_REPLICAS": "1",
    # A job whose end the old primary took but never passed on is seen silent, and retried, this soon.
    "RUNNER_WORKER_DEAD_AFTER_SECONDS": "3",
}


@dataclass(frozen=True)
class Answer:
    """One invocation as a client saw it."""

    sent: float
    answered: float
    payload: dict[str, int]
    status: int  # 0: no HTTP answer at all
    body: Any
    retry_after: str | None


@pytest.fixture
def sentinel_group(tmp_path: Path) -> Iterator[SentinelGroup]:
    """A primary, a replica and three sentinels (down-after 1 s) on loopback."""
    require_service(find_redis_server(), "redis-server")
    require_service(find_redis_sentinel(), "redis-sentinel")
    with SentinelGroup(tmp_path / "redis", down_after_ms=1000, failover_timeout_ms=2000) as group:
        yield group


@pytest.fixture
def failover_stack(sentinel_group: SentinelGroup, tmp_path: Path) -> Iterator[Stack]:
    """gunicorn and one worker on the sentinel group, 202 only once the replica holds the job."""
    stack = Stack("sqlite", sentinel_group.url, sqlite_url(tmp_path), tmp_path, extra_env=FAILOVER_ENV, workers=1)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def invoke_until(stack: Stack, client: int, stop: threading.Event, answers: list[Answer]) -> None:
    """POST retried_sum invocations one after another until `stop`, noting each answer."""
    session = requests.Session()
    number = 0
    while not stop.is_set():
        number += 1
        payload = {"a": client * 100000, "b": number}
        sent = time.monotonic()
        try:
            response = session.post(f"{stack.url}/functions/retried_sum/invocations", json=payload, timeout=15)
        except requests.RequestException:
            answers.append(Answer(sent, time.monotonic(), payload, 0, None, None))
            continue
        answers.append(Answer(sent, time.monotonic(), payload, response.status_code, response.json(),
                              response.headers.get("Retry-After")))
    session.close()


def test_invocations_survive_the_primary_killed_mid_stream(sentinel_group: SentinelGroup,
                                                            failover_stack: Stack) -> None:
    stack = failover_stack
    answers: list[Answer] = []
    stop = threading.Event()
    clients = [threading.Thread(target=invoke_until, args=(stack, n, stop, answers)) for n in range(CLIENTS)]
    for thread in clients:
        thread.start()
    try:
        while sum(answer.status == 202 for answer in answers) < 40:
            time.sleep(0.05)
        old = sentinel_group.kill_primary()
        killed = time.monotonic()
        promoted_after = sentinel_group.wait_for_failover(old.port)
        # With one replica, the new primary has none until the old node is back: N=1 refuses until then.
        sentinel_group.restart_as_replica(old)
        while not any(a.status == 202 and a.sent > killed for a in answers) and \
                time.monotonic() - killed < RESUME_WITHIN_SECONDS + 5:
            time.sleep(0.05)
        time.sleep(1.0)  # a second of service on the new primary
    finally:
        stop.set()
        for thread in clients:
            thread.join(30)

    refused = [answer for answer in answers if answer.status != 202]
    assert {answer.status for answer in refused} <= {503}, [(a.status, a.body) for a in refused if a.status != 503]
    assert refused, "no invocation was sent while there was no primary"
    for answer in refused:
        assert answer.retry_after is not None and set(answer.body) == {"error", "message", "details"}
    after_kill = [a.answered for a in answers if a.status == 202 and a.sent > killed]
    assert after_kill, f"no invocation was accepted in the {RESUME_WITHIN_SECONDS + 5:g} s after the SIGKILL"
    gap = min(after_kill) - killed
    last_before = max(a.answered for a in answers if a.status == 202 and a.sent < killed)
    print(f"\nfailover: sentinels named the replica primary {promoted_after:.2f} s after the SIGKILL; "
          f"first 202 {gap:.2f} s after it ({killed - last_before:.2f} s after the last 202 before); "
          f"{sum(a.status == 202 for a in answers)} accepted, {len(refused)} answered 503")
    assert gap <= RESUME_WITHIN_SECONDS

    accepted = [answer for answer in answers if answer.status == 202]
    for answer in accepted:
        view = stack.wait_until_terminal(answer.body["id"], timeout=60)
        assert view["status"] == "finished", view
        assert view["result"] == answer.payload["a"] + answer.payload["b"]

    # After the failover: the scheduler (a process of its own) runs a delayed job, the dashboard answers.
    # The lone replica may be resyncing a moment (sentinels reconfigure it): a 503 NotReplicated is then
    # retried with the same Idempotency-Key, as the README tells clients, and must never make a second job.
    key, deadline, not_replicated = uuid.uuid4().hex, time.monotonic() + 10, 0
    while True:
        delayed = stack.post("/functions/retried_sum/invocations", json={"a": 40, "b": 2}, params={"delay": 1},
                             headers={"Idempotency-Key": key})
        if delayed.status_code != 503 or time.monotonic() > deadline:
            break
        assert delayed.json()["error"] == "backend_unavailable" and delayed.headers.get("Retry-After"), delayed.text
        not_replicated += 1
        time.sleep(0.2)
    print(f"the delayed invocation after the failover: {not_replicated} answer(s) 503 before its 202")
    assert delayed.status_code == 202, delayed.text
    assert stack.wait_until_terminal(delayed.json()["id"], timeout=30)["result"] == 42
    assert stack.get("/dashboard/").status_code == 200


def test_a_job_the_replica_did_not_acknowledge_is_a_503_and_a_retry_with_its_key_gets_it(
        sentinel_group: SentinelGroup, failover_stack: Stack) -> None:
    stack, replica = failover_stack, sentinel_group.replicas[0]
    invoke = {"path": "/functions/retried_sum/invocations", "json": {"a": 1, "b": 2},
              "headers": {"Idempotency-Key": "failover-retry"}}
    assert replica.process is not None
    replica.process.send_signal(signal.SIGSTOP)  # connected, but acknowledges nothing
    try:
        refused = stack.post(**invoke)
        assert refused.status_code == 503 and refused.headers["Retry-After"], refused.text
        details = refused.json()["details"]
        assert (details["replicas_required"], details["replicas_acknowledged"]) == (1, 0)
        # The primary holds the job: it runs, and the 503 named it.
        assert stack.wait_until_terminal(details["job_id"])["result"] == 3
        again = stack.post(**invoke)  # a retry is answered only once the replica has the job, too
        assert again.status_code == 503 and again.json()["details"]["replicas_acknowledged"] == 0
    finally:
        replica.process.send_signal(signal.SIGCONT)
    retried = stack.post(**invoke)
    assert retried.status_code == 202, retried.text
    assert retried.json()["id"] == details["job_id"] and retried.headers["Idempotent-Replayed"] == "true"
    assert stack.row_count() == 1  # one job, never a second


def test_the_dev_command_serves_on_a_sentinel_url(sentinel_group: SentinelGroup, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = base_environment(REDIS_URL=sentinel_group.url)
    log_path = tmp_path / "dev.log"
    with open(log_path, "ab") as log:
        argv = [PYTHON, "-m", "runner", "dev", "--port", str(port), "--data-dir", str(tmp_path / "data")]
        dev = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: f"is up: {url}".encode() in log_path.read_bytes() or dev.poll() is not None, 60,
                   "the dev command's banner")
        assert f"Redis at {sentinel_group.url}".encode() in log_path.read_bytes(), log_tail(log_path)
        answer = requests.post(f"{url}/functions/simple_calculation/invocations", params={"wait": 10},
                               json={"expression": "2 + 3"}, timeout=20)
        assert answer.status_code == 200 and answer.json()["result"]["result"] == 5, answer.text
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(dev.pid, signal.SIGKILL)
        dev.wait(10)
