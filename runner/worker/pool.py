"""How many work processes a worker pool keeps (`python -m runner worker --min N --max M`).

The supervising parent (runner.worker.process_supervisor) asks `PoolSize.target` on each of its
ticks and starts or retires work processes to match:
- the load is `runner.services.scaling`'s reading of the pool's queues, read at most every
  READ_SECONDS: the jobs queued, due soon, or running (less those running elsewhere, on other
  machines' workers), capped by the functions' `concurrency`, as workers (one per job, or per
  RUNNER_WORKER_SLOTS jobs of a queue whose functions all run in slots: `pool_wanted`), then kept
  between N and M;
- up at once, so a burst has its workers within a second;
- down once a surplus has lasted RUNNER_SCALE_DOWN_AFTER seconds (idle processes go first);
- at zero the parent makes one blocking call (`wait_for_work`): BLPOP on the wake-up lists of its
  queues, where every job pushed leaves a token (runner.rq_seam.queues), with a timeout that ends
  it when the earliest scheduled job comes within the scaling horizon. The parent takes the token;
  the process it starts claims without one.
Each change of size is one JSON line on the `runner.scaling` logger.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence

import redis

from runner.redis_connection import REDIS_ERRORS
from runner.rq_seam.queues import wake_key
from runner.services.scaling import (
    SCHEDULED_HORIZON_SECONDS,
    QueueLoad,
    QueueRule,
    next_scheduled_at,
    pool_wanted,
    read_load,
)
from runner.worker.redis_outage import RedisOutage

log = logging.getLogger("runner.scaling")

# How often the load is read while the pool has work processes (a burst is seen within this, plus
# the parent's 0.2 s tick): five reads a second, a few commands per queue each.
READ_SECONDS = 0.2
# The longest single wait at zero: a job pushed without a wake-up token is seen within this.
IDLE_WAIT_SECONDS = 30.0
# After the pool grew, the next read comes this soon: a burst first seen one job deep gets its M
# processes in a few such steps, not in READ_SECONDS steps (`make bench`: throughput from zero against a
# fixed pool 0.89-0.92x -> 0.96x).
GROWING_READ_SECONDS = 0.05


class PoolSize:
    """Between `minimum` and `maximum` work processes, after the load of the pool's queues."""

    def __init__(self, connection: redis.Redis, queue_names: Sequence[str], rules: Mapping[str, QueueRule], *,
                 minimum: int, maximum: int, scale_down_after: float, outage: RedisOutage) -> None:
        # `connection` has no socket timeout: it blocks at zero for up to IDLE_WAIT_SECONDS.
        self.connection = connection
        self.queue_names = list(queue_names)
        self.rules = dict(rules)
        self.minimum, self.maximum = minimum, maximum
        self.scale_down_after = scale_down_after
        self.outage = outage
        self.loads: list[QueueLoad] = []
        self._wanted = minimum
        self._read_at = float("-inf")
        self._surplus_since: float | None = None

    @property
    def tick_seconds(self) -> float:
        """How long the supervising parent may wait before its next look at the size."""
        return min(READ_SECONDS, max(0.0, self._read_at - time.monotonic()))

    def target(self, current: int) -> int:
        """How many work processes to have now, given `current` of them (not retiring)."""
        now = time.monotonic()
        if now >= self._read_at:
            self._read(current, now)
        wanted = self._wanted
        if wanted >= current:
            self._surplus_since = None
            if wanted > current:
                self._read_at = min(self._read_at, now + GROWING_READ_SECONDS)
                self._log("scale_up", current, wanted)
            return wanted
        if self._surplus_since is None:
            self._surplus_since = now
        if now - self._surplus_since < self.scale_down_after:
            return current
        self._surplus_since = None
        self._log("scale_down", current, wanted)
        return wanted

    def _read(self, current: int, now: float) -> None:
        try:
            self.loads = read_load(self.connection, self.queue_names, self.rules, count_workers=False)
        except REDIS_ERRORS as exc:  # keep the size until Redis answers again
            self._read_at = now + self.outage.failed(exc)
            return
        self.outage.answered()
        self._read_at = now + READ_SECONDS
        # Jobs running on other machines' workers need no process here (runner.services.scaling.pool_wanted).
        self._wanted = max(self.minimum, min(self.maximum, pool_wanted(self.loads, self.rules, current)))

    def wait_for_work(self) -> None:
        """At zero: block until a job is pushed to one of the queues, or scheduled work comes near."""
        seconds = IDLE_WAIT_SECONDS
        try:
            due = next_scheduled_at(self.connection, self.queue_names)
            if due is not None:
                seconds = min(seconds, due - SCHEDULED_HORIZON_SECONDS - time.time())
            if seconds > 0:
                self.connection.blpop([wake_key(name) for name in self.queue_names], timeout=seconds)
        except REDIS_ERRORS as exc:
            time.sleep(self.outage.failed(exc))
        self._read_at = float("-inf")  # read the load at once

    def interrupted(self) -> None:
        """A stop broke into a wait: the connection may owe a reply, so drop it."""
        self.connection.connection_pool.disconnect()

    def _log(self, event: str, current: int, wanted: int) -> None:
        loads = self.loads
        log.info(json.dumps({
            "event": event,
            "from": current,
            "to": wanted,
            "queued": sum(load.queued for load in loads),
            "running": sum(load.running for load in loads),
            "scheduled_due": sum(load.scheduled_due for load in loads),
            "oldest_age_seconds": max((load.oldest_age_seconds for load in loads), default=0.0),
            "min": self.minimum,
            "max": self.maximum,
        }))
