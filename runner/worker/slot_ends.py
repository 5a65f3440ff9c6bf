"""The ends of the jobs a work process runs at once (runner.worker.in_flight), sent by a thread of
their own so the main thread keeps claiming: the ends waiting at that moment go out as one script
call, each a fenced section built by the same methods as the end of a main-thread job.
"""

from __future__ import annotations

import logging
import queue as queues
import threading
from collections.abc import Callable
from typing import Any, Protocol

import redis
from redis.client import Pipeline
from rq.executions import Execution
from rq.job import Job, Retry
from rq.queue import Queue
from rq.utils import now

from runner.redis_connection import REDIS_ERRORS
from runner.rq_seam.scripts import execute_as_script, script_pipeline
from runner.rq_seam.worker import AfterSent
from runner.worker.flight_watch import STOPPED, FlyingJob

log = logging.getLogger(__name__)

# Ends sent in one script call at most.
MAX_ENDS_PER_CALL = 64
# What a job's code came to: its value (or a Retry), or the text of what it raised.
Outcome = tuple[Any, str | None]


class EndingWorker(Protocol):
    """What the ends need of the worker (runner.rq_seam.worker.SeamWorker)."""

    name: str
    connection: redis.Redis

    def queue_success_end(self, pipeline: Pipeline, job: Job, execution: Execution | None) -> AfterSent: ...

    def queue_failure_end(self, pipeline: Pipeline, job: Job, queue: Queue, execution: Execution | None,
                          exc_string: str, *, stopped: bool) -> AfterSent: ...

    def queue_retry_end(self, pipeline: Pipeline, job: Job, queue: Queue, execution: Execution | None,
                        retry: Any) -> AfterSent: ...


class EndSender:
    """A queue of ends, and the thread (`run`) that sends them."""

    def __init__(self, worker: EndingWorker, *, also: Callable[[Pipeline], None],
                 sent: Callable[[list[FlyingJob]], None], lock: threading.Lock) -> None:
        self.worker = worker
        self._also = also  # queues what goes with every batch (the worker's slots in use)
        self._lock = lock  # held while `also` is queued and sent
        self._sent = sent  # told which jobs' ends went out (or could not)
        self._ends: queues.SimpleQueue[tuple[FlyingJob, Outcome] | None] = queues.SimpleQueue()

    def put(self, flying: FlyingJob, outcome: Outcome) -> None:
        """End `flying` with `outcome`, soon."""
        self._ends.put((flying, outcome))

    def close(self) -> None:
        """End the thread once what is queued went out."""
        self._ends.put(None)

    def run(self) -> None:
        """The thread's loop: a batch of what waits, as one call."""
        while True:
            first = self._ends.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < MAX_ENDS_PER_CALL:
                try:
                    more = self._ends.get_nowait()
                except queues.Empty:
                    break
                if more is None:
                    self._ends.put(None)  # closed: after this batch
                    break
                batch.append(more)
            self._send(batch)

    def _send(self, batch: list[tuple[FlyingJob, Outcome]]) -> None:
        afters: list[AfterSent] = []
        guards: list[bool] = []
        try:
            with script_pipeline(self.worker.connection) as pipeline:
                for flying, outcome in batch:
                    afters.append(self._queue_end(pipeline, flying, outcome))
                with self._lock:
                    self._also(pipeline)
                    guards = execute_as_script(self.worker.connection, pipeline)
        except REDIS_ERRORS as exc:
            # The executions stay registered, no longer heartbeaten: peers retry them after their window.
            log.error("worker %s: could not end %d job(s), Redis is unavailable (%s): peers will recover them",
                      self.worker.name, len(batch), exc)
        self._sent([flying for flying, _outcome in batch])
        for after, held in zip(afters, guards, strict=False):
            try:
                after(held)
            except Exception:  # one job's listener must not keep the others' from running
                log.exception("worker %s: after the end of a job", self.worker.name)

    def _queue_end(self, pipeline: Pipeline, flying: FlyingJob, outcome: Outcome) -> AfterSent:
        job, worker = flying.job, self.worker
        job.ended_at = job.last_heartbeat = now()
        value, failure = outcome
        if failure is not None:
            return worker.queue_failure_end(pipeline, job, flying.queue, flying.execution, failure,
                                            stopped=flying.ending == STOPPED)
        if isinstance(value, Retry):
            return worker.queue_retry_end(pipeline, job, flying.queue, flying.execution, value)
        return worker.queue_success_end(pipeline, job, flying.execution)
