"""Jobs run in the worker's own long-lived process, one after another: no fork per job.

Functions are imported once, connections are kept, and nothing is copied per job. What a
forking worker got from its parent, this one gets otherwise:
- a watch thread heartbeats the running job, takes the recovery duty peers count on, and
  enforces the graceful-stop grace period (runner.worker.supervision);
- a stop command interrupts the job in the main thread, where it runs;
- a job that hangs the whole process (stuck in C code past its timeout), or kills it, is
  contained by the process above (runner.worker.process_supervisor): it reads the deadline this
  worker publishes for the running job, kills the process past it, settles the job and
  starts a fresh process.
"""

from __future__ import annotations

import logging
import os
import signal
import struct
import threading
import time
from contextlib import suppress
from types import FrameType
from typing import Any

from rq.job import Job
from rq.queue import Queue

from runner.worker.supervision import MONITOR_TICK_SECONDS, SupervisedWorkerMixin

log = logging.getLogger(__name__)

# Signal the stop-job command uses to interrupt the job running in the main thread.
STOP_JOB_SIGNAL = signal.SIGUSR1
# The supervisor kills a process whose job is this far past its timeout (RQ's alarm fires first).
HARD_TIMEOUT_MARGIN_SECONDS = 10.0
DEADLINE_FORMAT = "d"
MAX_CLAIM_BATCH = 8
SHORT_JOB_SECONDS = 0.01


class JobStopped(Exception):  # noqa: N818 (shown to users as the error's type)
    """The job was stopped on request while it ran."""


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


class InProcessWorkerMixin(SupervisedWorkerMixin):
    """Runs each job in this process, with a watch thread standing in for a forking worker's parent."""

    deadline_slot: DeadlineSlot | None = None
    _watched: Job | None = None
    _watch_thread: threading.Thread | None = None

    def execute_job(self, job: Job, queue: Queue) -> None:
        if self._watch_thread is None:
            self._watch_thread = threading.Thread(target=self._watch_jobs, name="runner-job-watch", daemon=True)
            self._watch_thread.start()
            signal.signal(STOP_JOB_SIGNAL, self._interrupt_job)
        timeout = job.timeout or self.queue_class.DEFAULT_TIMEOUT
        if self.deadline_slot is not None and timeout and timeout > 0:
            self.deadline_slot.publish(time.time() + timeout + HARD_TIMEOUT_MARGIN_SECONDS)
        self._watched = job
        began = time.monotonic()
        try:
            super().execute_job(job, queue)
        finally:
            # Jobs of a few milliseconds are claimed several at a time; longer ones one by one, so
            # that no job waits behind a long one while another worker is idle.
            short = time.monotonic() - began < SHORT_JOB_SECONDS
            self.claim_batch = MAX_CLAIM_BATCH if short else 1
            self._watched = None
            if self.deadline_slot is not None:
                self.deadline_slot.publish(0.0)

    def _watch_jobs(self) -> None:
        # What a forking worker's parent does while its horse runs, every tick, from this thread.
        # It polls rather than being woken per job: a thread switch per job costs more than a tick.
        while True:
            time.sleep(MONITOR_TICK_SECONDS)
            job = self._watched
            if job is None:
                continue
            try:
                self.maintain_heartbeats(job)
            except Exception:  # the job goes on; the next tick tries again
                log.exception("worker %s: watching job %s failed", self.name, job.id)

    def kill_horse(self, sig: signal.Signals = signal.SIGKILL) -> None:
        # RQ's stop-job command calls this (from the pub/sub thread) for the job we run.
        if self._watched is not None:
            signal.pthread_kill(threading.main_thread().ident or 0, STOP_JOB_SIGNAL)

    def _interrupt_job(self, signum: int, frame: FrameType | None) -> None:
        if self._watched is not None and self._stopped_job_id == self._watched.id:
            raise JobStopped("The job was stopped on request.")

    def _end_running_job(self) -> None:
        pass  # it runs in this process: requeued as it is, then ended with the process (_exit_now)

    def _exit_now(self) -> None:
        # The job may still hold the main thread (this runs in the watch thread past the grace
        # period): end the process from here, after saying goodbye.
        with suppress(Exception):
            self.teardown()
        logging.shutdown()
        os._exit(0)
