"""Jobs run in the worker's own long-lived process, one after another: no fork per job.

Functions are imported once, connections are kept, and nothing is copied per job. What a
forking worker got from its parent, this one gets otherwise:
- a watch thread heartbeats the running job, takes the recovery duty peers count on, and
  enforces the graceful-stop grace period;
- a stop command interrupts the job in the main thread, where it runs (a signal to itself);
- a job that hangs the whole process (stuck in C code past its timeout), or kills it, is
  contained by the process above (runner.worker.process_supervisor): it reads the deadline this
  worker publishes for the running job, kills the process past it, settles the job and starts a
  fresh process.
"""

from __future__ import annotations

import logging
import signal
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, Protocol

import redis
from rq.executions import Execution
from rq.job import Job

from runner.errors import JobStopped
from runner.redis_connection import REDIS_ERRORS
from runner.worker.recovery import WORKER_STOPPED_REASON, StartedEntry, recover_entry

log = logging.getLogger(__name__)

# Signal the stop-job command uses to interrupt the job running in the main thread.
STOP_JOB_SIGNAL = signal.SIGUSR1
# How often the watch thread looks at the running job (heartbeats, grace period, recovery duty).
MONITOR_TICK_SECONDS = 1
# The supervisor kills a process whose job is this far past its timeout (RQ's alarm fires first).
HARD_TIMEOUT_MARGIN_SECONDS = 10.0
DEADLINE_FORMAT = "d"


class DeadlineSlot:
    """A few bytes shared with the supervising process: when the running job must be over (0: none)."""

    def __init__(self, memory: Any) -> None:
        self.memory = memory

    def publish(self, deadline: float) -> None:
        """Say the running job must be over by `deadline` (epoch seconds), or 0 when idle."""
        self.memory[0:8] = struct.pack(DEADLINE_FORMAT, deadline)

    def read(self) -> float:
        """The published deadline (0 when none)."""
        return float(struct.unpack(DEADLINE_FORMAT, bytes(self.memory[0:8]))[0])


class WatchedWorker(Protocol):
    """What a JobWatch needs of its worker (runner.worker.runner_worker.RunnerWorker)."""

    name: str
    connection: redis.Redis
    execution: Execution | None
    grace_seconds: float
    log: logging.Logger
    queue_class: Any

    @property
    def stopped_job_id(self) -> str | None: ...

    def maintain_heartbeats(self, job: Job) -> None: ...

    def exit_now(self) -> None: ...


class JobWatch:
    """Stands in for a forking worker's parent: watches the job this process runs, from a thread."""

    def __init__(self, worker: WatchedWorker) -> None:
        self.worker = worker
        self.job: Job | None = None
        self.deadline_slot: DeadlineSlot | None = None
        self._grace_deadline: float | None = None
        self._thread: threading.Thread | None = None

    @contextmanager
    def watching(self, job: Job) -> Iterator[None]:
        """Run `job` under watch (the thread starts with the first job, in the process that runs it)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="runner-job-watch", daemon=True)
            self._thread.start()
            signal.signal(STOP_JOB_SIGNAL, self._interrupted)
        timeout = job.timeout or self.worker.queue_class.DEFAULT_TIMEOUT
        if self.deadline_slot is not None and timeout and timeout > 0:
            self.deadline_slot.publish(time.time() + timeout + HARD_TIMEOUT_MARGIN_SECONDS)
        self.job = job
        try:
            yield
        finally:
            self.job = None
            if self.deadline_slot is not None:
                self.deadline_slot.publish(0.0)

    def _watch(self) -> None:
        # Every tick, not woken per job: a thread switch per job costs more than a tick.
        while True:
            time.sleep(MONITOR_TICK_SECONDS)
            job = self.job
            if job is None:
                continue
            try:
                self.worker.maintain_heartbeats(job)
            except Exception:  # the job goes on; the next tick tries again
                log.exception("worker %s: watching job %s failed", self.worker.name, job.id)

    @property
    def grace_deadline(self) -> float | None:
        """When the grace period of a requested stop ends (monotonic), if one was requested."""
        return self._grace_deadline

    def start_grace_period(self, seconds: float) -> None:
        """A stop was asked for: the running job has `seconds` to end."""
        self._grace_deadline = time.monotonic() + seconds

    def check_grace_period(self) -> None:
        """Past the grace period, end the job now."""
        if self._grace_deadline is not None and time.monotonic() >= self._grace_deadline:
            self.stop_now(f"its job did not end within the {self.worker.grace_seconds:g} s grace period")

    def interrupt(self, job_id: str | None) -> None:
        """The stop-job command named `job_id`: interrupt it if it is the one running here."""
        if self.job is not None and self.job.id == job_id:
            signal.pthread_kill(threading.main_thread().ident or 0, STOP_JOB_SIGNAL)

    def _interrupted(self, signum: int, frame: FrameType | None) -> None:
        if self.job is not None and self.worker.stopped_job_id == self.job.id:
            raise JobStopped()

    def stop_now(self, why: str) -> None:
        """Put the running job back at the front of its queue uncounted, and end the process."""
        worker, job, execution = self.worker, self.job, self.worker.execution
        if job is not None and execution is not None:
            worker.log.warning("Worker %s: stopping now, %s: job %s goes back to its queue", worker.name, why, job.id)
            try:
                recover_entry(worker.connection, StartedEntry(job.origin, job.id, execution.id),
                              reason=WORKER_STOPPED_REASON, count_attempt=False)
            except REDIS_ERRORS as exc:
                log.error("job %s could not be requeued (%s): peers will recover it", job.id, exc)
        worker.exit_now()
