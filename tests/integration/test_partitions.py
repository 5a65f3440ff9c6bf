"""A worker on a test host of its own, cut off (or paused) mid-job for longer than the dead-worker window.

The host is a network namespace joined to this one by a veth pair: its worker reaches Redis and
PostgreSQL through the pair's addresses, and nothing else. Mid-job the link is cut (or the worker
is SIGSTOPped): a worker here presumes it dead and runs the job's second attempt to its end. Once
the link is back (SIGCONT), the cut-off worker's late end is refused by attempt fencing (the row,
result, events and the completion callback say attempt 2 only), and it rejoins by itself: it is
the only worker left when it runs the next job.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from runner.rq_seam.queues import queue_for
from runner.services.callbacks import CALLBACK_QUEUE
from tests.integration.conftest import PYTHON, ManagedProcess, Stack, log_tail, require_service, wait_until
from tests.receiver import CallbackReceiver
from tests.servers import NetworkNamespace, PostgresServer, RedisServer, find_postgres_bin, find_redis_server

DEAD_AFTER_SECONDS = 3
ATTEMPT_SECONDS = 4.0
FLEET_ENV = {"RUNNER_WORKER_DEAD_AFTER_SECONDS": str(DEAD_AFTER_SECONDS), "RUNNER_CALLBACK_ALLOW_PRIVATE": "1"}
_namespace_numbers = itertools.count(1)


@dataclass
class Fleet:
    """The web process here, a worker on the test host, and the host's namespace."""

    stack: Stack
    namespace: NetworkNamespace
    remote_worker: ManagedProcess


@pytest.fixture
def namespace() -> Iterator[NetworkNamespace]:
    """A test host: a network namespace and a veth pair (skipped without root or `ip`)."""
    reason = NetworkNamespace.unavailable()
    if reason is not None:
        if os.environ.get("RUNNER_REQUIRE_SERVICES") == "1" and os.geteuid() == 0:
            pytest.fail(f"a worker on a test host of its own: {reason}, but RUNNER_REQUIRE_SERVICES=1")
        pytest.skip(f"a worker on a test host of its own needs a network namespace: {reason}")
    host = NetworkNamespace(next(_namespace_numbers))
    try:
        host.create()
    except RuntimeError as exc:
        host.close()
        pytest.skip(f"a worker on a test host of its own: cannot make a network namespace here ({exc})")
    yield host
    host.close()


@pytest.fixture
def fleet(namespace: NetworkNamespace, tmp_path: Path) -> Iterator[Fleet]:
    """Redis and PostgreSQL listening on loopback and the pair's address; web here, one worker on the test host."""
    require_service(find_redis_server(), "redis-server")
    require_service(find_postgres_bin(), "PostgreSQL server binaries")
    here = namespace.host_address
    with RedisServer(tmp_path / "redis", arguments=["--bind", "127.0.0.1", here, "--protected-mode", "no"]) as redis, \
            PostgresServer(tmp_path / "postgres", listen_addresses=("127.0.0.1", here),
                           trusted_networks=(f"{namespace.address}/32",)) as postgres:
        database_url = postgres.create_database("runner_fleet")
        stack = Stack("postgresql", redis.url, database_url, tmp_path, extra_env=FLEET_ENV, workers=0)
        try:
            stack.start()
            remote_env = {**stack.env, "REDIS_URL": f"redis://{here}:{redis.port}/0",
                          "DATABASE_URL": f"postgresql://postgres@{here}:{postgres.port}/runner_fleet"}
            remote = stack.processes.start("remote-worker", namespace.command(
                [PYTHON, "-m", "runner", "worker", "demo_tasks"]), remote_env)
            wait_until(lambda: stack.worker_count() == 1, 30, "the worker on the test host to register")
            yield Fleet(stack, namespace, remote)
        finally:
            stack.stop()


def events_of(log: str, job_id: str) -> list[tuple[str, int]]:
    """(event, attempt) of each runner.events line a worker logged for `job_id`."""
    lines = [json.loads(line[line.index("{"):]) for line in log.splitlines() if "runner.events" in line]
    return [(line["event"], line["attempt"]) for line in lines if line.get("job_id") == job_id]


@pytest.mark.parametrize("outage", ["link cut", "SIGSTOP"])
def test_a_worker_cut_off_mid_job_cannot_end_it_and_rejoins(fleet: Fleet, outage: str) -> None:
    stack, remote = fleet.stack, fleet.remote_worker
    with CallbackReceiver() as receiver:
        accepted = stack.post("/functions/attempt_report/invocations", json={"seconds": ATTEMPT_SECONDS},
                              headers={"X-Callback-Url": f"{receiver.url}/done"})
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["id"]
        stack.wait_for(job_id, lambda view: view["progress"]["message"] == "attempt 1")  # on the test host
        local = stack.processes.start_worker(stack.env, "local-worker")
        if outage == "link cut":
            fleet.namespace.cut()
        else:
            os.killpg(remote.pid, signal.SIGSTOP)  # the supervisor, its work process and its scheduler
        since = time.monotonic()
        try:
            # Presumed dead after its silence; attempt 2 runs here, to its end.
            view = stack.wait_for(job_id, lambda view: view["status"] == "finished", timeout=40)
            assert (view["result"], view["attempts"]) == ({"attempt": 2}, 2)
            [delivery] = receiver.wait_for(1, timeout=20)
            assert time.monotonic() - since > DEAD_AFTER_SECONDS
        finally:
            if outage == "link cut":
                fleet.namespace.restore()
            else:
                os.killpg(remote.pid, signal.SIGCONT)
        assert (delivery.headers["X-Runner-Event"], json.loads(delivery.body)["result"]) == ("finished", {"attempt": 2})

        # The cut-off worker comes back by itself; with the worker here stopped, it runs the next job.
        wait_until(lambda: "registered again" in remote.log_tail(), 60, "the cut-off worker to register again")
        local.signal(signal.SIGTERM)
        assert local.wait(30) == 0
        wait_until(lambda: stack.worker_count() == 1, 30, "the worker here to leave")
        after = stack.invoke("attempt_report", {"seconds": 0}, wait=30)
        assert after.status_code == 200 and after.json()["result"] == {"attempt": 1}, after.text

        # Attempt 1 ended on the test host long ago, and whatever it sent on its return was refused.
        assert stack.job(job_id)["result"] == {"attempt": 2}
        row = stack.wait_for_row(job_id, lambda row: row.status == "finished")
        assert (row.result, row.attempts) == ({"attempt": 2}, 2)
        assert ("finished", 1) not in events_of(log_tail(remote.log_path, 1_000_000), job_id)
        assert events_of(log_tail(local.log_path, 1_000_000), job_id)[-1] == ("finished", 2)
        assert queue_for(CALLBACK_QUEUE, stack.redis).count == 0  # no delivery of attempt 1 waits
        assert len(receiver.deliveries) == 1
