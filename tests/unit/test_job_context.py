"""The job context (runner.authoring.context) seen from coroutines and threads: each sees its own job,
and the async forms do their I/O off the event loop."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest

import runner
from runner.authoring import context


@dataclass
class FakeJob:
    """A JobContext that records what its function asked, and in which thread."""

    job_id: str
    attempt: int = 1
    parents: dict[str, Any] = field(default_factory=dict)
    reports: list[tuple[int, str]] = field(default_factory=list)
    saved: dict[str, tuple[bytes, str | None]] = field(default_factory=dict)
    threads: set[int] = field(default_factory=set)  # the threads its I/O ran in

    def report_progress(self, percent: int, message: str) -> None:
        self.threads.add(threading.get_ident())
        self.reports.append((percent, message))

    def save_artifact(self, name: str, content: bytes, media_type: str | None) -> dict[str, Any]:
        self.threads.add(threading.get_ident())
        self.saved[name] = (content, media_type)
        return {"name": name, "size": len(content), "job": self.job_id}

    def parent_results(self) -> dict[str, Any]:
        self.threads.add(threading.get_ident())
        return self.parents


async def author_function(name: str, rounds: int, each_waits: asyncio.Event) -> dict[str, Any]:
    """What an `async def` function does: it reports, saves and reads, with waits in between."""
    seen: dict[str, Any] = {"attempt": runner.current_attempt(), "parents": await runner.aparent_results()}
    for step in range(rounds):
        await runner.aprogress(100 * (step + 1) / rounds, f"{name} step {step + 1}")
        await asyncio.sleep(0)  # the other job's task runs here
    await each_waits.wait()  # both jobs are in flight at once before either finishes
    runner.progress(100, f"{name} done")  # the sync form works from a coroutine too
    seen["artifact"] = await runner.asave_artifact(f"{name}.txt", f"made by {name}", "text/plain")
    return seen


def run_in_its_own_task(job: FakeJob, coroutine_function: Any, *args: Any) -> asyncio.Task[Any]:
    """A task that runs inside `job`'s context, as the worker starts each job's task."""

    async def inside() -> Any:
        with context.running(job):
            return await coroutine_function(*args)

    return asyncio.get_running_loop().create_task(inside())


def test_two_tasks_at_once_each_see_their_own_job() -> None:
    first = FakeJob("job-a", attempt=1, parents={"p1": 1})
    second = FakeJob("job-b", attempt=3, parents={"p2": 2})

    async def main() -> tuple[dict[str, Any], dict[str, Any], int]:
        both_started = asyncio.Event()
        tasks = [run_in_its_own_task(first, author_function, "a", 4, both_started),
                 run_in_its_own_task(second, author_function, "b", 2, both_started)]
        await asyncio.sleep(0.05)
        assert not any(task.done() for task in tasks)
        both_started.set()
        a, b = await asyncio.gather(*tasks)
        return a, b, threading.get_ident()

    a, b, loop_thread = asyncio.run(main())
    assert a == {"attempt": 1, "parents": {"p1": 1}, "artifact": {"name": "a.txt", "size": 9, "job": "job-a"}}
    assert b == {"attempt": 3, "parents": {"p2": 2}, "artifact": {"name": "b.txt", "size": 9, "job": "job-b"}}
    assert first.reports == [(25, "a step 1"), (50, "a step 2"), (75, "a step 3"), (100, "a step 4"),
                             (100, "a done")]
    assert second.reports == [(50, "b step 1"), (100, "b step 2"), (100, "b done")]
    assert first.saved == {"a.txt": (b"made by a", "text/plain")} and second.saved == {"b.txt": (b"made by b",
                                                                                                 "text/plain")}
    # The async forms ran their I/O in other threads; only the sync progress() call ran on the loop.
    assert first.threads - {loop_thread} and second.threads - {loop_thread}


def test_async_forms_never_hold_the_event_loop() -> None:
    """A slow store (Redis or a disk that takes 0.2 s) leaves the loop free for other tasks meanwhile."""
    release = threading.Event()

    class SlowJob(FakeJob):
        def report_progress(self, percent: int, message: str) -> None:
            release.wait(5)
            super().report_progress(percent, message)

    job = SlowJob("slow")

    async def main() -> int:
        with context.running(job):
            reporting = asyncio.get_running_loop().create_task(runner.aprogress(40, "slow write"))
        ticks = 0
        while ticks < 20:  # the loop keeps turning while the write waits
            await asyncio.sleep(0.005)
            ticks += 1
        assert not reporting.done()
        release.set()
        await reporting
        return ticks

    assert asyncio.run(main()) == 20
    assert job.reports == [(40, "slow write")]


def test_threads_each_see_their_own_job() -> None:
    jobs = [FakeJob(f"job-{n}", attempt=n + 1, parents={f"parent-{n}": n}) for n in range(8)]
    barrier = threading.Barrier(len(jobs))

    def body(job: FakeJob) -> tuple[int, dict[str, Any], dict[str, Any]]:
        with context.running(job):
            barrier.wait(5)  # every thread is inside its own job at once
            runner.progress(50, job.job_id)
            artifact = runner.save_artifact("out.bin", job.job_id.encode())
            return runner.current_attempt(), runner.parent_results(), artifact

    with ThreadPoolExecutor(len(jobs)) as pool:
        outcomes = list(pool.map(body, jobs))
    for number, (job, (attempt, parents, artifact)) in enumerate(zip(jobs, outcomes, strict=True)):
        assert (attempt, parents) == (number + 1, {f"parent-{number}": number})
        assert artifact == {"name": "out.bin", "size": len(job.job_id), "job": job.job_id}
        assert job.reports == [(50, job.job_id)]
        assert job.saved == {"out.bin": (job.job_id.encode(), None)}


def test_async_forms_are_bounded_like_the_sync_ones() -> None:
    job = FakeJob("bounds")

    async def main() -> None:
        with context.running(job):
            await runner.aprogress(250, "x" * 1000)
            await runner.aprogress(-3)

    asyncio.run(main())
    assert job.reports == [(100, "x" * context.MAX_MESSAGE_LENGTH), (0, "")]


def test_async_forms_outside_a_job() -> None:
    async def main() -> dict[str, Any]:
        await runner.aprogress(50, "nobody listens")  # does nothing, as progress() does
        assert runner.current_attempt() == 1
        return await runner.aparent_results()

    assert asyncio.run(main()) == {}
    with pytest.raises(RuntimeError, match="only called inside a job"):
        asyncio.run(runner.asave_artifact("x.txt", "data"))
