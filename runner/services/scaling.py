"""How much work waits for each queue, and how many workers it wants: the one reading behind the
worker pool (runner.worker.pool), `GET /scaling` and the scaling gauges of `/metrics`.

Per queue, read in at most three round trips whatever the queues hold (no command walks a list or a
registry; only the workers, when counted, are read one hash each):
- `queued`: LLEN of the queue;
- `running`: live members of the started registry (ZCOUNT from now on: a member's score is the
  moment its heartbeat expires, so a dead worker's job stops counting by itself);
- `scheduled_due`: members of the scheduled registry due within SCHEDULED_HORIZON_SECONDS (ZCOUNT);
- `oldest_age_seconds`: how long the job at the head of the queue has waited (LINDEX 0, enqueued_at);
- `workers`: live RQ workers serving the queue;
- `desired_workers`: queued + running + scheduled_due (a worker runs one job at a time), capped by
  the sum of the `concurrency` limits of the queue's functions when every one of them has one.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import redis

from runner.authoring.registry import Registry
from runner.redis_connection import REDIS_ERRORS, redis_unavailable
from runner.rq_seam.keys import QUEUE_KEY_PREFIX, QUEUES_KEY, queue_key, registry_key
from runner.services.backends import Backends
from runner.services.fleet import default_queues
from runner.services.metrics import enqueued_at, live_workers_by_queue
from runner.store.models import utcnow

# A scheduled job due this soon counts as load: a worker (and its RQ scheduler) should be there for it.
SCHEDULED_HORIZON_SECONDS = 60.0


@dataclass(frozen=True)
class QueueLoad:
    """The scaling figures of one queue."""

    queue: str
    queued: int
    running: int
    scheduled_due: int
    oldest_age_seconds: float
    workers: int
    desired_workers: int

    def to_dict(self) -> dict[str, Any]:
        """The JSON body of a queue's figures."""
        return asdict(self)


def concurrency_caps(registry: Registry) -> dict[str, int | None]:
    """Per queue of the registry: the sum of its functions' `concurrency`, or None when one has no limit."""
    caps: dict[str, int | None] = {}
    for spec in registry:
        if spec.queue in caps and caps[spec.queue] is None:
            continue
        caps[spec.queue] = None if spec.concurrency is None else (caps.get(spec.queue) or 0) + spec.concurrency
    return caps


def desired_workers(queued: int, running: int, scheduled_due: int, cap: int | None) -> int:
    """Workers a queue wants: one per job waiting, running or due soon, at most `cap` (None: no cap)."""
    wanted = queued + running + scheduled_due
    return wanted if cap is None else min(wanted, cap)


def scaling_queues(connection: redis.Redis, queue_names: Iterable[str]) -> list[str]:
    """These queues and every queue RQ knows, sorted (what `GET /scaling` and `/metrics` report)."""
    known = {(raw.decode() if isinstance(raw, bytes) else raw).removeprefix(QUEUE_KEY_PREFIX)
             for raw in connection.smembers(QUEUES_KEY)}
    return sorted(set(queue_names) | known)


def read_load(connection: redis.Redis, queue_names: Sequence[str], caps: Mapping[str, int | None], *,
              count_workers: bool = True, now: float | None = None) -> list[QueueLoad]:
    """The scaling figures of each queue in `queue_names`, in that order (`workers` is 0 unless counted)."""
    now = time.time() if now is None else now
    pipe = connection.pipeline(transaction=False)
    for name in queue_names:
        pipe.llen(queue_key(name))
        pipe.lindex(queue_key(name), 0)
        pipe.zcount(registry_key("started", name), now, "+inf")
        pipe.zcount(registry_key("scheduled", name), "-inf", now + SCHEDULED_HORIZON_SECONDS)
    replies = pipe.execute()
    rows = [replies[index * 4:(index + 1) * 4] for index in range(len(queue_names))]
    heads = [row[1].decode() for row in rows if row[1] is not None]
    stamps = enqueued_at(connection, heads) if heads else {}
    workers = live_workers_by_queue(connection)[0] if count_workers else {}
    moment = utcnow()
    loads = []
    for name, (queued, head, running, scheduled) in zip(queue_names, rows, strict=True):
        since = stamps.get(head.decode()) if head is not None else None
        loads.append(QueueLoad(
            queue=name,
            queued=int(queued),
            running=int(running),
            scheduled_due=int(scheduled),
            oldest_age_seconds=round(max(0.0, (moment - since).total_seconds()), 3) if since else 0.0,
            workers=workers.get(name, 0),
            desired_workers=desired_workers(int(queued), int(running), int(scheduled), caps.get(name)),
        ))
    return loads


def next_scheduled_at(connection: redis.Redis, queue_names: Sequence[str]) -> float | None:
    """When the earliest scheduled job of these queues is due (epoch seconds), or None when none is."""
    pipe = connection.pipeline(transaction=False)
    for name in queue_names:
        pipe.zrange(registry_key("scheduled", name), 0, 0, withscores=True)
    scores = [float(reply[0][1]) for reply in pipe.execute() if reply]
    return min(scores) if scores else None


def scaling_figures(backends: Backends, registry: Registry) -> list[QueueLoad]:
    """The figures of every queue the functions use and every queue RQ knows (`GET /scaling`)."""
    try:
        names = scaling_queues(backends.connection, default_queues(registry))
        return read_load(backends.connection, names, concurrency_caps(registry))
    except REDIS_ERRORS as exc:
        raise redis_unavailable() from exc
