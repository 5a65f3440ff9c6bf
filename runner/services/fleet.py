"""The fleet as operators see it: workers, queue depths, and requeueing failed jobs."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from rq import Queue, Worker
from rq.exceptions import InvalidJobOperation
from rq.job import Job
from rq.registry import (
    FailedJobRegistry,
)
from rq.serializers import JSONSerializer

from runner.authoring.registry import Registry
from runner.errors import FunctionNotFound, QueueNotFound
from runner.journal.reconcile import write_or_defer
from runner.rq_seam.queues import queue_for
from runner.services.backends import REDIS_ERRORS, Backends, redis_unavailable
from runner.services.callbacks import CALLBACK_QUEUE
from runner.services.job_views import iso_time
from runner.services.metrics import read_queue_metrics
from runner.store.models import utcnow

# Failed jobs are fetched from Redis this many at a time.
REQUEUE_BATCH = 200
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
    """Every worker registered in Redis, by name."""
    try:
        workers = Worker.all(connection=backends.connection, serializer=JSONSerializer)
    except REDIS_ERRORS as exc:
        raise redis_unavailable() from exc
    return [
        WorkerInfo(
            name=worker.name,
            state=str(worker.get_state()),
            queues=worker.queue_names(),
            current_job=worker.get_current_job_id(),
            successful_jobs=worker.successful_job_count,
            failed_jobs=worker.failed_job_count,
            total_working_seconds=round(float(worker.total_working_time), 6),
            hostname=worker.hostname,
            pid=worker.pid,
            started_at=iso_time(worker.birth_date),
            last_heartbeat=iso_time(worker.last_heartbeat),
        )
        for worker in sorted(workers, key=lambda worker: worker.name)
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
    job_ids = failed.get_job_ids()
    requeued = []
    for start in range(0, len(job_ids), REQUEUE_BATCH):
        batch = job_ids[start : start + REQUEUE_BATCH]
        jobs = Job.fetch_many(batch, connection=backends.connection, serializer=JSONSerializer)
        for job in jobs:
            if job is None:
                continue  # expired between the listing and the fetch
            job_function = str(job.meta.get("function") or "")
            if function is not None and job_function != function:
                continue
            if _requeue_job(backends, registry, failed, job, job_function):
                requeued.append(job.id)
    return requeued


def _requeue_job(backends: Backends, registry: Registry, failed: FailedJobRegistry, job: Job, function: str) -> bool:
    if function in registry:
        spec = registry.get(function)
        # A requeued job gets its whole retry policy again, as a fresh invocation would.
        job.retries_left = spec.retries or None
        job.retry_intervals = list(spec.backoff) or [0]
    job.meta.pop("error", None)
    job.meta["progress"] = {"percent": 0, "message": "queued"}
    requested_at = utcnow()
    try:
        failed.requeue(job)
    except InvalidJobOperation:
        return False  # another requeue (or a retry) took it first
    # As of the request, so a worker that already started the job keeps its newer row.
    write_or_defer(backends.store, backends.connection, job.id, as_of=requested_at, status="queued", error=None,
                   result=None, progress_percent=0, progress_message="queued", started_at=None, ended_at=None)
    return True
