"""Jobs of `async def` and `threads=True` functions: up to RUNNER_WORKER_SLOTS at once in one work process.

The main thread stays RQ's loop: it claims and starts each job (one script call, as for any job)
and hands its code to the event loop (runner.worker.event_loop) or to a thread pool, then goes on
claiming while slots are free. Only the code runs elsewhere; each promise still holds per job:
- its end (success, retry, failure, stop) is one fenced script call, sent by an ender thread, the
  ends of the moment batched in one call;
- its timeout fires for it alone: the loop's own timeout for a coroutine, an exception raised in
  its thread for a threaded job; a job that ignores it (a loop blocked by CPU work, a thread stuck
  in C) is settled anyway after ABANDON_AFTER_SECONDS, and its slot stays taken until its code returns;
- `POST /jobs/<id>/cancel` stops it alone (the stop-job command names it);
- a watch thread heartbeats every execution in flight, so peers judge each by its own silence;
- SIGTERM: no new job; those in flight may end within the grace period, the rest go back to their
  queues uncounted (`drain`); a crash of the process settles all of them through the supervisor.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from redis.client import Pipeline
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.utils import now

from runner.redis_connection import REDIS_ERRORS
from runner.rq_seam.bookkeeping import RunnerJob
from runner.rq_seam.keys import WORKER_SLOTS_BUSY_FIELD
from runner.worker.environment import current_environment
from runner.worker.event_loop import LoopThread
from runner.worker.execution import error_info, run_invocation_async
from runner.worker.flight_watch import STOPPED, FlightWatch, FlyingJob, raise_in_thread
from runner.worker.recovery import WORKER_STOPPED_REASON, StartedEntry, recover_entry
from runner.worker.slot_ends import EndingWorker, EndSender, Outcome

log = logging.getLogger(__name__)

# How many recent jobs the typical duration of a job follows.
TYPICAL_OF_JOBS = 16
# How long a stopping worker waits for the ends already queued to be sent.
ENDS_SENT_WAIT_SECONDS = 5.0


class SlotWorker(EndingWorker, Protocol):
    """What InFlight needs of its worker (runner.worker.runner_worker.RunnerWorker)."""

    execution: Execution | None
    log: logging.Logger

    @property
    def key(self) -> str: ...

    @property
    def heartbeat_seconds(self) -> float: ...

    def prepare_executions(self, jobs: list[Job]) -> list[Execution | None]: ...

    def get_heartbeat_ttl(self, job: Job) -> int: ...

    def handle_exception(self, job: Job, *exc_info: Any) -> None: ...


class InFlight:
    """The jobs this work process runs many at once, and the threads that run and end them."""

    def __init__(self, worker: SlotWorker, capacity: int) -> None:
        self.worker = worker
        self.capacity = max(1, capacity)
        self._jobs: dict[str, FlyingJob] = {}
        self._changed = threading.Condition()
        self.ends = EndSender(worker, also=self.slots_busy_now, sent=self._ends_sent)
        self._loop: LoopThread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self.watch = FlightWatch(worker, self)
        self._typical_seconds = float("inf")

    @property
    def loop(self) -> LoopThread | None:
        """The event loop of async jobs, once the first job in a slot started."""
        return self._loop

    def flying(self) -> list[FlyingJob]:
        """The jobs in flight now."""
        return list(self._jobs.values())

    def find(self, job_id: str) -> FlyingJob | None:
        """The job `job_id` if it is in flight here."""
        return self._jobs.get(job_id)

    def give_up(self, flying: FlyingJob, error: BaseException) -> bool:
        """Settle `flying` with `error` though its code still runs (it ignored its end); whether it was unsettled."""
        with self._changed:
            if flying.settled:
                return False
            flying.settled = True
        flying.job.meta["error"] = error_info(error)
        self.ends.put(flying, (None, f"{type(error).__name__}: {error}"))
        return True

    @property
    def busy(self) -> int:
        """Slots taken: jobs whose code has not returned yet."""
        return sum(1 for flying in list(self._jobs.values()) if flying.code_running)

    @property
    def next_slot_seconds(self) -> float:
        """About how soon one of the slots frees, from the durations of recent jobs."""
        return self._typical_seconds / self.capacity

    @property
    def free(self) -> int:
        """Slots free for the next job."""
        return self.capacity - self.busy

    def wait_for_slot(self, timeout: float) -> bool:
        """Wait up to `timeout` for a free slot; whether one is free."""
        with self._changed:
            return self._changed.wait_for(lambda: self.free > 0, timeout)

    # The main thread

    def start(self, jobs: list[tuple[Job, Queue]]) -> list[Job]:
        """Start `jobs` (claimed, at most `free`) in one script call and run their code in slots; the jobs
        canceled since they were claimed, not started."""
        for ordinal, (job, _queue) in enumerate(jobs, start=1):
            job.in_slot = ordinal  # type: ignore[attr-defined]  # its place among the slots taken (RunnerWorker.begin)
        executions = self.worker.prepare_executions([job for job, _queue in jobs])
        started_at = now()
        self._ensure_threads()
        canceled = []
        for (job, queue), execution in zip(jobs, executions, strict=True):
            if execution is None:
                canceled.append(job)
                continue
            assert isinstance(job, RunnerJob)
            job.started_at = started_at
            timeout = job.timeout if job.timeout and job.timeout > 0 else None
            on_loop = current_environment().registry.get(str(job.args[0])).is_async
            flying = FlyingJob(job, queue, execution, on_loop, time.monotonic() + timeout if timeout else float("inf"))
            with self._changed:
                self._jobs[job.id] = flying
            if on_loop:
                assert self._loop is not None
                self._loop.start_task(job.id, self._run_on_loop(flying, timeout))
            else:
                assert self._pool is not None
                self._pool.submit(self._run_in_thread, flying)
        return canceled

    def _ensure_threads(self) -> None:
        if self._pool is not None:
            return
        self._loop = LoopThread("runner-event-loop")
        self._pool = ThreadPoolExecutor(self.capacity, thread_name_prefix="runner-slot")
        for target, name in ((self.ends.run, "runner-slot-ends"), (self.watch.run, "runner-slot-watch")):
            threading.Thread(target=target, name=name, daemon=True).start()

    def stop(self, job_id: str) -> bool:
        """The stop-job command named `job_id`: stop it if it is in flight here (whether it was)."""
        return self.watch.ask_to_end(job_id, STOPPED)

    def slots_busy_now(self, pipeline: Pipeline) -> None:
        """Queue the count of jobs in flight into the worker's hash."""
        pipeline.hset(self.worker.key, WORKER_SLOTS_BUSY_FIELD, self.busy)

    # Where the code runs

    async def _run_on_loop(self, flying: FlyingJob, timeout: float | None) -> None:
        job = flying.job
        assert isinstance(job, RunnerJob)
        try:
            outcome: Outcome = (await job.perform_async(
                lambda running: run_invocation_async(running, asyncio.timeout(timeout),
                                                     lambda: flying.ending == STOPPED)), None)
        except BaseException as exc:  # noqa: BLE001 (every outcome is the job's, the loop goes on)
            outcome = (None, self._failed(job, exc))
        self._code_returned(flying, outcome)

    def _run_in_thread(self, flying: FlyingJob) -> None:
        job = flying.job
        outcome: Outcome = (None, "the job's thread ended without an outcome")
        try:
            with flying.lock:
                flying.thread_id = threading.get_ident()
            outcome = (job.perform(), None)
        except BaseException as exc:  # noqa: BLE001 (every outcome is the job's, the pool goes on)
            outcome = (None, self._failed(job, exc))
        finally:
            with flying.lock:
                flying.thread_id = None
                raise_in_thread(threading.get_ident(), None)  # one asked for too late must not hit the next job
            self._code_returned(flying, outcome)

    def _failed(self, job: Job, exc: BaseException) -> str:
        exc_info = (type(exc), exc, exc.__traceback__)
        self.worker.handle_exception(job, *exc_info)
        return "".join(traceback.format_exception(*exc_info))

    def _code_returned(self, flying: FlyingJob, outcome: Outcome) -> None:
        # A moving average: recent jobs say how soon a slot frees (`next_slot_seconds`).
        took = time.monotonic() - flying.began
        typical = self._typical_seconds
        self._typical_seconds = took if typical == float("inf") else typical + (took - typical) / TYPICAL_OF_JOBS
        with self._changed:
            flying.code_running = False
            first = not flying.settled
            flying.settled = True
            if not first:
                self._jobs.pop(flying.job.id, None)  # its end was sent already: the slot is free
            self._changed.notify_all()
        if first:
            self.ends.put(flying, outcome)

    def _ends_sent(self, jobs: list[FlyingJob]) -> None:
        with self._changed:
            for flying in jobs:
                if not flying.code_running:
                    self._jobs.pop(flying.job.id, None)
            self._changed.notify_all()

    # Stopping

    def drain(self, until: float | None) -> None:
        """Let the jobs in flight end until `until` (monotonic; None: no limit), then put back the rest on
        their queues uncounted; returns once every end is sent."""
        with self._changed:
            self._changed.wait_for(lambda: not self._unsettled() or (until is not None and time.monotonic() >= until),
                                   None if until is None else max(0.0, until - time.monotonic()))
        self.put_back_all()

    def put_back_all(self) -> None:
        """Put every job in flight back on its queue, uncounted (a stop past its grace period)."""
        for flying in self._unsettled():
            with self._changed:
                if flying.settled:
                    continue
                flying.settled = True
            self.worker.log.warning("Worker %s: stopping: job %s goes back to its queue", self.worker.name,
                                    flying.job.id)
            try:
                recover_entry(self.worker.connection, StartedEntry(flying.job.origin, flying.job.id,
                                                                   flying.execution.id),
                              reason=WORKER_STOPPED_REASON, count_attempt=False)
            except REDIS_ERRORS as exc:
                log.error("job %s could not be requeued (%s): peers will recover it", flying.job.id, exc)
        with self._changed:  # a job in flight whose code returned has its end queued: sent before we go
            self._changed.wait_for(lambda: all(flying.code_running for flying in self._jobs.values()),
                                   ENDS_SENT_WAIT_SECONDS)

    def close(self) -> None:
        """After `drain`: end the loop, the pool, the ender and the watch (a stopping worker's last step)."""
        if self._pool is None:
            return
        self.watch.close()
        self.ends.close()
        if self._loop is not None:
            self._loop.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _unsettled(self) -> list[FlyingJob]:
        return [flying for flying in list(self._jobs.values()) if not flying.settled]
