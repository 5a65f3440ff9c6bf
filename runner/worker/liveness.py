"""Is a worker, or the execution of a job, still alive? Judged by heartbeats in Redis.

Each runner worker writes how long it may stay silent (`dead_after`) next to its heartbeats,
in its worker hash and in the hash of each execution it runs. Whoever judges uses that
figure, so workers configured with different windows judge each other fairly; executions
without it (a plain `rq worker`) are left to RQ's own expiry score.

Heartbeats cannot be written while Redis itself is down: time before Redis last started
does not count as silence.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import redis
from rq.utils import as_text, utcparse

from runner.rq_seam.keys import DEAD_AFTER_FIELD, WORKER_DEATH_FIELD, WORKER_HEARTBEAT_FIELD, worker_key


def redis_uptime(connection: redis.Redis) -> float:
    """Seconds since the Redis server started (infinite when the server will not say)."""
    try:
        info = connection.info("server")
    except redis.exceptions.ResponseError:  # fakeredis and locked-down servers have no INFO
        return math.inf
    return float(info.get("uptime_in_seconds", math.inf))


@dataclass(frozen=True)
class Liveness:
    """One moment's view of time: judges heartbeats against it."""

    now: float
    redis_up_since: float
    default_dead_after: float

    @classmethod
    def observe(cls, connection: redis.Redis, default_dead_after: float) -> Liveness:
        """Now, and when Redis last started."""
        now = time.time()
        return cls(now=now, redis_up_since=now - redis_uptime(connection), default_dead_after=default_dead_after)

    def is_silent(self, last_beat: float | None, dead_after: float | None) -> bool:
        """True when nothing was heard for longer than `dead_after` while Redis was up."""
        window = dead_after if dead_after and dead_after > 0 else self.default_dead_after
        heard = max(last_beat if last_beat is not None else -math.inf, self.redis_up_since)
        return self.now - heard > window

    def past(self, expiry_score: float) -> bool:
        """True when an RQ expiry score lies in the past and Redis has been up long enough to trust it."""
        return expiry_score < self.now and self.now - self.redis_up_since > self.default_dead_after

    def worker_is_dead(self, connection: redis.Redis, worker_name: str) -> bool:
        """True when the worker registered its death, or has been silent past its window."""
        beat, death, dead_after = connection.hmget(
            worker_key(worker_name), WORKER_HEARTBEAT_FIELD, WORKER_DEATH_FIELD, DEAD_AFTER_FIELD
        )
        if death is not None:
            return True
        last = utcparse(as_text(beat)).timestamp() if beat is not None else None
        return self.is_silent(last, parse_number(dead_after))


def parse_number(raw: bytes | str | None) -> float | None:
    """A float stored in Redis, or None when absent or unreadable."""
    if raw is None:
        return None
    try:
        return float(as_text(raw))
    except ValueError:
        return None
