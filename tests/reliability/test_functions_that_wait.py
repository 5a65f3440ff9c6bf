"""Functions that wait: one worker runs many `async def` and `threads=True` jobs at once, and every
promise holds per job: timeouts, cancel, retries after a crash, a graceful stop, a blocked loop named.

Each test runs one real worker (`python -m runner worker`) with RUNNER_WORKER_SLOTS=16 against a
real Redis, over real HTTP.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from rq import Worker

from tests.integration.conftest import ManagedProcess, Stack, wait_until
from tests.reliability.conftest import kill_worker

SLOTS = 16
SHORT_GRACE_SECONDS = 3


@pytest.fixture(scope="module")
def stack(sqlite_stack_of: Callable[..., Stack]) -> Stack:
    """One stack for the module; each test replaces its worker with the one it needs."""
    return sqlite_stack_of(workers=1, RUNNER_WORKER_SLOTS=str(SLOTS))


def only_worker(stack: Stack, name: str, **env: str) -> ManagedProcess:
    """Stop every worker of the stack, then start one, and wait until it registered."""
    for process in stack.processes.processes:
        if process.name != "web" and process.alive():
            process.signal(signal.SIGTERM)
            assert process.wait(15) is not None, process.log_tail()
    worker = stack.processes.start_worker({**stack.env, **env}, name)
    wait_until(lambda: len(Worker.all(connection=stack.redis)) == 1, 20, f"{name} to register")
    return worker


def invoke_all(stack: Stack, function: str, payloads: list[dict]) -> list[str]:
    """Invoke `function` once per payload; the job ids."""
    ids = []
    for payload in payloads:
        response = stack.invoke(function, payload)
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    return ids


def wait_running(stack: Stack, job_ids: list[str], timeout: float = 20) -> None:
    """Wait until every job reported its 50 % (it runs, and waits at its gate)."""
    def all_running() -> bool:
        return all(stack.job(job_id)["progress"]["percent"] == 50 for job_id in job_ids)
    wait_until(all_running, timeout, f"{len(job_ids)} jobs to run at once")


@pytest.mark.parametrize("function", ["wait_async", "wait_thread"])
def test_sixteen_waiting_jobs_finish_in_about_the_time_of_one(stack: Stack, function: str) -> None:
    only_worker(stack, f"many-{function}")
    invoke_all(stack, function, [{"seconds": 0.01}])  # the first job of a process imports and starts its threads
    began = time.monotonic()
    ids = invoke_all(stack, function, [{"seconds": 1.0}] * SLOTS)
    views = [stack.wait_until_terminal(job_id, timeout=30) for job_id in ids]
    took = time.monotonic() - began
    assert [view["status"] for view in views] == ["finished"] * SLOTS
    assert all(view["result"]["waited"] >= 1.0 for view in views)
    print(f"{SLOTS} jobs of 1 s each ({function}) took {took:.2f} s in one worker")
    assert took < 2.5, f"{SLOTS} jobs waiting 1 s each took {took:.2f} s: they did not run at once"


@pytest.mark.parametrize("function", ["gated_async", "gated_thread"])
def test_cancel_stops_only_the_job_it_names(stack: Stack, tmp_path: Path, function: str) -> None:
    only_worker(stack, f"cancel-{function}")
    gate = tmp_path / "gate"
    ids = invoke_all(stack, function, [{"gate": str(gate), "tag": n} for n in range(4)])
    wait_running(stack, ids)

    response = stack.post(f"/jobs/{ids[1]}/cancel")
    assert response.status_code == 200, response.text
    stopped = stack.wait_until_terminal(ids[1], timeout=10)
    assert stopped["status"] == "stopped"
    assert stopped["error"]["type"] == "JobStopped"
    assert [stack.job(job_id)["status"] for job_id in ids if job_id != ids[1]] == ["started"] * 3

    gate.touch()
    for number, job_id in enumerate(ids):
        if job_id != ids[1]:
            view = stack.wait_until_terminal(job_id, timeout=10)
            assert (view["status"], view["result"]) == ("finished", {"tag": number})


@pytest.mark.parametrize("overstaying, waiting", [("overstay_async", "gated_async"),
                                                  ("overstay_thread", "gated_thread")])
def test_a_timeout_ends_that_job_alone(stack: Stack, tmp_path: Path, overstaying: str, waiting: str) -> None:
    only_worker(stack, f"timeout-{overstaying}")
    gate = tmp_path / "gate"
    others = invoke_all(stack, waiting, [{"gate": str(gate), "tag": n} for n in range(3)])
    wait_running(stack, others)
    late = invoke_all(stack, overstaying, [{"seconds": 30}])[0]

    view = stack.wait_until_terminal(late, timeout=10)
    assert view["status"] == "failed"
    assert view["error"]["type"] == "JobTimeoutException", view["error"]
    assert "timeout" in view["error"]["message"]
    assert [stack.job(job_id)["status"] for job_id in others] == ["started"] * 3

    gate.touch()
    assert [stack.wait_until_terminal(job_id, timeout=10)["status"] for job_id in others] == ["finished"] * 3


@pytest.mark.parametrize("function", ["gated_async", "gated_thread"])
def test_sigkill_with_eight_in_flight_retries_all_eight(stack: Stack, tmp_path: Path, function: str) -> None:
    worker = only_worker(stack, f"killed-{function}")
    gate = tmp_path / "gate"
    ids = invoke_all(stack, function, [{"gate": str(gate), "tag": n} for n in range(8)])
    wait_running(stack, ids)

    kill_worker(worker)
    gate.touch()
    stack.processes.start_worker(stack.env, f"successor-{function}")
    views = [stack.wait_until_terminal(job_id, timeout=60) for job_id in ids]
    assert [(view["status"], view["attempts"]) for view in views] == [("finished", 2)] * 8
    assert [view["result"]["tag"] for view in views] == list(range(8))


@pytest.mark.parametrize("function", ["gated_async", "gated_thread"])
def test_sigterm_lets_the_jobs_in_flight_finish_and_takes_no_new_one(stack: Stack, tmp_path: Path,
                                                                     function: str) -> None:
    worker = only_worker(stack, f"patient-{function}")
    gate = tmp_path / "gate"
    ids = invoke_all(stack, function, [{"gate": str(gate), "tag": n} for n in range(4)])
    wait_running(stack, ids)

    worker.signal(signal.SIGTERM)
    wait_until(lambda: any(w.shutdown_requested_date for w in Worker.all(connection=stack.redis)), 10,
               "the worker to begin its warm shutdown")
    queued = invoke_all(stack, "wait_async", [{"seconds": 0}])[0]
    gate.touch()
    assert worker.wait(15) == 0, worker.log_tail()
    assert [(stack.job(job_id)["status"], stack.job(job_id)["attempts"]) for job_id in ids] == [("finished", 1)] * 4
    assert stack.job(queued)["status"] == "queued"
    stack.processes.start_worker(stack.env, f"after-{function}")
    assert stack.wait_until_terminal(queued, timeout=20)["status"] == "finished"


@pytest.mark.parametrize("function", ["gated_async", "gated_thread"])
def test_jobs_in_flight_past_the_grace_period_go_back_uncounted(stack: Stack, tmp_path: Path, function: str) -> None:
    worker = only_worker(stack, f"hasty-{function}", RUNNER_WORKER_GRACE_SECONDS=str(SHORT_GRACE_SECONDS))
    gate = tmp_path / "gate"
    ids = invoke_all(stack, function, [{"gate": str(gate), "tag": n} for n in range(4)])
    wait_running(stack, ids)

    signalled = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(SHORT_GRACE_SECONDS + 10) == 0, worker.log_tail()
    took = time.monotonic() - signalled
    assert SHORT_GRACE_SECONDS <= took < SHORT_GRACE_SECONDS + 4, took
    assert [(stack.job(job_id)["status"], stack.job(job_id)["attempts"]) for job_id in ids] == [("queued", 0)] * 4

    gate.touch()
    stack.processes.start_worker(stack.env, f"after-{function}")
    views = [stack.wait_until_terminal(job_id, timeout=20) for job_id in ids]
    assert [(view["status"], view["attempts"]) for view in views] == [("finished", 1)] * 4


def test_a_coroutine_that_blocks_the_loop_is_named_in_the_log(stack: Stack, tmp_path: Path) -> None:
    worker = only_worker(stack, "blocked")
    gate = tmp_path / "gate"
    gate.touch()
    quick = invoke_all(stack, "wait_async", [{"seconds": 0.01}])[0]
    assert stack.wait_until_terminal(quick, timeout=20)["status"] == "finished"
    spinning = invoke_all(stack, "spin_async", [{"seconds": 1.5}])[0]
    assert stack.wait_until_terminal(spinning, timeout=20)["status"] == "finished"

    line = wait_until_logged(worker, rf"event loop blocked for [0-9.]+ s by job {spinning}")
    assert "spin_async" in line or "waiting.py" in line, line
    name = Worker.all(connection=stack.redis)[0].key
    wait_until(lambda: int(stack.redis.hget(name, "loop_blocked") or 0) >= 1, 10, "the blocking to be counted")


def wait_until_logged(worker: ManagedProcess, pattern: str) -> str:
    """The first line of the worker's log matching `pattern`, once there."""
    found: list[str] = []

    def logged() -> bool:
        lines = worker.log_path.read_text(errors="replace").splitlines()
        found[:] = [line for line in lines if re.search(pattern, line)]
        return bool(found)

    wait_until(logged, 10, f"a log line matching {pattern!r}")
    return found[0]


def test_a_concurrency_limit_holds_among_jobs_in_flight(stack: Stack, tmp_path: Path) -> None:
    only_worker(stack, "limited")
    gate = tmp_path / "gate"
    ids = invoke_all(stack, "limited_async", [{"gate": str(gate), "tag": n} for n in range(5)])
    wait_until(lambda: sum(stack.job(job_id)["progress"]["percent"] == 50 for job_id in ids) == 2, 20,
               "two of the limited jobs to run")
    # Sixteen slots free, yet the others wait for the function's own limit: put back, no attempt counted.
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        views = [stack.job(job_id) for job_id in ids]
        assert sum(view["progress"]["percent"] == 50 for view in views) == 2, views
        assert sum(view["attempts"] for view in views) == 2, views
        time.sleep(0.1)

    gate.touch()
    views = [stack.wait_until_terminal(job_id, timeout=30) for job_id in ids]
    assert [(view["status"], view["attempts"], view["result"]["tag"]) for view in views] == \
        [("finished", 1, n) for n in range(5)]
