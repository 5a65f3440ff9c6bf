"""The ticker: a thread of every work process that runs schedules' due ticks while it holds a lease.

One ticker at a time ticks for the whole fleet (the holder of `runner:schedules:lease`); the
others try for the lease every few seconds and take over within LEASE_SECONDS of a holder that
dies. The lease keeps the work to one process, not the promise: two tickers that overlap (a
holder paused past its lease) still make one job per tick (runner.services.schedule_ticks).
The thread never touches the job loop: it shares only the worker's connection pool.

Every ticker first registers the schedules declared in code (once per process). Its pass, while
it holds the lease: restore Redis's schedules from SQL when Redis lost them, then run what is due,
and sleep until the next tick (at most POLL_SECONDS, so schedules created meanwhile are seen).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import cast

import redis

from runner.authoring.registry import Registry
from runner.errors import BackendUnavailable, IdempotencyConflict
from runner.redis_connection import REDIS_ERRORS
from runner.redis_lease import Lease
from runner.services.backends import Backends
from runner.services.schedule_sync import register_declared, restore_if_lost
from runner.services.schedule_ticks import run_due
from runner.services.schedules import DUE_KEY
from runner.store.models import utcnow

log = logging.getLogger(__name__)

LEASE_KEY = "runner:schedules:lease"
LEASE_SECONDS = 5.0
# Longest sleep of the lease holder between passes.
POLL_SECONDS = 0.25
RETRY_SECONDS = 1.0


class ScheduleTicker:
    """Runs due ticks while it holds the lease."""

    def __init__(self, backends: Backends, registry: Registry, name: str) -> None:
        self.backends = backends
        self.registry = registry
        self.lease = Lease(backends.connection, LEASE_KEY, name, LEASE_SECONDS)
        self._declared = False

    def register_declared(self) -> None:
        """Register the schedules this process's functions declare (once it has worked; lease or not,
        so that a new declaration is registered however long an older worker keeps the lease)."""
        if not self._declared:
            for schedule_id in register_declared(self.registry, self.backends):
                log.info("schedules: %s registered from its function's declaration", schedule_id)
            self._declared = True

    def run_pass(self) -> float:
        """One pass as the lease holder; how long to sleep before the next."""
        restore_if_lost(self.backends)
        run_due(self.backends, self.registry, utcnow())
        return self.seconds_to_next_tick()

    def seconds_to_next_tick(self) -> float:
        """Until the earliest next tick, at most POLL_SECONDS."""
        earliest = cast(list[tuple[bytes, float]], self.backends.connection.zrange(DUE_KEY, 0, 0, withscores=True))
        if not earliest:
            return POLL_SECONDS
        return min(POLL_SECONDS, max(0.0, earliest[0][1] - time.time()))

    def run(self, stop: threading.Event) -> None:
        """Tick while holding the lease, until `stop` is set (a thread's body)."""
        renew_at = 0.0
        waiting = False
        while not stop.is_set():
            try:
                self.register_declared()
                if time.monotonic() >= renew_at:
                    if not self.lease.hold():
                        stop.wait(LEASE_SECONDS / 2)
                        continue
                    renew_at = time.monotonic() + LEASE_SECONDS / 5
                pause = self.run_pass()
                if waiting:
                    log.info("schedules: ticks run again")
                waiting = False
                stop.wait(pause)
            except (BackendUnavailable, IdempotencyConflict) as exc:  # the ticks stay due for the next pass
                redis_away = isinstance(exc.details, dict) and exc.details.get("dependency") == "redis"
                if redis_away:  # the worker says Redis is away, once per retry
                    log.debug("schedules: ticks wait: %s", exc.message)
                elif not waiting:  # once per outage, as the projector says it
                    log.warning("schedules: ticks wait: %s", exc.message)
                waiting = True
                stop.wait(RETRY_SECONDS)
            except REDIS_ERRORS as exc:  # the worker says Redis is away, once per retry
                log.debug("schedules: Redis is unavailable (%s); retrying", exc)
                stop.wait(RETRY_SECONDS)
            except Exception:  # a bug must not end every schedule for good: the ticks stay due
                log.exception("schedules: a pass failed; trying again")
                stop.wait(RETRY_SECONDS)


def start_ticker_thread(backends: Backends, registry: Registry,
                        name: str) -> tuple[threading.Thread, threading.Event]:
    """Run a ticker in a daemon thread of this process; set the event to stop it."""
    stop = threading.Event()
    ticker = ScheduleTicker(backends, registry, name)
    thread = threading.Thread(target=ticker.run, args=(stop,), name="runner-schedules", daemon=True)
    thread.start()
    return thread, stop


def stop_ticker_thread(thread: threading.Thread, stop: threading.Event, connection: redis.Redis,
                       name: str) -> None:
    """Stop a ticker thread and give its lease back, so another worker ticks at once."""
    stop.set()
    thread.join(LEASE_SECONDS)
    try:
        Lease(connection, LEASE_KEY, name, LEASE_SECONDS).release()
    except REDIS_ERRORS as exc:
        log.debug("schedules: lease left to expire (%s)", exc)
