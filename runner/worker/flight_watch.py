"""The watch over the jobs a work process runs at once (runner.worker.in_flight), from a thread.

Every tick it ends what must end (a threaded job past its timeout, a stop), settles a job whose
code ignored its end (a loop blocked by CPU work, a thread stuck in C), measures the event loop's
lag, and heartbeats every execution in flight so peers judge each by its own silence.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.timeouts import JobTimeoutException
from rq.utils import now
from rq.worker import WorkerStatus

from runner.errors import JobStopped
from runner.redis_connection import REDIS_ERRORS
from runner.rq_seam.keys import (
    WORKER_CURRENT_JOB_FIELD,
    WORKER_LOOP_BLOCKED_FIELD,
    WORKER_LOOP_LAG_FIELD,
    WORKER_SLOTS_BUSY_FIELD,
    WORKER_STATE_FIELD,
)
from runner.worker.event_loop import LoopThread

log = logging.getLogger(__name__)

WATCH_TICK_SECONDS = 0.1
# A job asked to end (timeout, stop) whose code has not returned this long after is settled anyway.
ABANDON_AFTER_SECONDS = 2.0
STOPPED, TIMED_OUT = "stopped", "timed out"


@dataclass
class FlyingJob:
    """A job in flight: started, its code running on the loop or in a thread."""

    job: Job
    queue: Queue
    execution: Execution
    on_loop: bool
    deadline: float  # monotonic; inf without a timeout
    began: float = field(default_factory=time.monotonic)
    # Why its end was asked for (STOPPED, TIMED_OUT), and when.
    ending: str | None = None
    ending_since: float = 0.0
    thread_id: int | None = None
    code_running: bool = True  # its slot is taken until its code returns
    settled: bool = False  # its end is queued (by its code's return, or given up on)
    lock: threading.Lock = field(default_factory=threading.Lock)


class WatchedWorker(Protocol):
    """What the watch needs of the worker."""

    name: str
    connection: redis.Redis

    @property
    def key(self) -> str: ...

    @property
    def heartbeat_seconds(self) -> float: ...

    def get_heartbeat_ttl(self, job: Job) -> int: ...


class Flights(Protocol):
    """What the watch needs of runner.worker.in_flight.InFlight."""

    @property
    def loop(self) -> LoopThread | None: ...

    @property
    def busy(self) -> int: ...

    @property
    def hash_writes(self) -> threading.Lock: ...

    def flying(self) -> list[FlyingJob]: ...

    def find(self, job_id: str) -> FlyingJob | None: ...

    def give_up(self, flying: FlyingJob, error: BaseException) -> bool: ...

    def return_waiting(self, longer_than: float | None = ..., reason: str = ...) -> None: ...


class FlightWatch:
    """Deadlines, stops, give-ups, heartbeats and the loop's lag of the jobs in flight."""

    def __init__(self, worker: WatchedWorker, flights: Flights) -> None:
        self.worker = worker
        self.flights = flights
        self._next_heartbeat = 0.0
        self._blocked_written = 0
        self._closed = threading.Event()

    def close(self) -> None:
        """End the watch thread at its next tick."""
        self._closed.set()

    def run(self) -> None:
        """The watch thread's loop, until `close`."""
        while not self._closed.wait(WATCH_TICK_SECONDS):
            try:
                self.look()
            except Exception:  # the jobs go on; the next tick tries again
                log.exception("worker %s: watching the jobs in flight failed", self.worker.name)

    def look(self) -> None:
        """One tick."""
        loop = self.flights.loop
        if loop is not None:
            loop.check_lag()
        moment = time.monotonic()
        flying_now = self.flights.flying()
        for flying in flying_now:
            if flying.ending is None and moment >= flying.deadline and not flying.on_loop:
                self.ask_to_end(flying.job.id, TIMED_OUT)  # a coroutine's own timeout fires on the loop
            elif flying.ending is None and moment >= flying.deadline + ABANDON_AFTER_SECONDS:
                self.ask_to_end(flying.job.id, TIMED_OUT)  # its loop is blocked: its timeout cannot fire
            elif flying.ending and not flying.settled and moment - flying.ending_since >= ABANDON_AFTER_SECONDS:
                self._give_up_on(flying)
        self.flights.return_waiting()  # those that waited on deck too long
        blocked = loop.blocked_count if loop is not None else 0
        if (moment >= self._next_heartbeat and flying_now) or blocked != self._blocked_written:
            self._next_heartbeat = moment + self.worker.heartbeat_seconds
            self._heartbeat(flying_now, loop)

    def ask_to_end(self, job_id: str, why: str) -> bool:
        """End the job `job_id` in flight (STOPPED, TIMED_OUT); whether it was in flight here."""
        flying = self.flights.find(job_id)
        if flying is None or flying.settled:
            return False
        flying.ending, flying.ending_since = flying.ending or why, time.monotonic()
        log.info("worker %s: job %s %s; ending it", self.worker.name, job_id, why)
        loop = self.flights.loop
        if flying.on_loop and loop is not None:
            loop.cancel(job_id)
            return True
        exception = JobStopped if why == STOPPED else timeout_exception(flying.job.timeout)
        with flying.lock:
            if flying.thread_id is not None:
                raise_in_thread(flying.thread_id, exception)
        return True

    def _give_up_on(self, flying: FlyingJob) -> None:
        why = flying.ending or TIMED_OUT
        error = JobStopped() if why == STOPPED \
            else timeout_exception(flying.job.timeout)()
        if self.flights.give_up(flying, error):
            log.error("worker %s: job %s did not end %g s after it %s; settled without it (its code holds a slot "
                      "until it returns)", self.worker.name, flying.job.id, ABANDON_AFTER_SECONDS, why)

    def _heartbeat(self, flying_now: list[FlyingJob], loop: LoopThread | None) -> None:
        worker = self.worker
        lag = loop.take_worst_lag() if loop is not None else 0.0
        blocked = loop.blocked_count if loop is not None else 0
        try:
            with worker.connection.pipeline(transaction=False) as pipeline, self.flights.hash_writes:
                for flying in flying_now:
                    ttl = worker.get_heartbeat_ttl(flying.job)
                    flying.execution.heartbeat(flying.job.started_job_registry, ttl, pipeline=pipeline)
                    flying.job.heartbeat(now(), ttl, pipeline=pipeline, xx=True)
                busy = self.flights.busy
                fields: dict[str, str | int | float] = {WORKER_SLOTS_BUSY_FIELD: busy,
                                                        WORKER_LOOP_LAG_FIELD: round(lag, 4),
                                                        WORKER_LOOP_BLOCKED_FIELD: blocked}
                running = [flying.job.id for flying in flying_now if flying.code_running]
                if busy and running:
                    # Busy again, should an end that said idle have landed after a start (they go in two threads).
                    fields.update({WORKER_STATE_FIELD: WorkerStatus.BUSY.value, WORKER_CURRENT_JOB_FIELD: running[-1]})
                pipeline.hset(worker.key, mapping=fields)  # type: ignore[arg-type]
                pipeline.execute()
            self._blocked_written = blocked
        except REDIS_ERRORS as exc:  # tried again next interval; the loop that takes jobs says Redis is away
            log.debug("worker %s: heartbeat of the jobs in flight not sent (%s)", worker.name, exc)


def timeout_exception(seconds: float | None) -> type[JobTimeoutException]:
    """RQ's timeout exception with its message, as a type (an exception raised in another thread is a type)."""

    class TimedOut(JobTimeoutException):
        def __init__(self, *_args: Any) -> None:
            super().__init__(f"Task exceeded maximum timeout value ({seconds} seconds)")

    TimedOut.__name__ = TimedOut.__qualname__ = JobTimeoutException.__name__
    return TimedOut


def raise_in_thread(thread_id: int, exception: type[BaseException] | None) -> None:
    """Raise `exception` in the thread `thread_id` at its next Python instruction (None: take back a pending one)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                               ctypes.py_object(exception) if exception is not None else None)
