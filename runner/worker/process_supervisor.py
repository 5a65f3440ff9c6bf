"""`python -m runner worker`: a small parent process that keeps one long-lived work process going, or
with `--min N --max M` a pool of N..M of them sized after the load (runner.worker.pool).

A work process (runner.worker.in_process) runs jobs in its own process, one after another. This
parent runs none: it has imported the functions, so a work process it forks starts in milliseconds;
it starts the work processes, forwards stop signals to them, and contains each:
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
from runner.worker.pool import PoolSize
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
    """One running work process, and the deadline its running job publishes."""

    pid: int
    name: str
    started: float
    slot: DeadlineSlot
    killed_for: str | None = None
    retiring: bool = False


WorkBody = Callable[[str, DeadlineSlot], int]


class _StopWaiting(BaseException):
    """A stop came while the parent of an empty pool waited for work."""


class ProcessSupervisor:
    """Starts, watches and contains the work processes of one worker: one, or a pool's N..M."""

    def __init__(self, body: WorkBody, *, queue_names: list[str], connection: redis.Redis,
                 grace_seconds: float, outage: RedisOutage, pool: PoolSize | None = None) -> None:
        self.body = body
        self.queue_names = queue_names
        self.connection = connection
        self.grace_seconds = grace_seconds
        self.outage = outage
        # None: one work process, and the worker ends when it ends by itself (today's worker).
        self.pool = pool
        self.children: dict[int, WorkProcess] = {}
        self._stop_deadline: float | None = None
        self._restart_delay = 0.1
        self._restart_at = 0.0
        self._code = 0
        self._target = 0
        self._waiting = False

    def run(self) -> int:
        """Keep the work processes running until a stop (or, alone, until it ends by itself); the exit code."""
        signal.signal(signal.SIGTERM, self._forward_stop)
        signal.signal(signal.SIGINT, self._forward_stop)
        while True:
            if self._stop_deadline is None and time.monotonic() >= self._restart_at:
                if not self._resize():
                    return 0  # stopped before anything ran
            for child in list(self.children.values()):
                if self._reap(child) and self.pool is None and self._stop_deadline is None:
                    return 0  # it ended on its own: a stop, or the end of a burst
            if self._stop_deadline is not None and not self.children:
                return self._code
            self._pause()

    def _resize(self) -> bool:
        """Start or retire work processes to match the target; False when a stop came first."""
        staying = [child for child in self.children.values() if not child.retiring]
        target = 1 if self.pool is None else self.pool.target(len(staying))
        self._target = target
        if target > len(staying):
            if not self._wait_for_redis():
                return False
            for _ in range(target - len(staying)):
                child = self._start()
                self.children[child.pid] = child
        for child in [child for child in staying if not child.slot.read()][:len(staying) - target]:
            log.info("worker: retiring work process %d (%s)", child.pid, child.name)
            child.retiring = True
            with suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)
        return True

    def _pause(self) -> None:
        # The pool blocks only at zero by choice: not while a crashed work process waits for its restart.
        if self.children or self.pool is None or self._stop_deadline is not None or self._target:
            time.sleep(WATCH_SECONDS if self.pool is None else min(WATCH_SECONDS, self.pool.tick_seconds))
            return
        self._waiting = True
        try:
            self.pool.wait_for_work()
        except _StopWaiting:
            self.pool.interrupted()
        finally:
            self._waiting = False

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
        slot = DeadlineSlot(mmap.mmap(-1, mmap.PAGESIZE))  # anonymous and shared with the child
        slot.publish(0.0)
        name = uuid4().hex
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the work process
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                if self.pool is not None:
                    # A session of its own: where the kernel shares CPU between sessions (autogroup), M work
                    # processes get the share of M workers, not of one (autoscaled/fixed throughput 0.6 -> ~1
                    # on a loaded machine). Stop signals come from the parent, which forwards them.
                    os.setsid()
                die_with_parent(parent)
                code = self.body(name, slot)
            except REDIS_ERRORS as exc:  # Redis went away as it started: the parent waits for it again
                self.outage.failed(exc)
            except BaseException:
                log.exception("work process %s failed", name)
            finally:
                logging.shutdown()
                os._exit(code)
        log.info("worker: work process %d (%s) started", pid, name)
        return WorkProcess(pid, name, time.monotonic(), slot)

    def _reap(self, child: WorkProcess) -> bool:
        """Look at `child` once: kill it when stuck or late to stop; once it exited, settle it if it must be.

        True when it ended on its own (exit code 0, neither killed nor retired nor stopped).
        """
        pid, status = os.waitpid(child.pid, os.WNOHANG)
        if pid != child.pid:
            deadline = child.slot.read()
            if child.killed_for is None and deadline and time.time() > deadline:
                log.error("worker: work process %d is stuck past its job's timeout; killing it", child.pid)
                child.killed_for = WORKER_DIED_REASON + " (its job was stuck past its timeout)"
                os.kill(child.pid, signal.SIGKILL)
            if child.killed_for is None and self._stop_deadline is not None and time.monotonic() > self._stop_deadline:
                log.error("worker: work process %d did not stop in time; killing it", child.pid)
                child.killed_for = WORKER_STOPPED_REASON
                os.kill(child.pid, signal.SIGKILL)
            return False
        del self.children[child.pid]
        child.slot.memory.close()
        code = os.waitstatus_to_exitcode(status)
        if child.killed_for is None and code == 0:
            return not child.retiring
        if child.killed_for is None and (self._stop_deadline is not None or child.retiring):
            child.killed_for = WORKER_STOPPED_REASON
        self._settle(child, child.killed_for or f"{WORKER_DIED_REASON} (its process exited with {code})")
        if self._stop_deadline is not None:
            self._code = self._code or (code if code > 0 else 1)
        elif time.monotonic() - child.started < 10:
            self._restart_at = time.monotonic() + self._restart_delay
            self._restart_delay = min(self._restart_delay * 2, MAX_RESTART_DELAY_SECONDS)
        else:
            self._restart_delay = 0.1
        return False

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
        for child in list(self.children.values()):
            with suppress(ProcessLookupError):
                os.kill(child.pid, signum)
        if self._waiting:
            self._waiting = False  # a second signal must not break into the first one's handling
            raise _StopWaiting
