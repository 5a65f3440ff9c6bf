"""A worker process's one voice about Redis being away: one line per retry, with backoff.

Every part of a worker talks to Redis: the loop that takes jobs, the watch thread's heartbeats,
the recovery duty, the journal's projector, RQ's pubsub thread and scheduler process. Each used
to say so on its own when Redis went away, every second or two, some with a traceback, and a
work process that could not register was restarted again and again. Now one part retries for
the process and says so, once per retry, with the URL (password masked), the driver's reason,
"Check REDIS_URL." and when it tries again; the others retry quietly (DEBUG) on their own.

- Before a work process starts, the supervising parent pings (runner.worker.process_supervisor):
  1 s doubling to 30 s.
- With no job running, the loop that takes jobs (RunnerWorker.dequeue_job_and_maintain_ttl):
  1 s doubling to 30 s.
- With a job running, the watch thread's job heartbeat (RunnerWorker.maintain_heartbeats): 1 s
  doubling to the heartbeat interval.

While a job runs the bound is the heartbeat interval (a third of the dead-worker window), so
that once Redis is back peers hear from the worker before they would presume it dead.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from runner.config import masked_url
from runner.services.backend_checks import describe_unavailable

log = logging.getLogger(__name__)

FIRST_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 30.0
# How often a wait between retries looks whether the worker was asked to stop.
STOP_CHECK_SECONDS = 0.1


class RedisOutage:
    """When to try Redis again, and one log line per try while it stays away."""

    def __init__(self, url: str, *, first: float = FIRST_RETRY_SECONDS, most: float = MAX_RETRY_SECONDS) -> None:
        self.url = url
        self.first = first
        self.most = most
        self._lock = threading.Lock()
        self._since: float | None = None
        self._delay = 0.0

    @property
    def down(self) -> bool:
        """Whether the last attempt to reach Redis failed."""
        return self._since is not None

    def failed(self, error: BaseException, *, most: float | None = None) -> float:
        """Note a failed attempt to reach Redis and log it (one line); the seconds to wait before the next."""
        with self._lock:
            now = time.monotonic()
            if self._since is None:
                self._since, self._delay = now, self.first
            else:
                self._delay = min(self._delay * 2, self.most)
            delay = min(self._delay, most if most is not None else self.most)
            away = now - self._since
        since = f" (away for {away:.0f} s)" if away >= 1 else ""
        log.error("%s Retrying in %g s%s.", describe_unavailable("redis", self.url, error), delay, since)
        return delay

    def answered(self) -> None:
        """Redis answered: after an outage, say so once."""
        if self._since is None:
            return
        with self._lock:
            since, self._since = self._since, None
        if since is not None:
            log.info("Redis at %s answers again after %.0f s.", masked_url(self.url), time.monotonic() - since)


def pause(seconds: float, stop: Callable[[], bool]) -> None:
    """Sleep `seconds`, or less once `stop()` says the worker is stopping."""
    until = time.monotonic() + seconds
    while not stop() and (left := until - time.monotonic()) > 0:
        time.sleep(min(left, STOP_CHECK_SECONDS))
