"""Reliability fixtures: the integration suite's real servers and stacks, and ways to kill what runs on them.

Stacks here register the reliability probes too (`hash_chain`, `gated_retry`), which only this
suite knows about. Workers are killed the way an OOM killer or a lost machine kills them:
SIGKILL to the worker, its scheduler and its work horse (which has a process group of its own).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import (  # noqa: F401  (fixtures, and the hook that attaches process logs)
    FUNCTIONS_PACKAGES,
    STACK_WORKERS,
    ManagedProcess,
    Stack,
    build_stack,
    postgres_server,
    pytest_runtest_makereport,
    redis_server,
    stack_factory,
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
    workers: int = STACK_WORKERS,
    **extra: str,
) -> Stack:
    """A running stack with the reliability probes."""
    return build_stack(backend, redis, directory, postgres, extra_env=reliability_env(**extra), workers=workers)


@pytest.fixture(scope="module")
def sqlite_stack_of(request: pytest.FixtureRequest) -> Callable[..., Stack]:
    """Build SQLite stacks with the probes (`workers=`, extra environment), one at a time as `stack_factory` does."""
    # Looked up by name: a parameter called `stack_factory` would shadow the import that registers the fixture here.
    factory: Callable[..., Stack] = request.getfixturevalue("stack_factory")

    def build(workers: int = STACK_WORKERS, **extra: str) -> Stack:
        return factory(extra_env=reliability_env(**extra), workers=workers)

    return build


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
    """The worker command that runs `job_id` (its RQ worker is the command's work process, a child of it)."""
    name = stack.redis.hget(f"rq:job:{job_id}", "worker_name")
    assert name, f"job {job_id} has no worker"
    pid = int(stack.redis.hget(f"rq:worker:{name.decode()}", "pid") or 0)
    matches = [process for process in stack.processes.processes
               if process.alive() and (process.pid == pid or pid in descendants(process.pid))]
    assert matches, f"no live worker process has pid {pid}"
    return matches[0]
