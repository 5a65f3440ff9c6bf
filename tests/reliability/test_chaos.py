"""Chaos: 200 invocations while a random worker is SIGKILLed (with its horse) every 1-2 s and restarted.

Every accepted job must end `finished` with a correct result, Redis and PostgreSQL must agree on
each, and nothing may be left behind (claims, started registries, dead workers' registrations).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from rq import Worker
from rq.job import Job
from rq.serializers import JSONSerializer

from runner.store.models import InvocationRecord
from tests.integration.conftest import Stack, wait_until
from tests.reliability.conftest import kill_worker, start_stack
from tests.reliability.probe_functions.reliability import sha256_chain
from tests.servers import PostgresServer, RedisServer

JOBS = 200
WORKERS = 3
ROUNDS = 300_000  # about 90 ms of hashing per job: workers are busy most of the time
POST_INTERVAL = 0.05
KILL_INTERVAL = (1.0, 2.0)
SETTLE_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def stack(
    redis_server: RedisServer, postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    started = start_stack("postgresql", redis_server, tmp_path_factory.mktemp("chaos"), postgres_server,
                          workers=WORKERS)
    yield started
    started.stop()


class Chaos(threading.Thread):
    """Kills a random live worker every 1-2 s and starts a replacement, until stopped."""

    def __init__(self, stack: Stack) -> None:
        super().__init__(daemon=True)
        self.stack = stack
        self.halt = threading.Event()
        self.kills = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.halt.wait(random.uniform(*KILL_INTERVAL)):
                workers = [p for p in self.stack.processes.processes if p.name != "web" and p.alive()]
                # A worker in the middle of a job when there is one: jobs take milliseconds, and a
                # kill between two jobs tests less.
                busy = {w.pid for w in Worker.all(connection=self.stack.redis) if w.get_current_job_id()}
                kill_worker(random.choice([p for p in workers if p.pid in busy] or workers))
                self.kills += 1
                self.stack.processes.start_worker(self.stack.env, f"replacement.{self.kills}")
        except BaseException as exc:  # surfaced by the test, which joins this thread
            self.error = exc


def test_every_accepted_job_finishes_while_workers_are_killed(stack: Stack, tmp_path: Path) -> None:
    seeds = {}
    chaos = Chaos(stack)
    started = time.monotonic()
    chaos.start()
    try:
        for n in range(JOBS):
            response = stack.invoke("hash_chain", {"seed": f"chaos-{n}", "rounds": ROUNDS})
            assert response.status_code == 202, response.text
            seeds[response.json()["id"]] = f"chaos-{n}"
            time.sleep(POST_INTERVAL)  # a steady stream, so the kills land while jobs run
        wait_until(lambda: chaos.kills >= 5, 20, "at least five kills")
    finally:
        chaos.halt.set()
        chaos.join(30)
    assert chaos.error is None, chaos.error
    stream_seconds = time.monotonic() - started

    def unsettled() -> list[tuple[str, str, int, str, object]]:
        # Settled: every row says finished, on the attempt Redis has (a row never says finished for
        # an attempt Redis retried: its end goes to the journal in the call that ends it in Redis).
        # The rows follow the journal within moments; a write that never lands fails the test.
        stack.store.get("")  # apply what waits in the journal first, as the API would before a read
        with stack.store.session() as session:
            rows = session.execute(sa.select(InvocationRecord.id, InvocationRecord.status,
                                             InvocationRecord.attempts)).all()
        left = []
        for job_id, status, attempts in rows:
            job = Job.fetch(job_id, connection=stack.redis, serializer=JSONSerializer)
            if status != "finished" or job.meta.get("attempts") != attempts:
                left.append((job_id, status, attempts, str(job.get_status()), job.meta.get("attempts")))
        return left

    settled_at = time.monotonic() + SETTLE_TIMEOUT
    while left := unsettled():
        assert time.monotonic() < settled_at, (
            f"not settled after {SETTLE_TIMEOUT:g} s (id, SQL status and attempts, Redis status and attempts): {left}")
        time.sleep(0.5)
    settle = time.monotonic() - settled_at + SETTLE_TIMEOUT
    with stack.store.session() as session:
        rows = {row.id: row for row in session.scalars(sa.select(InvocationRecord))}
    assert set(rows) == set(seeds)
    for job_id, seed in seeds.items():
        row = rows[job_id]
        assert row.status == "finished" and row.attempts >= 1, (job_id, row.status, row.attempts)
        assert row.result == {"seed": seed, "rounds": ROUNDS, "sha256": sha256_chain(seed, ROUNDS),
                              "attempt": row.attempts}
        job = Job.fetch(job_id, connection=stack.redis, serializer=JSONSerializer)
        assert job.get_status() == "finished"
        assert job.meta["attempts"] == row.attempts and job.return_value() == row.result

    # Nothing is left half-done, and the dashboards count only live workers.
    assert stack.redis.zcard("rq:wip:demo_tasks") == 0
    assert all(stack.redis.llen(key) == 0 for key in stack.redis.scan_iter("runner:claims:*"))
    wait_until(lambda: len(Worker.all(connection=stack.redis)) == WORKERS, 30, "dead workers to be unregistered")
    rerun = sorted(row.attempts for row in rows.values() if row.attempts > 1)
    print(f"{JOBS} jobs, {chaos.kills} workers killed in {stream_seconds:.1f} s; all finished {settle:.1f} s later; "
          f"{len(rerun)} re-run (attempts {rerun})")
    assert rerun, "no job was running when a worker was killed: the chaos did not bite"
