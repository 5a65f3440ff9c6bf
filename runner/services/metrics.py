"""Job metrics kept in Redis, so every web process, worker and machine adds to the same numbers.

The lifecycle listener `record_job_event` counts each outcome and observes each attempt's
duration with two or three hash increments sent in one round trip. At scrape time
`read_job_metrics` and `read_queue_metrics` read them back together with RQ's own queue,
registry and worker keys; the API turns both into Prometheus text (`api/metrics.py`).

Keys (fields are ``<function>|<outcome>``, ``<function>|<bucket upper bound>`` or ``<function>``)::

    runner:metrics:invocations        accepted/finished/failed/stopped/retried counts
    runner:metrics:duration:buckets   observations per bucket (not cumulative: one write each)
    runner:metrics:duration:sum       seconds observed in total
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import redis
from redis.client import Pipeline
from rq.utils import utcparse

from runner.rq_seam.keys import (
    ENQUEUED_AT_FIELD,
    QUEUE_KEY_PREFIX,
    QUEUES_KEY,
    REGISTRY_KEY_TEMPLATES,
    job_key,
)
from runner.rq_seam.worker_reads import WorkerRecord, read_live_workers
from runner.services.lifecycle import JobEvent
from runner.store.models import utcnow

INVOCATIONS_KEY = "runner:metrics:invocations"
DURATION_BUCKETS_KEY = "runner:metrics:duration:buckets"
DURATION_SUM_KEY = "runner:metrics:duration:sum"
FIELD_SEPARATOR = "|"

OUTCOMES = ("accepted", "finished", "failed", "stopped", "retried")
# An attempt that ended (well or not) has a duration; `accepted` has none.
TIMED_OUTCOMES = frozenset({"finished", "failed", "stopped", "retried"})
# Upper bounds in seconds: from quick demo jobs to the longest timeouts functions declare.
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, math.inf)


def record_job_event(connection: redis.Redis, event: JobEvent) -> None:
    """Lifecycle listener: count the outcome and observe the attempt's duration, in one round trip (or none,
    given a pipeline)."""
    if event.event not in OUTCOMES:
        return
    pipe = connection if isinstance(connection, Pipeline) else connection.pipeline(transaction=False)
    pipe.hincrby(INVOCATIONS_KEY, _field(event.function, event.event), 1)
    if event.event in TIMED_OUTCOMES and event.duration_seconds is not None:
        seconds = max(0.0, event.duration_seconds)
        bound = next(bound for bound in DURATION_BUCKETS if seconds <= bound)
        pipe.hincrby(DURATION_BUCKETS_KEY, _field(event.function, repr(bound)), 1)
        pipe.hincrbyfloat(DURATION_SUM_KEY, event.function, seconds)
    if pipe is not connection:
        pipe.execute()


def _field(function: str, part: str) -> str:
    return f"{function}{FIELD_SEPARATOR}{part}"


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _split(raw: bytes) -> tuple[str, str]:
    # Function names are identifiers; split at the last separator all the same.
    function, _, part = raw.decode().rpartition(FIELD_SEPARATOR)
    return function, part


@dataclass(frozen=True)
class DurationHistogram:
    """Cumulative counts per upper bound (the last one infinite) and the seconds observed."""

    buckets: tuple[tuple[float, int], ...]
    total_seconds: float

    @property
    def count(self) -> int:
        """How many durations were observed."""
        return self.buckets[-1][1]


@dataclass(frozen=True)
class JobMetrics:
    """Outcome counts per (function, outcome) and a duration histogram per function."""

    invocations: dict[tuple[str, str], int]
    durations: dict[str, DurationHistogram]

    def functions(self) -> set[str]:
        """Every function with a count or a duration."""
        return {function for function, _ in self.invocations} | set(self.durations)


def read_job_metrics(connection: redis.Redis) -> JobMetrics:
    """The counters and histograms every process has written so far."""
    pipe = connection.pipeline(transaction=False)
    pipe.hgetall(INVOCATIONS_KEY)
    pipe.hgetall(DURATION_BUCKETS_KEY)
    pipe.hgetall(DURATION_SUM_KEY)
    counts, buckets, sums = pipe.execute()
    invocations = {_split(raw): int(value) for raw, value in counts.items()}
    observed: dict[str, Counter[float]] = {}
    for raw, value in buckets.items():
        function, bound = _split(raw)
        observed.setdefault(function, Counter())[float(bound)] += int(value)
    totals = {raw.decode(): float(value) for raw, value in sums.items()}
    durations = {
        function: _histogram(observed.get(function, Counter()), totals.get(function, 0.0))
        for function in set(observed) | set(totals)
    }
    return JobMetrics(invocations=invocations, durations=durations)


def empty_histogram() -> DurationHistogram:
    """A histogram with no observations (for functions that have not run yet)."""
    return _histogram(Counter(), 0.0)


def _histogram(observed: Counter[float], total_seconds: float) -> DurationHistogram:
    # Bounds stored by an older bucket layout still land in the first current bucket that holds them.
    cumulative = tuple(
        (bound, sum(count for stored, count in observed.items() if stored <= bound)) for bound in DURATION_BUCKETS
    )
    return DurationHistogram(buckets=cumulative, total_seconds=total_seconds)


@dataclass(frozen=True)
class QueueMetrics:
    """One queue: waiting jobs, the age of the oldest, jobs per registry, workers serving it."""

    name: str
    depth: int
    oldest_job_age_seconds: float
    registries: dict[str, int]
    workers: int


@dataclass(frozen=True)
class FleetMetrics:
    """Every queue's numbers and the live workers."""

    queues: list[QueueMetrics]
    # The live workers, by name, with their slots.
    workers: list[WorkerRecord]

    @property
    def workers_alive(self) -> int:
        """How many workers are alive."""
        return len(self.workers)


def read_queue_metrics(
    connection: redis.Redis, queue_names: Iterable[str], now: datetime | None = None
) -> FleetMetrics:
    """Depth, oldest-job age and registry sizes of these queues and of every queue RQ knows."""
    now = now or utcnow()
    workers = read_live_workers(connection)
    served = workers_by_queue(workers)
    known = {_text(raw).removeprefix(QUEUE_KEY_PREFIX)
             for raw in connection.smembers(QUEUES_KEY)}
    names = sorted(set(queue_names) | known | set(served))
    pipe = connection.pipeline(transaction=False)
    for name in names:
        key = QUEUE_KEY_PREFIX + name
        pipe.llen(key)
        pipe.lindex(key, 0)
        for template in REGISTRY_KEY_TEMPLATES.values():
            pipe.zcard(template.format(name))
    replies = pipe.execute()
    width = 2 + len(REGISTRY_KEY_TEMPLATES)
    rows = [replies[index * width:(index + 1) * width] for index in range(len(names))]
    heads = [row[1].decode() if row[1] is not None else None for row in rows]
    enqueued = enqueued_at(connection, [head for head in heads if head])
    queues = []
    for name, row, head in zip(names, rows, heads, strict=True):
        since = enqueued.get(head) if head else None
        queues.append(
            QueueMetrics(
                name=name,
                depth=int(row[0]),
                oldest_job_age_seconds=max(0.0, (now - since).total_seconds()) if since else 0.0,
                registries={status: int(count) for status, count in zip(REGISTRY_KEY_TEMPLATES, row[2:], strict=True)},
                workers=served.get(name, QueueWorkers()).workers,
            )
        )
    return FleetMetrics(queues=queues, workers=workers)


def enqueued_at(connection: redis.Redis, job_ids: list[str]) -> dict[str, datetime]:
    """When each of these jobs was enqueued (a job gone from Redis is left out), in one round trip."""
    pipe = connection.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hget(job_key(job_id), ENQUEUED_AT_FIELD)
    stamps: dict[str, datetime] = {}
    for job_id, raw in zip(job_ids, pipe.execute(), strict=True):
        if raw:  # a job deleted while its id still waits in the queue has no age
            stamps[job_id] = utcparse(raw.decode())
    return stamps


@dataclass(frozen=True)
class QueueWorkers:
    """The live workers serving one queue: how many, and their free slots together."""

    workers: int = 0
    free_slots: int = 0


def workers_by_queue(workers: Iterable[WorkerRecord]) -> dict[str, QueueWorkers]:
    """Per queue the workers serve: how many serve it and their free slots (a worker counts in each of its queues)."""
    served: dict[str, QueueWorkers] = {}
    for worker in workers:
        for name in worker.queues:
            before = served.get(name, QueueWorkers())
            served[name] = QueueWorkers(before.workers + 1, before.free_slots + worker.slots.free)
    return served
