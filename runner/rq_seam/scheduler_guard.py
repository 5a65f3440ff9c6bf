"""Keeps scheduled jobs (retries waiting out their backoff) moving after a scheduler dies.

RQ lets one scheduler process per queue hold a lock that outlives a killed scheduler by a
minute, and other workers try to take over only every few minutes. A runner worker checks on
each recovery pass instead: a lock held by a scheduler silent past the window is broken, and
this worker's scheduler takes the free locks, starting (or restarting) its process.

A scheduler process that loses Redis ends quietly (RQ's logs its traceback twice, once more
through multiprocessing): the worker says Redis is away, and its recovery duty starts the
scheduler again once Redis answers.
"""

from __future__ import annotations

import logging
import os
from multiprocessing.process import BaseProcess
from typing import Protocol

import redis
from rq.scheduler import SCHEDULER_KEY_TEMPLATE, ForkProcess, RQScheduler
from rq.utils import as_text, utcparse

from runner.redis_connection import REDIS_ERRORS

log = logging.getLogger(__name__)


class RunnerScheduler(RQScheduler):
    """RQ's scheduler, whose process ends without a traceback when Redis goes away."""

    def start(self) -> BaseProcess:
        # RQ's start, with run_scheduler as the process's body.
        self._status = self.Status.STARTED
        self._connection = None  # a Redis client is not carried into the fork
        process = ForkProcess(target=run_scheduler, args=(self,), name="Scheduler")
        self._process = process  # type: ignore[assignment]
        process.start()
        return process


def run_scheduler(scheduler: RQScheduler) -> None:
    """The scheduler process's body: RQ's (rq.scheduler.run), ended by a lost connection without a traceback."""
    scheduler.log.info("Scheduler for %s started with PID %s", ", ".join(scheduler._queue_names), os.getpid())
    try:
        scheduler.work()
    except REDIS_ERRORS as exc:
        scheduler.log.debug("Scheduler with PID %d stopped: Redis is unavailable (%s)", os.getpid(), exc)
        return
    scheduler.log.info("Scheduler with PID %d has stopped", os.getpid())


class SchedulingWorker(Protocol):
    """The part of an RQ worker that runs its scheduler."""

    scheduler: RQScheduler | None

    def stop_scheduler(self) -> None: ...


class Judge(Protocol):
    """Says whether heartbeats went silent (runner.worker.liveness.Liveness)."""

    def is_silent(self, last_beat: float | None, dead_after: float | None) -> bool: ...


def scheduler_is_silent(connection: redis.Redis, scheduler_name: str, liveness: Judge) -> bool:
    """True when the scheduler `scheduler_name` stopped heartbeating (it beats every second)."""
    beat = connection.hget(SCHEDULER_KEY_TEMPLATE % scheduler_name, "last_heartbeat")
    last = utcparse(as_text(beat)).timestamp() if beat is not None else None
    return liveness.is_silent(last, None)


def break_lock(connection: redis.Redis, lock_key: str, holder: str) -> bool:
    """Delete `lock_key` if `holder` still holds it; True when deleted."""
    with connection.pipeline() as pipeline:
        try:
            pipeline.watch(lock_key)  # type: ignore[no-untyped-call]
            current = pipeline.get(lock_key)
            if current is None or as_text(current) != holder:
                return False
            pipeline.multi()
            pipeline.delete(lock_key)
            pipeline.execute()
        except redis.WatchError:
            return False
    return True


def free_scheduler_locks(connection: redis.Redis, scheduler: RQScheduler, liveness: Judge) -> list[str]:
    """Queues whose scheduler lock is free, after breaking the locks of silent schedulers."""
    free: list[str] = []
    for name in sorted(scheduler._queue_names):
        lock_key = RQScheduler.get_locking_key(name)
        raw = connection.get(lock_key)
        if raw is None:
            free.append(name)
            continue
        holder = as_text(raw)
        if holder != scheduler.name and scheduler_is_silent(connection, holder, liveness):
            if break_lock(connection, lock_key, holder):
                log.warning("scheduler %s for queue %s stopped heartbeating: took its lock over", holder, name)
                free.append(name)
    return free


def keep_scheduler_running(worker: SchedulingWorker, connection: redis.Redis, liveness: Judge) -> None:
    """Make sure some live scheduler serves each of this worker's queues."""
    scheduler = worker.scheduler
    if scheduler is None:
        return
    free = free_scheduler_locks(connection, scheduler, liveness)
    running = scheduler._process is not None and scheduler._process.is_alive()
    if running and not free:
        return
    if running:
        # Its process cannot be told to take more locks: restart it; it gives back its own on the way.
        worker.stop_scheduler()
    if scheduler.acquire_locks(auto_start=True):
        log.info("scheduler %s runs for %s", scheduler.name, ", ".join(sorted(scheduler.acquired_locks)))
