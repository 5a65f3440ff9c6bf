"""`python -m runner worker`: a small parent process that keeps one long-lived work process going.

The work process (runner.worker.in_process) runs jobs in its own process, one after another. This
parent runs none: it starts the work process, forwards stop signals to it, and contains it:
- it dies (a job crashed the interpreter, or called os._exit): the parent settles that
  worker's jobs at once (retried per their policy, or failed with `WorkerDied`), returns its
  claims, and starts a fresh work process;
- its job is stuck past its timeout where the alarm cannot reach it (C code): the parent
  kills it, and settles it the same way;
- a stop outlasts the grace period by a margin (the process cannot even requeue its job):
  the parent kills it and requeues the job itself, uncounted.
When the parent itself is killed, the kernel kills the work process too (PDEATHSIG), and
peers recover its jobs from the silence of its heartbeats (runner.worker.recovery).
A work process is started only once Redis answers: until then the parent pings it, one log line
per retry (runner.worker.redis_outage), rather than start processes that cannot register.
"""

from __future__ import annotations

import logging
import mmap
import os
import signal
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from types import FrameType
from uuid import uuid4

import redis
from rq.utils import as_text

from runner.redis_connection import REDIS_ERRORS
from runner.rq_seam.keys import EXECUTION_WORKER_FIELD, execution_key
from runner.worker.in_process import DeadlineSlot
from runner.worker.process_ties import die_with_parent
from runner.worker.recovery import (
    WORKER_DIED_REASON,
    WORKER_STOPPED_REASON,
    StartedEntry,
    recover_entry,
    settle_worker,
    started_entries,
)
from runner.worker.redis_outage import RedisOutage, pause

log = logging.getLogger(__name__)

WATCH_SECONDS = 0.2
# Extra time a stopping work process gets past its own grace period before it is killed.
STOP_MARGIN_SECONDS = 10.0
# A work process that keeps dying at start is restarted ever more slowly, up to this.
MAX_RESTART_DELAY_SECONDS = 5.0


@dataclass
class WorkProcess:
    """One running work process."""

    pid: int
    name: str
    started: float


WorkBody = Callable[[str, DeadlineSlot], int]


class ProcessSupervisor:
    """Starts, watches and contains the work process of one worker."""

    def __init__(self, body: WorkBody, *, queue_names: list[str], connection: redis.Redis,
                 grace_seconds: float, outage: RedisOutage) -> None:
        self.body = body
        self.queue_names = queue_names
        self.connection = connection
        self.grace_seconds = grace_seconds
        self.outage = outage
        self.slot = DeadlineSlot(mmap.mmap(-1, mmap.PAGESIZE))  # anonymous and shared with children
        self.child: WorkProcess | None = None
        self._stop_deadline: float | None = None
        self._restart_delay = 0.1

    def run(self) -> int:
        """Keep a work process running until it ends on its own or after a stop; return its exit code."""
        signal.signal(signal.SIGTERM, self._forward_stop)
        signal.signal(signal.SIGINT, self._forward_stop)
        while True:
            if self.child is None:
                if not self._wait_for_redis():
                    return 0  # stopped before anything ran
                self.child = self._start()
            code = self._wait_for_exit(self.child)
            if code is not None:
                return code

    def _wait_for_redis(self) -> bool:
        """Ping Redis until it answers (True) or a stop comes (False)."""
        while self._stop_deadline is None:
            try:
                self.connection.ping()
            except REDIS_ERRORS as exc:
                pause(self.outage.failed(exc), lambda: self._stop_deadline is not None)
                continue
            self.outage.answered()
            return True
        return False

    def _start(self) -> WorkProcess:
        self.slot.publish(0.0)
        name = uuid4().hex
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the work process
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                die_with_parent(parent)
                code = self.body(name, self.slot)
            except REDIS_ERRORS as exc:  # Redis went away as it started: the parent waits for it again
                self.outage.failed(exc)
            except BaseException:
                log.exception("work process %s failed", name)
            finally:
                logging.shutdown()
                os._exit(code)
        log.info("worker: work process %d (%s) started", pid, name)
        return WorkProcess(pid, name, time.monotonic())

    def _wait_for_exit(self, child: WorkProcess) -> int | None:
        """Watch `child` until it exits; its exit code when the worker should end, None to go on."""
        killed_for: str | None = None
        while True:
            pid, status = os.waitpid(child.pid, os.WNOHANG)
            if pid == child.pid:
                break
            deadline = self.slot.read()
            if killed_for is None and deadline and time.time() > deadline:
                log.error("worker: work process %d is stuck past its job's timeout; killing it", child.pid)
                killed_for = WORKER_DIED_REASON + " (its job was stuck past its timeout)"
                os.kill(child.pid, signal.SIGKILL)
            if killed_for is None and self._stop_deadline is not None and time.monotonic() > self._stop_deadline:
                log.error("worker: work process %d did not stop in time; killing it", child.pid)
                killed_for = WORKER_STOPPED_REASON
                os.kill(child.pid, signal.SIGKILL)
            time.sleep(WATCH_SECONDS)
        self.child = None
        code = os.waitstatus_to_exitcode(status)
        if killed_for is None and code == 0:
            return 0  # it ended on its own: a stop, or the end of a burst
        if killed_for is None and self._stop_deadline is not None:
            killed_for = WORKER_STOPPED_REASON
        reason = killed_for or f"{WORKER_DIED_REASON} (its process exited with {code})"
        self._settle(child, reason)
        if self._stop_deadline is not None:
            return code if code > 0 else 1
        if time.monotonic() - child.started < 10:
            time.sleep(self._restart_delay)
            self._restart_delay = min(self._restart_delay * 2, MAX_RESTART_DELAY_SECONDS)
        else:
            self._restart_delay = 0.1
        return None

    def _settle(self, child: WorkProcess, reason: str) -> None:
        """Settle the jobs a dead work process held, and retire its name."""
        log.warning("worker: work process %d (%s) is gone: %s", child.pid, child.name, reason)
        count = reason != WORKER_STOPPED_REASON
        try:
            for entry in self._executions_of(child.name):
                recover_entry(self.connection, entry, reason=reason, count_attempt=count)
            settle_worker(self.connection, child.name)
        except REDIS_ERRORS as exc:  # its heartbeats stop: peers (or the next work process) settle it
            log.error("worker: could not settle work process %s now, Redis is unavailable (%s)", child.name, exc)

    def _executions_of(self, worker_name: str) -> list[StartedEntry]:
        found = []
        for queue in self.queue_names:
            for entry, _score in started_entries(self.connection, queue):
                owner = self.connection.hget(execution_key(entry.job_id, entry.execution_id), EXECUTION_WORKER_FIELD)
                if owner is not None and as_text(owner) == worker_name:
                    found.append(entry)
        return found

    def _forward_stop(self, signum: int, frame: FrameType | None) -> None:
        if self._stop_deadline is None:
            self._stop_deadline = time.monotonic() + self.grace_seconds + STOP_MARGIN_SECONDS
        if self.child is not None:
            with suppress(ProcessLookupError):
                os.kill(self.child.pid, signum)
