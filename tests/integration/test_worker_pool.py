"""`python -m runner worker --min N --max M`: a pool that follows the load, down to zero and back.

Real processes on a real Redis: gunicorn, and the pool under test, whose work processes are the
pool's direct children. Jobs are `gated_progress` (a test-only function): each holds its worker
until the test creates its gate file.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from rq import Worker

from tests.integration.conftest import PYTHON, ManagedProcess, ProcessSet, Stack, wait_until, work_processes

QUEUE = "demo_tasks"
MAX = 3
SCALE_DOWN_AFTER = "1"


@pytest.fixture(scope="module")
def stack(stack_factory: Callable[..., Stack]) -> Stack:
    """Web processes with no worker: the pools of the tests are the only ones."""
    return stack_factory(workers=0)


def start_pool(spawn: ProcessSet, stack: Stack, *, minimum: int = 0, maximum: int = MAX, idle: bool = True,
               **env: str) -> ManagedProcess:
    """A pool on QUEUE, with RUNNER_SCALE_DOWN_AFTER of a second unless `env` says otherwise; when `idle`
    (nothing queued), returned once it waits for work."""
    environment = {**stack.env, "RUNNER_SCALE_DOWN_AFTER": SCALE_DOWN_AFTER, **env}
    pool = spawn.start("pool", [PYTHON, "-m", "runner", "worker", "--min", str(minimum), "--max", str(maximum),
                                QUEUE], environment)
    if not idle:
        return pool
    # Started once its parent waits in its one blocking call (with no work process yet, only it blocks).
    wait_until(lambda: any(client.get("cmd") == "blpop" for client in stack.redis.client_list()), 30,
               "the pool to wait for work")
    return pool


def scale_events(pool: ManagedProcess) -> list[dict[str, object]]:
    """The JSON lines of the `runner.scaling` logger in the pool's log."""
    events = []
    for line in pool.log_path.read_text().splitlines():
        if " runner.scaling: " in line:
            events.append(json.loads(line.split(" runner.scaling: ", 1)[1]))
    return events


class Peak:
    """Samples the pool's work processes and registered workers every 20 ms; keeps the highest counts."""

    def __init__(self, stack: Stack, pool: ManagedProcess) -> None:
        self.stack, self.pool = stack, pool
        self.processes = self.workers = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(0.02):
            self.processes = max(self.processes, len(work_processes(self.pool.pid)))
            self.workers = max(self.workers, len(Worker.all(connection=self.stack.redis)))

    @contextlib.contextmanager
    def watching(self) -> Iterator[Peak]:
        """Sample while the block runs."""
        self._thread.start()
        try:
            yield self
        finally:
            self._done.set()
            self._thread.join()


def gated(stack: Stack, tmp_path: Path, count: int) -> list[tuple[str, Path]]:
    """Invoke `count` gated jobs; their ids and gates."""
    jobs = []
    for number in range(count):
        gate = tmp_path / f"gate-{number}"
        response = stack.invoke("gated_progress", {"gate": str(gate)})
        assert response.status_code == 202, response.text
        jobs.append((response.json()["id"], gate))
    return jobs


def statuses(stack: Stack, jobs: list[tuple[str, Path]]) -> list[str]:
    """The status of each job."""
    return [stack.job(job_id)["status"] for job_id, _gate in jobs]


def test_an_idle_pool_stays_at_zero(spawn: ProcessSet, stack: Stack) -> None:
    pool = start_pool(spawn, stack)
    time.sleep(3)  # observation window: nothing may start while nothing is queued
    assert pool.alive(), pool.log_tail()
    assert work_processes(pool.pid) == []
    assert Worker.all(connection=stack.redis) == []
    assert scale_events(pool) == []
    # A stop breaks into its one blocking wait (which would last up to 30 s): it exits at once.
    stopped_at = time.monotonic()
    pool.signal(signal.SIGTERM)
    assert pool.wait(5) == 0, pool.log_tail()
    assert time.monotonic() - stopped_at < 2


def test_a_burst_rises_to_max_never_above_every_job_finishes_and_the_pool_drains_to_zero(
    spawn: ProcessSet, stack: Stack, tmp_path: Path
) -> None:
    pool = start_pool(spawn, stack)
    with Peak(stack, pool).watching() as peak:
        burst_at = time.monotonic()
        jobs = gated(stack, tmp_path, 2 * MAX)
        rose = wait_until(lambda: statuses(stack, jobs).count("started") == MAX, 10, f"{MAX} jobs running")
        print(f"{MAX} workers busy {time.monotonic() - burst_at:.2f} s after the burst began")
        assert len(work_processes(pool.pid)) == MAX
        assert rose < 5

        scaling = {entry["queue"]: entry for entry in stack.get("/scaling").json()["queues"]}[QUEUE]
        assert (scaling["queued"], scaling["running"], scaling["workers"], scaling["desired_workers"]) == (
            MAX, MAX, MAX, 2 * MAX)
        assert scaling["oldest_age_seconds"] > 0

        for _job_id, gate in jobs:
            gate.touch()
        for job_id, _gate in jobs:
            assert stack.wait_until_terminal(job_id, timeout=20)["status"] == "finished"
        wait_until(lambda: not work_processes(pool.pid), 15, "the pool to drain back to zero")
    assert (peak.processes, peak.workers) == (MAX, MAX)
    wait_until(lambda: Worker.all(connection=stack.redis) == [], 5, "the retired workers to unregister")
    events = scale_events(pool)
    assert [event["event"] for event in events][0] == "scale_up"
    assert events[-1]["event"] == "scale_down" and events[-1]["to"] == 0
    assert max(int(str(event["to"])) for event in events) == MAX


def test_a_killed_work_process_is_replaced_and_its_job_settled(
    spawn: ProcessSet, stack: Stack, tmp_path: Path
) -> None:
    pool = start_pool(spawn, stack, maximum=2)
    jobs = gated(stack, tmp_path, 3)
    wait_until(lambda: statuses(stack, jobs).count("started") == 2, 10, "2 jobs running")
    victim = work_processes(pool.pid)[0]
    os.kill(victim, signal.SIGKILL)

    wait_until(lambda: "failed" in statuses(stack, jobs), 10, "the killed process's job to be settled")
    killed = next(job_id for job_id, _gate in jobs if stack.job(job_id)["status"] == "failed")
    assert stack.job(killed)["error"]["type"] == "WorkerDied"
    # Its place is taken: the third job runs on a fresh work process.
    wait_until(lambda: statuses(stack, jobs).count("started") == 2, 10, "the third job to start")
    assert victim not in work_processes(pool.pid) and len(work_processes(pool.pid)) == 2
    for job_id, gate in jobs:
        if job_id != killed:
            gate.touch()
            assert stack.wait_until_terminal(job_id, timeout=20)["status"] == "finished"


def test_sigterm_during_a_burst_lets_running_jobs_finish_and_loses_none(
    spawn: ProcessSet, stack: Stack, tmp_path: Path
) -> None:
    pool = start_pool(spawn, stack, maximum=2)
    jobs = gated(stack, tmp_path, 4)
    wait_until(lambda: statuses(stack, jobs).count("started") == 2, 10, "2 jobs running")
    running = [(job_id, gate) for job_id, gate in jobs if stack.job(job_id)["status"] == "started"]
    waiting = [(job_id, gate) for job_id, gate in jobs if (job_id, gate) not in running]

    pool.signal(signal.SIGTERM)
    wait_until(lambda: pool.log_tail().count("warm shut down requested") == 2, 10,
               "the stop to reach both work processes")
    for _job_id, gate in running:
        gate.touch()
    assert pool.wait(20) == 0, pool.log_tail()
    assert [stack.job(job_id)["status"] for job_id, _gate in running] == ["finished", "finished"]
    assert statuses(stack, waiting) == ["queued", "queued"]

    # Nothing lost: a new pool runs what waited.
    start_pool(spawn, stack, maximum=2, idle=False)
    for job_id, gate in waiting:
        gate.touch()
        assert stack.wait_until_terminal(job_id, timeout=20)["status"] == "finished"
