"""Reliability fixtures: the integration suite's real servers and stacks, and ways to kill what runs on them.

Stacks here register the reliability probes too (`hash_chain`, `gated_retry`), which only this
suite knows about. Workers are killed the way an OOM killer or a lost machine kills them:
SIGKILL to the worker, its scheduler and its work horse (which has a process group of its own).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import (  # noqa: F401  (fixtures, and the hook that attaches process logs)
    FUNCTIONS_PACKAGES,
    ManagedProcess,
    Stack,
    build_stack,
    postgres_server,
    pytest_runtest_makereport,
    redis_server,
)
from tests.servers import PostgresServer, RedisServer

PROBE_PACKAGES = f"{FUNCTIONS_PACKAGES},tests.reliability.probe_functions"
RECOVERY_PROMISE_SECONDS = 30.0


def reliability_env(**extra: str) -> dict[str, str]:
    """Environment for a reliability stack: the probes registered, plus `extra`."""
    return {"RUNNER_FUNCTIONS_PACKAGE": PROBE_PACKAGES, **extra}


def start_stack(
    backend: str,
    redis: RedisServer,
    directory: Path,
    postgres: PostgresServer | None = None,
    workers: int = 2,
    **extra: str,
) -> Stack:
    """A running stack with the reliability probes."""
    return build_stack(backend, redis, directory, postgres, extra_env=reliability_env(**extra), workers=workers)


@pytest.fixture(scope="module")
def sqlite_stack_of(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Stack]]:
    """Build SQLite stacks with the probes (`workers=`, extra environment); all stopped with the module.

    They share the session's Redis (each new one flushes it): use one at a time.
    """
    server: RedisServer = request.getfixturevalue("redis_server")
    started: list[Stack] = []

    def build(workers: int = 2, **extra: str) -> Stack:
        stack = start_stack("sqlite", server, tmp_path_factory.mktemp("reliability"), workers=workers, **extra)
        started.append(stack)
        return stack

    yield build
    for stack in started:
        stack.stop()


def descendants(root: int) -> list[int]:
    """Every process below `root`, from /proc (a work horse is a child in a process group of its own)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    pending = [root]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def kill_worker(process: ManagedProcess) -> None:
    """SIGKILL a worker, its scheduler and its work horse, as a lost machine would."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGSTOP)  # frozen, it forks no new horse while we look
    for pid in descendants(process.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    assert process.wait(10) is not None, f"{process.name} survived SIGKILL"


def worker_running(stack: Stack, job_id: str) -> ManagedProcess:
    """The worker process that runs `job_id` (by the pid its RQ worker registered)."""
    name = stack.redis.hget(f"rq:job:{job_id}", "worker_name")
    assert name, f"job {job_id} has no worker"
    pid = int(stack.redis.hget(f"rq:worker:{name.decode()}", "pid") or 0)
    matches = [process for process in stack.processes.processes if process.pid == pid and process.alive()]
    assert matches, f"no live worker process has pid {pid}"
    return matches[0]


def poll(condition: Any, timeout: float, what: str, interval: float = 0.1) -> float:
    """Wait until `condition()` is truthy; return how long it took; fail naming `what` on timeout."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - started
