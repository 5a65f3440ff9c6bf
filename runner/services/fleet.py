"""The fleet as operators see it: workers, queue depths, requeueing failed jobs, compacting queues."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from rq import Queue
from rq.registry import (
    FailedJobRegistry,
)
from rq.serializers import JSONSerializer
from rq.utils import as_text

from runner.authoring.registry import Registry
from runner.errors import FunctionNotFound, QueueNotFound
from runner.redis_connection import REDIS_ERRORS, redis_unavailable
from runner.rq_seam.keys import job_key
from runner.rq_seam.queues import queue_for
from runner.rq_seam.worker_reads import WorkerSlots, read_live_workers
from runner.services.backends import Backends
from runner.services.callbacks import CALLBACK_QUEUE
from runner.services.control import requeue_ended_job
from runner.services.job_views import iso_time
from runner.services.metrics import read_queue_metrics

# A queue's ids are looked at this many at a time when it is compacted.
COMPACT_BATCH = 200
# Queues a worker with no arguments serves, highest priority first; any other queue a
# function declares comes after these, and `default` last.
QUEUE_PRIORITY = ("ai_processing", "demo_tasks")


@dataclass(frozen=True)
class WorkerInfo:
    """One RQ worker as Redis last heard of it."""

    name: str
    state: str
    queues: list[str]
    current_job: str | None
    successful_jobs: int
    failed_jobs: int
    total_working_seconds: float
    hostname: str | None
    pid: int | None
    started_at: str | None
    last_heartbeat: str | None
    # Jobs it runs at once (RUNNER_WORKER_SLOTS for async and threaded functions), in use now, and free.
    slots: WorkerSlots
    # The worst lag of its event loop over its last heartbeat interval (0 when it has none).
    loop_lag_seconds: float

    def to_dict(self) -> dict[str, Any]:
        """The JSON body of a worker."""
        return asdict(self)


@dataclass(frozen=True)
class QueueDepths:
    """How many jobs of one queue sit in each of RQ's states."""

    name: str
    queued: int
    started: int
    scheduled: int
    deferred: int
    failed: int
    finished: int
    canceled: int

    def to_dict(self) -> dict[str, Any]:
        """The JSON body of a queue."""
        return asdict(self)


@dataclass(frozen=True)
class RequeueOutcome:
    """Which failed jobs went back on their queue."""

    requeued: int
    job_ids: list[str]

    def to_dict(self) -> dict[str, Any]:
        """The JSON body of a requeue."""
        return asdict(self)


def default_queues(registry: Registry) -> list[str]:
    """Every queue the functions use, in priority order, then `default`, then completion `callbacks`."""
    declared = set(registry.queues())
    ordered = [name for name in QUEUE_PRIORITY if name in declared]
    ordered += sorted(declared - set(QUEUE_PRIORITY) - {"default", CALLBACK_QUEUE})
    return ordered + ["default", CALLBACK_QUEUE]


def list_workers(backends: Backends) -> list[WorkerInfo]:
    """Every live worker registered in Redis, by name (two round trips, whatever their number)."""
    try:
        records = read_live_workers(backends.connection)
    except REDIS_ERRORS as exc:
        raise redis_unavailable() from exc
    return [
        WorkerInfo(
            name=record.name,
            state=record.state,
            queues=record.queues,
            current_job=record.current_job,
            successful_jobs=record.successful_jobs,
            failed_jobs=record.failed_jobs,
            total_working_seconds=round(record.total_working_seconds, 6),
            hostname=record.hostname,
            pid=record.pid,
            started_at=iso_time(record.started_at),
            last_heartbeat=iso_time(record.last_heartbeat),
            slots=record.slots,
            loop_lag_seconds=round(record.loop_lag_seconds, 6),
        )
        for record in records
    ]


def known_queues(backends: Backends, registry: Registry) -> list[str]:
    """Every queue a worker serves by default (functions' queues, `default`, `callbacks`) and any other Redis knows."""
    try:
        seen = {queue.name for queue in Queue.all(connection=backends.connection, serializer=JSONSerializer)}
    except REDIS_ERRORS as exc:
        raise redis_unavailable() from exc
    return sorted(seen | set(default_queues(registry)))


def queue_depths(backends: Backends, registry: Registry) -> list[QueueDepths]:
    """Job counts per state of every known queue (read only: RQ's `.count` would clean registries)."""
    try:
        fleet = read_queue_metrics(backends.connection, default_queues(registry))
    except REDIS_ERRORS as exc:
        raise redis_unavailable() from exc
    return [QueueDepths(name=queue.name, queued=queue.depth, **queue.registries) for queue in fleet.queues]


def compact_queue(backends: Backends, registry: Registry, name: str) -> int:
    """Drop the ids of jobs Redis no longer holds from queue `name`; how many were dropped.

    RQ's Queue.compact renames the queue away while it copies the live ids back one round trip at a
    time (workers meanwhile see an empty queue, and new jobs end up before old ones), and answers a
    Redis error for an empty queue. Here each dead id is removed where it stands, a batch at a time.
    """
    names = known_queues(backends, registry)
    if name not in names:
        raise QueueNotFound(f"No queue is named {name!r}.", details={"known": names})
    key = queue_for(name, backends.connection).key
    dropped = 0
    try:
        start = 0
        while batch := [as_text(item) for item in backends.connection.lrange(key, start, start + COMPACT_BATCH - 1)]:
            pipeline = backends.connection.pipeline(transaction=False)
            for job_id in batch:
                pipeline.exists(job_key(job_id))
            dead = [job_id for job_id, alive in zip(batch, pipeline.execute(), strict=True) if not alive]
            for job_id in dead:
                dropped += int(backends.connection.lrem(key, 1, job_id))
            start += len(batch) - len(dead)
    except REDIS_ERRORS as exc:
        raise redis_unavailable() from exc
    return dropped


def requeue_failed(
    backends: Backends, registry: Registry, *, queue: str | None = None, function: str | None = None
) -> RequeueOutcome:
    """Put failed jobs (of one queue and/or function) back on their queue, with their retry policy again.

    Each job's SQL row goes back to `queued` too, unless a worker has already written a newer state.
    """
    if function is not None and function not in registry:
        raise FunctionNotFound(f"No function is named {function!r}.", details={"known": [s.name for s in registry]})
    names = known_queues(backends, registry)
    if queue is not None and queue not in names:
        raise QueueNotFound(f"No queue is named {queue!r}.", details={"known": names})
    requeued: list[str] = []
    try:
        for name in [queue] if queue is not None else names:
            requeued += _requeue_queue(backends, registry, name, function)
    except REDIS_ERRORS as exc:
        raise redis_unavailable() from exc
    return RequeueOutcome(requeued=len(requeued), job_ids=requeued)


def _requeue_queue(backends: Backends, registry: Registry, name: str, function: str | None) -> list[str]:
    failed = FailedJobRegistry(queue=queue_for(name, backends.connection))
    return [job_id for job_id in failed.get_job_ids()
            if requeue_ended_job(job_id, backends, registry, function=function)]
