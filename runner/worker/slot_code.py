"""Where the code of a job in a slot runs (runner.worker.in_flight): on the work process's event loop
(`async def`) or in its thread pool (`threads=True`). Whatever the code does, its outcome, a value or
the text of what it raised, goes to `returned`.
"""

from __future__ import annotations

import asyncio
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rq.job import Job

from runner.rq_seam.bookkeeping import RunnerJob
from runner.worker.event_loop import LoopThread
from runner.worker.execution import run_invocation_async
from runner.worker.flight_watch import STOPPED, FlyingJob, raise_in_thread
from runner.worker.slot_ends import Outcome


class SlotCode:
    """The event loop and the thread pool of one work process, made on first use."""

    def __init__(self, capacity: int, *, handle_exception: Callable[..., None],
                 returned: Callable[[FlyingJob, Outcome], None]) -> None:
        self.capacity = capacity
        self._handle_exception = handle_exception  # the worker's: logs and RQ's exception handlers
        self._returned = returned
        self.loop: LoopThread | None = None
        self._pool: ThreadPoolExecutor | None = None

    @property
    def made(self) -> bool:
        """Whether the loop and the pool run (the first job in a slot made them)."""
        return self._pool is not None

    def make(self) -> None:
        """Start the loop and the pool, once."""
        if self._pool is None:
            self.loop = LoopThread("runner-event-loop")
            self._pool = ThreadPoolExecutor(self.capacity, thread_name_prefix="runner-slot")

    def run(self, flying: FlyingJob, timeout: float | None) -> None:
        """Run the code of `flying`, bounded by `timeout`: on the loop, or in a thread of the pool."""
        if flying.on_loop:
            assert self.loop is not None
            self.loop.start_task(flying.job.id, self._run_on_loop(flying, timeout))
        else:
            assert self._pool is not None
            self._pool.submit(self._run_in_thread, flying)

    def close(self) -> None:
        """End the loop and the pool (a stopping worker's last step)."""
        if self.loop is not None:
            self.loop.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def _run_on_loop(self, flying: FlyingJob, timeout: float | None) -> None:
        job = flying.job
        assert isinstance(job, RunnerJob)
        try:
            outcome: Outcome = (await job.perform_async(
                lambda running: run_invocation_async(running, asyncio.timeout(timeout),
                                                     lambda: flying.ending == STOPPED)), None)
        except BaseException as exc:  # noqa: BLE001 (every outcome is the job's, the loop goes on)
            outcome = (None, self.failed(job, exc))
        self._returned(flying, outcome)

    def _run_in_thread(self, flying: FlyingJob) -> None:
        job = flying.job
        outcome: Outcome = (None, "the job's thread ended without an outcome")
        try:
            with flying.lock:
                flying.thread_id = threading.get_ident()
            outcome = (job.perform(), None)
        except BaseException as exc:  # noqa: BLE001 (every outcome is the job's, the pool goes on)
            outcome = (None, self.failed(job, exc))
        finally:
            with flying.lock:
                flying.thread_id = None
                raise_in_thread(threading.get_ident(), None)  # one asked for too late must not hit the next job
            self._returned(flying, outcome)

    def failed(self, job: Job, exc: BaseException) -> str:
        """Report what `job` raised as the worker does; its traceback as text."""
        exc_info: tuple[Any, ...] = (type(exc), exc, exc.__traceback__)
        self._handle_exception(job, *exc_info)
        return "".join(traceback.format_exception(*exc_info))
