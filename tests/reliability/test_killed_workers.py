"""A worker SIGKILLed mid-job: within 30 s its job runs again per its retry policy, or fails with WorkerDied."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from rq import Worker

from tests.integration.conftest import Stack, wait_until
from tests.reliability.conftest import RECOVERY_PROMISE_SECONDS, descendants, kill_worker, worker_running

WORKERS = 3


def running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_a_killed_workers_jobs_are_retried_or_failed_within_30_s(
    sqlite_stack_of: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = sqlite_stack_of(workers=WORKERS)
    retry_gate, once_gate = tmp_path / "retry-gate", tmp_path / "once-gate"
    retried = stack.invoke("gated_retry", {"gate": str(retry_gate)}).json()["id"]  # retries=1
    failed = stack.invoke("gated_progress", {"gate": str(once_gate)}).json()["id"]  # no retries
    for job_id in (retried, failed):
        stack.wait_for(job_id, lambda view: view["progress"]["percent"] == 50, timeout=20)
    victims = [worker_running(stack, retried), worker_running(stack, failed)]
    assert victims[0] is not victims[1]

    # One loses only its main process (as to the OOM killer): its horse and scheduler must go with it.
    orphans = descendants(victims[0].pid)
    assert len(orphans) >= 1
    killed_at = time.monotonic()
    os.kill(victims[0].pid, signal.SIGKILL)
    kill_worker(victims[1])
    assert victims[0].wait(10) is not None
    wait_until(lambda: not any(running(pid) for pid in orphans), 5, "the killed worker's horse and scheduler to die")
    # The surviving worker recovers both: one starts its second attempt, the other fails.
    rerun_after = wait_until(lambda: stack.job(retried)["attempts"] == 2, 45, "the killed job's second attempt")
    failed_after = time.monotonic() - killed_at + wait_until(
        lambda: stack.job(failed)["status"] == "failed", 45, "the killed job without retries to fail"
    )
    print(f"recovered {rerun_after:.1f} s (retry) and {failed_after:.1f} s (failure) after SIGKILL")
    assert rerun_after < RECOVERY_PROMISE_SECONDS
    assert failed_after < RECOVERY_PROMISE_SECONDS

    error = {"type": "WorkerDied", "message": "The worker running this job died (attempt 1 of 1)."}
    view = stack.job(failed)
    assert (view["status"], view["attempts"], view["error"]) == ("failed", 1, error)
    record = stack.store.get(failed)
    assert record is not None and (record.status, record.attempts, record.error) == ("failed", 1, error)

    retry_gate.touch()
    view = stack.wait_until_terminal(retried, timeout=20)
    assert (view["status"], view["attempts"], view["result"]) == ("finished", 2, {"attempt": 2})
    record = stack.store.get(retried)
    assert record is not None and (record.status, record.attempts) == ("finished", 2)
    # Dead workers are unregistered too, so dashboards and /metrics count only the live one.
    wait_until(lambda: len(Worker.all(connection=stack.redis)) == WORKERS - 2, 20, "dead workers to be unregistered")
