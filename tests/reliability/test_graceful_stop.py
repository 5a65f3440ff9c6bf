"""SIGTERM: a worker finishes its job (within its grace period), takes no new one and exits 0.

Past the grace period the job is killed and put back at the front of its queue, its attempt not counted.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from rq import Worker

from tests.integration.conftest import ManagedProcess, Stack, wait_until
from tests.reliability.conftest import worker_running

SHORT_GRACE_SECONDS = 2


@pytest.fixture(scope="module")
def stack(sqlite_stack_of: Callable[..., Stack]) -> Stack:
    """One stack for the module; each test replaces its workers with the one it needs."""
    return sqlite_stack_of(workers=1)


def only_worker(stack: Stack, name: str, **env: str) -> ManagedProcess:
    """Stop every worker of the stack (they are idle), then start one, and wait until it registered."""
    for process in stack.processes.processes:
        if process.name != "web" and process.alive():
            process.signal(signal.SIGTERM)
            assert process.wait(10) == 0, process.log_tail()
    worker = stack.processes.start_worker({**stack.env, **env}, name)
    wait_until(lambda: [w.pid for w in Worker.all(connection=stack.redis)] == [worker.pid], 20, f"{name} to register")
    return worker


def stop_requested(stack: Stack, worker: ManagedProcess) -> bool:
    """True once the worker has recorded that it is stopping."""
    return any(w.shutdown_requested_date for w in Worker.all(connection=stack.redis) if w.pid == worker.pid)


def test_sigterm_lets_the_job_finish_and_takes_no_new_one(stack: Stack, tmp_path: Path) -> None:
    worker = only_worker(stack, "patient")
    gate = tmp_path / "gate"
    running = stack.invoke("gated_progress", {"gate": str(gate)}).json()["id"]
    stack.wait_for(running, lambda view: view["progress"]["percent"] == 50)
    assert worker_running(stack, running) is worker
    waiting = stack.invoke("simple_calculation", {"expression": "6*7"}).json()["id"]

    worker.signal(signal.SIGTERM)
    wait_until(lambda: stop_requested(stack, worker), 10, "the worker to begin its warm shutdown")
    gate.touch()
    assert worker.wait(15) == 0, worker.log_tail()
    view = stack.job(running)
    assert (view["status"], view["attempts"]) == ("finished", 1)
    # The job that waited was not taken: it is still queued, never attempted.
    assert (stack.job(waiting)["status"], stack.job(waiting)["attempts"]) == ("queued", 0)
    assert stack.redis.lrange("rq:queue:demo_tasks", 0, -1) == [waiting.encode()]

    stack.processes.start_worker(stack.env, "successor")
    assert stack.wait_until_terminal(waiting, timeout=20)["result"]["result"] == 42


def test_a_job_outlasting_the_grace_period_goes_back_to_the_queue_uncounted(stack: Stack, tmp_path: Path) -> None:
    worker = only_worker(stack, "hasty", RUNNER_WORKER_GRACE_SECONDS=str(SHORT_GRACE_SECONDS))
    gate = tmp_path / "gate"
    job_id = stack.invoke("gated_retry", {"gate": str(gate)}).json()["id"]
    stack.wait_for(job_id, lambda view: view["progress"]["percent"] == 50)

    signalled = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(SHORT_GRACE_SECONDS + 10) == 0, worker.log_tail()
    took = time.monotonic() - signalled
    print(f"worker with a {SHORT_GRACE_SECONDS} s grace period exited {took:.1f} s after SIGTERM")
    assert SHORT_GRACE_SECONDS <= took < SHORT_GRACE_SECONDS + 3
    view = stack.job(job_id)
    assert (view["status"], view["attempts"]) == ("queued", 0)
    record = stack.store.get(job_id)
    assert record is not None and (record.status, record.attempts) == ("queued", 0)
    assert stack.redis.lrange("rq:queue:demo_tasks", 0, -1) == [job_id.encode()]
    assert int(stack.redis.hget(f"rq:job:{job_id}", "retries_left") or 0) == 1  # the retry was not spent

    stack.processes.start_worker(stack.env, "successor")
    stack.wait_for(job_id, lambda view: view["progress"]["percent"] == 50, timeout=20)
    gate.touch()
    view = stack.wait_until_terminal(job_id, timeout=20)
    assert (view["status"], view["attempts"], view["result"]) == ("finished", 1, {"attempt": 1})
