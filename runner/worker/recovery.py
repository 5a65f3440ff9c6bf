"""Jobs whose worker died: retried per their policy, or failed with `WorkerDied`, exactly once.

A runner worker heartbeats each execution it runs (see runner.worker.liveness). Every live worker,
between jobs and while it watches its own job, looks through the started registries of its
queues for executions silent past their window, and for jobs claimed by dead workers (see
runner.worker.claims). Each execution is settled in one Redis transaction that watches the job, so
when several workers find it at once only one settles it. Then the SQL row follows and a
`retried` or `failed` lifecycle event is emitted.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, cast

import redis
from redis.client import Pipeline
from rq.exceptions import DeserializationError, NoSuchJobError
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import ScheduledJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.utils import as_text, now, parse_composite_key
from rq.worker_registration import REDIS_WORKER_KEYS, WORKERS_BY_QUEUE_KEY

from runner.journal.reconcile import PENDING_WRITES_KEY, write_or_defer
from runner.journal.write_behind import adopt_journal
from runner.rq_seam.queues import queue_for
from runner.services.lifecycle import JobEvent, emit
from runner.store.models import utcnow
from runner.store.sql_store import Store
from runner.worker.claims import claimants, forget_claimant, return_claims
from runner.worker.liveness import DEAD_AFTER_FIELD, WORKER_KEY_PREFIX, Liveness, execution_key, parse_number

log = logging.getLogger(__name__)

WORKER_DIED = "WorkerDied"
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
    queue: str
    event: str
    status: str
    attempt: int
    error: dict[str, str] | None = None
    counted: bool = True
    store_values: dict[str, Any] = field(default_factory=dict)
    callback_url: str | None = None


def find_abandoned(connection: redis.Redis, queue_names: Sequence[str], liveness: Liveness) -> list[StartedEntry]:
    """Executions in these queues' started registries whose worker stopped heartbeating."""
    found: list[StartedEntry] = []
    for name in queue_names:
        key = StartedJobRegistry.key_template.format(name)
        members = cast(list[tuple[bytes, float]], connection.zrange(key, 0, -1, withscores=True))
        if not members:
            continue
        entries = [StartedEntry(name, *parse_composite_key(as_text(member))) for member, _score in members]
        with connection.pipeline(transaction=False) as pipeline:
            for entry in entries:
                pipeline.hmget(execution_key(entry.job_id, entry.execution_id), "last_heartbeat", DEAD_AFTER_FIELD)
            details = pipeline.execute()
        for entry, (_member, score), (beat, dead_after) in zip(entries, members, details, strict=True):
            window = parse_number(dead_after)
            if window is None:
                # Not run by a runner worker (or its record expired): RQ's own expiry score decides.
                abandoned = liveness.past(float(score))
            else:
                abandoned = liveness.is_silent(parse_number(beat), window)
            if abandoned:
                found.append(entry)
    return found


def recover_entry(
    connection: redis.Redis,
    entry: StartedEntry,
    *,
    store: Store | None,
    reason: str = WORKER_DIED_REASON,
    count_attempt: bool = True,
) -> Recovery | None:
    """Retry, requeue or fail the job of an abandoned execution; None if someone else settled it."""
    registry_key = StartedJobRegistry.key_template.format(entry.queue)
    with connection.pipeline() as pipeline:
        try:
            pipeline.watch(Job.key_for(entry.job_id))  # type: ignore[no-untyped-call]
            if pipeline.zscore(registry_key, entry.member) is None:
                return None  # it ended, or another worker recovered it first
            try:
                job: Job | None = Job.fetch(entry.job_id, connection=connection, serializer=JSONSerializer)
            except NoSuchJobError:
                job = None
            except DeserializationError:
                log.error("abandoned job %s is not a runner job (not JSON): left to RQ", entry.job_id)
                return None
            pipeline.multi()
            pipeline.zrem(registry_key, entry.member)
            pipeline.delete(execution_key(entry.job_id, entry.execution_id))
            pipeline.zrem(f"rq:executions:{entry.job_id}", entry.execution_id)
            recovery = None if job is None else _settle(job, pipeline, connection, count_attempt)
            as_of = utcnow()
            pipeline.execute()
        except redis.WatchError:
            return None  # the job changed under us (it ended, or another worker got there first)
    if recovery is None:
        log.warning("abandoned execution %s of a job that no longer exists: dropped", entry.member)
        return None
    log.warning("job %s (%s): %s; %s, attempt %d", recovery.job_id, recovery.function, reason,
                recovery.status, recovery.attempt)
    if store is not None:
        write_or_defer(store, connection, recovery.job_id, as_of=as_of, **recovery.store_values)
    emit(connection, JobEvent(recovery.event, recovery.job_id, recovery.function, recovery.queue,
                              attempt=recovery.attempt, error=recovery.error, status=recovery.status,
                              callback_url=recovery.callback_url, extra={"reason": reason}))
    return recovery


def _settle(job: Job, pipeline: Pipeline, connection: redis.Redis, count_attempt: bool) -> Recovery:
    """Queue the commands that retry, requeue or fail `job`; return what they will do."""
    queue = queue_for(job.origin, connection)
    function = str(job.meta.get("function") or job.func_name)
    began = job.get_status(refresh=False) == JobStatus.STARTED
    attempt = int(job.meta.get("attempts", 0))
    if not began or not count_attempt:
        # The attempt never began, or was cut short by a stop: it does not count.
        if began:
            attempt = max(0, attempt - 1)
        job.meta.update(attempts=attempt, progress={"percent": 0, "message": "requeued"})
        queue._enqueue_job(job, pipeline=pipeline, at_front=True)
        values = {"status": JobStatus.QUEUED.value, "attempts": attempt, "progress_percent": 0,
                  "progress_message": "requeued"}
        return Recovery(job.id, function, job.origin, "retried", JobStatus.QUEUED.value, attempt,
                        counted=False, store_values=values)
    attempt = max(attempt, 1)
    retries_left = int(job.retries_left or 0)
    error = {
        "type": WORKER_DIED,
        "message": f"The worker running this job died (attempt {attempt} of {attempt + retries_left}).",
    }
    job.meta.update(attempts=attempt, error=error)
    if retries_left:
        status = _retry(job, queue, pipeline)
        values = {"status": status, "attempts": attempt, "error": error, "ended_at": None}
        return Recovery(job.id, function, job.origin, "retried", status, attempt, error, store_values=values)
    job.ended_at = now()
    job.set_status(JobStatus.FAILED, pipeline=pipeline)
    job.save(pipeline=pipeline)
    job._handle_failure(f"{WORKER_DIED}: {error['message']}", pipeline, worker_name=job.worker_name or "")
    values = {"status": JobStatus.FAILED.value, "attempts": attempt, "error": error, "ended_at": utcnow()}
    return Recovery(job.id, function, job.origin, "failed", JobStatus.FAILED.value, attempt, error,
                    store_values=values, callback_url=job.meta.get("callback_url"))


def _retry(job: Job, queue: Queue, pipeline: Pipeline) -> str:
    """RQ's `Job.retry`, with every write inside the transaction (RQ writes a scheduled retry outside it)."""
    interval = job.get_retry_interval()
    job.retries_left = int(job.retries_left or 0) - 1
    if not interval:
        queue._enqueue_job(job, pipeline=pipeline, at_front=job.enqueue_at_front_on_retry)
        return JobStatus.QUEUED.value
    run_at = now() + timedelta(seconds=interval)
    pipeline.sadd(queue.redis_queues_keys, queue.key)
    queue._persist_job(job, pipeline, status=JobStatus.SCHEDULED)
    pipeline.zadd(ScheduledJobRegistry(queue=queue).key, {job.id: int(run_at.timestamp())})
    return JobStatus.SCHEDULED.value


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
    """For a worker that is gone: return its claims, hand its uncommitted row updates on, unregister it."""
    return_claims(connection, name)
    adopt_journal(connection, name, PENDING_WRITES_KEY)
    _unregister_silent_worker(connection, name)
    forget_claimant(connection, name)


def _unregister_silent_worker(connection: redis.Redis, name: str) -> None:
    # A killed worker never says goodbye: without this, dashboards and metrics count it for minutes.
    key = f"{WORKER_KEY_PREFIX}{name}"
    queues, death = connection.hmget(key, "queues", "death")
    if death is not None:
        return  # it exited cleanly and unregistered itself
    with connection.pipeline() as pipeline:
        pipeline.srem(REDIS_WORKER_KEYS, key)
        for queue in as_text(queues).split(",") if queues else []:
            pipeline.srem(WORKERS_BY_QUEUE_KEY % queue, key)
        pipeline.delete(key)
        pipeline.execute()
    log.warning("worker %s stopped sending heartbeats: presumed dead, unregistered", name)


def recover_abandoned_jobs(
    connection: redis.Redis,
    queue_names: Sequence[str],
    liveness: Liveness,
    *,
    own_name: str,
    store: Store | None,
    running: Collection[str] = (),
) -> list[Recovery]:
    """One recovery pass: settle abandoned executions (but not the ids in `running`), then dead workers' claims."""
    recovered = []
    for entry in find_abandoned(connection, queue_names, liveness):
        if entry.execution_id in running:
            continue
        recovery = recover_entry(connection, entry, store=store)
        if recovery is not None:
            recovered.append(recovery)
    settle_dead_workers(connection, liveness, own_name)
    return recovered
