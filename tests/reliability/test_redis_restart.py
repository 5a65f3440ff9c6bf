"""Redis restarted under a running system: with append-only persistence no accepted job is lost.

Nothing is restarted but Redis: gunicorn and the workers reconnect by themselves, and the jobs
running during the outage are not mistaken for jobs of dead workers.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from tests.integration.conftest import Stack, http_ready, require_service, wait_until
from tests.reliability.conftest import start_stack
from tests.reliability.probe_functions.reliability import sha256_chain
from tests.servers import RedisServer, find_redis_server

ACCEPTED = 30
ROUNDS = 2_000


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of its own, append-only, that the test stops and starts."""
    require_service(find_redis_server(), "redis-server")
    server = RedisServer(tmp_path / "redis", appendonly=True)
    server.start()
    yield server
    server.close()


@pytest.fixture
def stack(persistent_redis: RedisServer, tmp_path: Path) -> Iterator[Stack]:
    started = start_stack("sqlite", persistent_redis, tmp_path / "stack", workers=2)
    yield started
    started.stop()


def accept(stack: Stack, seed: str) -> str:
    """Invoke hash_chain, which must be accepted."""
    response = stack.invoke("hash_chain", {"seed": seed, "rounds": ROUNDS})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def assert_all_finished(stack: Stack, seeds: dict[str, str]) -> None:
    """Every job of `seeds` ends finished with its correct digest, in Redis and in SQL."""
    for job_id, seed in seeds.items():
        view = stack.wait_until_terminal(job_id, timeout=60)
        assert view["status"] == "finished", view
        assert view["result"]["sha256"] == sha256_chain(seed, ROUNDS)
    wait_until(lambda: all((r := stack.store.get(j)) is not None and r.status == "finished" for j in seeds), 30,
         "every row to be finished")


def test_jobs_accepted_before_a_restart_all_finish(
    stack: Stack, persistent_redis: RedisServer, tmp_path: Path
) -> None:
    gates = [tmp_path / f"gate-{n}" for n in range(2)]
    busy = [stack.invoke("gated_progress", {"gate": str(gate)}).json()["id"] for gate in gates]
    for job_id in busy:  # both workers hold a job, so the next ones stay queued
        stack.wait_for(job_id, lambda view: view["progress"]["percent"] == 50, timeout=20)
    seeds = {accept(stack, f"restart-{n}"): f"restart-{n}" for n in range(ACCEPTED)}

    persistent_redis.stop()  # SIGTERM: Redis writes its append-only file and exits
    assert stack.invoke("hash_chain", {"seed": "during"}).status_code == 503
    time.sleep(1)  # an outage, not a blip
    persistent_redis.start()
    down_for = wait_until(lambda: http_ready(f"{stack.url}/readyz"), 15, "the API to be ready again")
    for gate in gates:
        gate.touch()

    assert_all_finished(stack, seeds)
    for job_id in busy:  # they kept running through the outage: not re-run as if their worker had died
        view = stack.wait_until_terminal(job_id, timeout=20)
        assert (view["status"], view["attempts"]) == ("finished", 1)
    # The scheduler process died with the connection; retries that wait out a backoff still run.
    flaky = stack.invoke("unreliable_task", {"fail_times": 1}).json()["id"]
    view = stack.wait_until_terminal(flaky, timeout=30)
    assert (view["status"], view["attempts"]) == ("finished", 2)
    stack.processes.check_alive()  # nothing was restarted but Redis
    print(f"{ACCEPTED} jobs accepted before the restart all finished; API ready {down_for:.1f} s after Redis")


def test_redis_killed_with_appendfsync_always_keeps_every_accepted_job(
    stack: Stack, persistent_redis: RedisServer
) -> None:
    redis.Redis.from_url(persistent_redis.url).config_set("appendfsync", "always")
    seeds: dict[str, str] = {}
    refused = 0
    unexpected: list[str] = []  # an assert in the thread would only print; the test checks these after join
    stop = threading.Event()

    def stream() -> None:
        nonlocal refused
        n = 0
        while not stop.is_set():
            n += 1
            try:
                response = stack.invoke("hash_chain", {"seed": f"kill-{n}", "rounds": ROUNDS})
            except requests.RequestException:
                refused += 1
                continue
            if response.status_code == 202:
                seeds[response.json()["id"]] = f"kill-{n}"
            elif response.status_code == 503:
                refused += 1
            else:
                unexpected.append(f"{response.status_code}: {response.text}")

    poster = threading.Thread(target=stream, daemon=True)
    poster.start()
    wait_until(lambda: len(seeds) >= 20, 20, "invocations to be accepted")
    assert persistent_redis.pid is not None
    os.kill(persistent_redis.pid, signal.SIGKILL)  # no shutdown, no final write of the append-only file
    assert persistent_redis.process is not None and persistent_redis.process.wait(10) is not None
    time.sleep(0.5)
    persistent_redis.start()
    accepted_before = len(seeds)
    wait_until(lambda: len(seeds) >= accepted_before + 20, 30, "invocations to be accepted again")
    stop.set()
    poster.join(15)

    assert not poster.is_alive(), "the posting thread did not stop"
    assert unexpected == [], "answers other than 202 or 503"
    assert refused > 0, "the API never noticed Redis was gone"
    assert_all_finished(stack, seeds)
    stack.processes.check_alive()
    print(f"Redis SIGKILLed mid-stream: {len(seeds)} accepted, all finished; {refused} refused with 503")
