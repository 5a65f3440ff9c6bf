"""Jobs run in a long-lived work process; one that kills or hangs that process is contained by its parent.

The worker command's parent process restarts its work process, settles the job it held at
once (no waiting for heartbeats to fall silent), and the worker goes on taking jobs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from tests.integration.conftest import Stack, wait_until

WORKERS = 1
# The hung job's timeout (1 s), the supervisor's margin past it (10 s), and time to notice and settle.
HANG_SETTLED_WITHIN = 20.0
CRASH_SETTLED_WITHIN = 5.0


def test_a_job_that_ends_its_process_is_retried_at_once_and_the_worker_goes_on(
    sqlite_stack_of: Callable[..., Stack],
) -> None:
    stack = sqlite_stack_of(workers=WORKERS)
    worker = next(process for process in stack.processes.processes if process.name.startswith("worker"))
    job_id = stack.invoke("crash_first_attempt", {}).json()["id"]
    settled_after = wait_until(lambda: stack.job(job_id)["status"] == "finished", CRASH_SETTLED_WITHIN,
                               "the crashed job's second attempt to finish")
    print(f"crashed job finished on its retry {settled_after:.2f} s after it was invoked")
    view = stack.job(job_id)
    assert (view["attempts"], view["result"]) == (2, {"attempt": 2})
    assert worker.alive()
    record = stack.wait_for_row(job_id, lambda row: row.status == "finished")
    assert record.attempts == 2
    # The same worker command, with a fresh work process, takes the next job.
    after = stack.invoke("simple_calculation", {"expression": "6*7"}).json()["id"]
    assert stack.wait_until_terminal(after)["result"]["result"] == 42


def test_a_job_stuck_past_its_timeout_is_killed_and_failed(sqlite_stack_of: Callable[..., Stack]) -> None:
    stack = sqlite_stack_of(workers=WORKERS)
    worker = next(process for process in stack.processes.processes if process.name.startswith("worker"))
    job_id = stack.invoke("hang_past_timeout", {"seconds": 60}).json()["id"]
    settled_after = wait_until(lambda: stack.job(job_id)["status"] == "failed", HANG_SETTLED_WITHIN,
                               "the stuck job to be killed and failed")
    print(f"stuck job (timeout 1 s) failed {settled_after:.1f} s after it was invoked")
    view = stack.job(job_id)
    assert view["error"]["type"] == "WorkerDied"
    assert view["attempts"] == 1
    assert worker.alive()
    assert stack.wait_for_row(job_id, lambda row: row.status == "failed").error["type"] == "WorkerDied"
    after = stack.invoke("simple_calculation", {"expression": "2+2"}).json()["id"]
    assert stack.wait_until_terminal(after)["result"]["result"] == 4


def test_a_long_job_keeps_heartbeating_and_is_never_taken_for_dead(
    sqlite_stack_of: Callable[..., Stack], tmp_path: Path
) -> None:
    # Peers judge silence after 3 s: a job running three times that long must still be its first attempt.
    stack = sqlite_stack_of(workers=2, RUNNER_WORKER_DEAD_AFTER_SECONDS="3")
    gate = tmp_path / "gate"
    job_id = stack.invoke("gated_retry", {"gate": str(gate)}).json()["id"]
    stack.wait_for(job_id, lambda view: view["progress"]["percent"] == 50)
    execution = next(iter(stack.redis.zrange("rq:wip:demo_tasks", 0, -1))).decode().split(":", 1)[1]
    key = f"rq:execution:{job_id}:{execution}"
    beats = [stack.redis.hget(key, "last_heartbeat")]
    started = time.monotonic()
    while time.monotonic() - started < 9:  # three silence windows
        wait_until(lambda: stack.redis.hget(key, "last_heartbeat") != beats[-1], 3, "the next heartbeat")
        beats.append(stack.redis.hget(key, "last_heartbeat"))
    view = stack.job(job_id)
    assert (view["status"], view["attempts"]) == ("started", 1), view
    gate.touch()
    view = stack.wait_until_terminal(job_id)
    assert (view["status"], view["attempts"], view["result"]) == ("finished", 1, {"attempt": 1})
