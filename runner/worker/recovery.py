"""Jobs whose worker died: retried per their policy, or failed with `WorkerDied`, exactly once.

A runner worker heartbeats each execution it runs (see runner.worker.liveness). Every live worker,
between jobs and while it watches its own job, looks through the started registries of its
queues for executions silent past their window, and for jobs claimed by dead workers (see
runner.worker.claims). Each execution is settled in one Redis transaction that watches the job,
so when several workers find it at once only one settles it; the transaction carries the row's
journal entry (runner.worker.attempts), and a `retried` or `failed` lifecycle event follows. With
tracing on, the settling process records the lost attempt's span, which its own process never ended.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import cast

import redis
from rq.exceptions import DeserializationError
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.utils import as_text, parse_composite_key

from runner import tracing
from runner.rq_seam.bookkeeping import RunnerJob, fence_of, queue_forget_execution
from runner.rq_seam.job_reads import job_status
from runner.rq_seam.keys import (
    DEAD_AFTER_FIELD,
    EXECUTION_HEARTBEAT_FIELD,
    WORKER_DEATH_FIELD,
    WORKER_QUEUES_FIELD,
    WORKERS_KEY,
    execution_key,
    job_key,
    registry_key,
    worker_key,
    workers_by_queue_key,
)
from runner.rq_seam.queues import queue_for
from runner.status import JobStatus
from runner.worker.attempts import function_of, queue_abandoned
from runner.worker.claims import claimants, forget_claimant, return_claims
from runner.worker.liveness import Liveness, parse_number

log = logging.getLogger(__name__)

WORKER_DIED_REASON = "worker died"
WORKER_STOPPED_REASON = "worker stopped"


@dataclass(frozen=True)
class StartedEntry:
    """One execution listed in a queue's started registry."""

    queue: str
    job_id: str
    execution_id: str

    @property
    def member(self) -> str:
        """The entry as RQ stores it in the registry."""
        return f"{self.job_id}:{self.execution_id}"


@dataclass(frozen=True)
class Recovery:
    """What became of a job whose execution was abandoned."""

    job_id: str
    function: str
    status: str
    event: str
    attempt: int
    error: dict[str, str] | None
    counted: bool


def started_entries(connection: redis.Redis, queue: str) -> list[tuple[StartedEntry, float]]:
    """The executions in a queue's started registry, each with RQ's expiry score."""
    members = cast(list[tuple[bytes, float]], connection.zrange(registry_key("started", queue), 0, -1, withscores=True))
    return [(StartedEntry(queue, *parse_composite_key(as_text(member))), float(score)) for member, score in members]


def find_abandoned(connection: redis.Redis, queue_names: Sequence[str], liveness: Liveness) -> list[StartedEntry]:
    """Executions in these queues' started registries whose worker stopped heartbeating."""
    found: list[StartedEntry] = []
    for name in queue_names:
        entries = started_entries(connection, name)
        if not entries:
            continue
        with connection.pipeline(transaction=False) as pipeline:
            for entry, _score in entries:
                pipeline.hmget(execution_key(entry.job_id, entry.execution_id), EXECUTION_HEARTBEAT_FIELD,
                               DEAD_AFTER_FIELD)
            details = pipeline.execute()
        for (entry, score), (beat, dead_after) in zip(entries, details, strict=True):
            window = parse_number(dead_after)
            if window is None:
                # Not run by a runner worker (or its record expired): RQ's own expiry score decides.
                abandoned = liveness.past(score)
            else:
                abandoned = liveness.is_silent(parse_number(beat), window)
            if abandoned:
                found.append(entry)
    return found


def recover_entry(connection: redis.Redis, entry: StartedEntry, *, reason: str = WORKER_DIED_REASON,
                  count_attempt: bool = True) -> Recovery | None:
    """Retry, requeue or fail the job of an abandoned execution; None if someone else settled it."""
    with connection.pipeline() as pipeline:
        try:
            pipeline.watch(job_key(entry.job_id))  # type: ignore[no-untyped-call]
            if pipeline.zscore(registry_key("started", entry.queue), entry.member) is None:
                return None  # it ended, or another worker recovered it first
            fields = cast(dict[bytes, bytes], pipeline.hgetall(job_key(entry.job_id)))
            job: Job | None = None
            if fields:
                job = RunnerJob(entry.job_id, connection=connection, serializer=JSONSerializer)
                try:
                    job.restore(fields)  # type: ignore[arg-type]
                except DeserializationError:
                    log.error("abandoned job %s is not a runner job (not JSON): left to RQ", entry.job_id)
                    return None
                # The settlement belongs to the attempt that was running: its writes are the ones that count.
                job.fence = fence_of(fields)  # type: ignore[attr-defined]
            pipeline.multi()
            if job is None:
                pipeline.zrem(registry_key("started", entry.queue), entry.member)
                pipeline.delete(execution_key(entry.job_id, entry.execution_id))
                pipeline.execute()
                log.warning("abandoned execution %s of a job that no longer exists: dropped", entry.member)
                return None
            # The lost attempt, for its span: read before the settlement changes them.
            began, attempt_started = job_status(job) == JobStatus.STARTED, job.started_at
            running_attempt = max(int(job.meta.get("attempts", 0)), 1)
            queue_forget_execution(pipeline, job, entry.execution_id)
            settled = queue_abandoned(pipeline, job, queue_for(job.origin, connection), connection,
                                      reason=reason, count_attempt=count_attempt)
            settled_at = tracing.clock()  # the lost attempt's end: before its retry can start (None when off)
            pipeline.execute()
        except redis.WatchError:
            return None  # the job changed under us (it ended, or another worker got there first)
    recovery = Recovery(job.id, function_of(job), settled.status, settled.event, settled.attempt, settled.error,
                        settled.counted)
    log.warning("job %s (%s): %s; %s, attempt %d", job.id, recovery.function, reason, recovery.status,
                recovery.attempt)
    settled.after(True)
    if began and settled_at is not None:  # its process never ended the attempt's own span
        tracing.record_lost_attempt(job.meta.get(tracing.TRACEPARENT), running_attempt, attempt_started, settled_at,
                                    reason, tracing.job_attributes(job.id, recovery.function, job.origin))
    return recovery


def settle_dead_workers(connection: redis.Redis, liveness: Liveness, own_name: str) -> list[str]:
    """Return the claims of dead runner workers to their queues and unregister them; return their names."""
    dead: list[str] = []
    for name in claimants(connection):
        if name == own_name or not liveness.worker_is_dead(connection, name):
            continue
        settle_worker(connection, name)
        dead.append(name)
    return dead


def settle_worker(connection: redis.Redis, name: str) -> None:
    """For a worker that is gone: return its claims and unregister it."""
    return_claims(connection, name)
    _unregister_silent_worker(connection, name)
    forget_claimant(connection, name)


def _unregister_silent_worker(connection: redis.Redis, name: str) -> None:
    # A killed worker never says goodbye: without this, dashboards and metrics count it for minutes.
    key = worker_key(name)
    queues, death = connection.hmget(key, WORKER_QUEUES_FIELD, WORKER_DEATH_FIELD)
    if death is not None:
        return  # it exited cleanly and unregistered itself
    with connection.pipeline() as pipeline:
        pipeline.srem(WORKERS_KEY, key)
        for queue in as_text(queues).split(",") if queues else []:
            pipeline.srem(workers_by_queue_key(queue), key)
        pipeline.delete(key)
        pipeline.execute()
    log.warning("worker %s stopped sending heartbeats: presumed dead, unregistered", name)


def recover_abandoned_jobs(connection: redis.Redis, queue_names: Sequence[str], liveness: Liveness, *,
                           own_name: str, running: Collection[str] = ()) -> list[Recovery]:
    """One recovery pass: settle abandoned executions (but not the ids in `running`), then dead workers' claims."""
    recovered = []
    for entry in find_abandoned(connection, queue_names, liveness):
        if entry.execution_id in running:
            continue
        recovery = recover_entry(connection, entry)
        if recovery is not None:
            recovered.append(recovery)
    settle_dead_workers(connection, liveness, own_name)
    return recovered
