"""Dependencies (`?after=<id>,...`): a job waits, `deferred`, until every job it names has ended.

Built on RQ's `depends_on` (runner.rq_seam.dependencies keeps RQ's records of it). What RQ leaves
undone, this settles: a deferred job whose parents all finished goes to its queue; one whose
parent failed, was canceled or stopped (or was forgotten by Redis and the store alike) ends
`canceled` with error type `DependencyFailed` naming that parent (runner.services.unstarted). A
parent that is retried is not ended until its last attempt: its dependents wait for that.

Who settles: the API, right after it accepts the job (its parents may have ended already), and
the workers' flows pass (runner.worker.duties), which looks at the waiting jobs of a sorted set
(`runner:flows:deferred`), oldest checks first, a batch at a time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import partial
from typing import Any, cast

import redis
from redis.client import Pipeline
from rq.exceptions import DeserializationError, NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from runner import tracing
from runner.errors import BackendUnavailable, InvalidInput
from runner.journal import entries as journal
from runner.journal.reads import read_history
from runner.journal.rows import row_values
from runner.redis_connection import NOT_ACCEPTED, REDIS_ERRORS, redis_unavailable
from runner.rq_seam.bookkeeping import RunnerJob, changing_job, queue_meta, queue_requeue, retried_on_change
from runner.rq_seam.dependencies import dependency_ids, queue_forget_dependencies
from runner.rq_seam.job_reads import fetch_with_latest_result, job_status
from runner.rq_seam.keys import job_key
from runner.rq_seam.queues import queue_for
from runner.services.backends import Backends
from runner.services.job_views import JOB_ID_PATTERN
from runner.services.parents import parent_statuses
from runner.services.unstarted import end_unstarted_job
from runner.status import JobStatus
from runner.store.sql_store import Store

DEFERRED_KEY = "runner:flows:deferred"
DEPENDENCY_FAILED = "DependencyFailed"
# The most jobs one invocation may wait for.
MAX_AFTER = 100
# A flows pass looks at this many waiting jobs (those looked at least recently first).
SETTLE_BATCH = 200
UNSUCCESSFUL = frozenset({JobStatus.FAILED.value, JobStatus.CANCELED.value, JobStatus.STOPPED.value})


def check_after(after: Sequence[str], backends: Backends) -> None:
    """InvalidInput (422) naming each id in `after` that neither Redis nor the store knows."""
    if not after:
        return
    possible = [job_id for job_id in after if JOB_ID_PATTERN.match(job_id)]
    try:
        with backends.connection.pipeline(transaction=False) as pipeline:
            for job_id in possible:
                pipeline.exists(job_key(job_id))
            in_redis = dict(zip(possible, pipeline.execute(), strict=True))
    except REDIS_ERRORS as exc:
        raise redis_unavailable(NOT_ACCEPTED) from exc
    missing = [job_id for job_id in after if not in_redis.get(job_id)]
    store = read_history(backends.connection, backends.store) if missing else backends.store
    unknown = [job_id for job_id in missing if job_id not in in_redis or store.get(job_id) is None]
    if unknown:
        shown = [job_id[:80] for job_id in unknown]
        raise InvalidInput(f"'after' names {len(unknown)} job(s) that do not exist: {', '.join(shown[:5])}.",
                           details=[{"field": "after", "message": f"no job has the id {job_id!r}",
                                     "type": "unknown_job"} for job_id in shown])


def watch_deferred(pipeline: Pipeline, job_id: str) -> None:
    """Queue the new deferred job's place in the set the flows pass settles (with its enqueue)."""
    pipeline.zadd(DEFERRED_KEY, {job_id: 0})


def failed_parent(parents: Sequence[str], statuses: dict[str, str | None]) -> dict[str, str] | None:
    """The DependencyFailed error for the first parent that ended without finishing; None when none did."""
    for parent in parents:
        status = statuses.get(parent)
        if status is None or status in UNSUCCESSFUL:
            ended = f"ended {status}" if status else "is known no more"
            return {"type": DEPENDENCY_FAILED, "dependency": parent,
                    "message": f"Job {parent}, which this job waited for, {ended}: this job never ran."}
    return None


def settle_deferred(connection: redis.Redis, store: Store | None, job_id: str) -> None:
    """Release or cancel one deferred job if its parents allow (the API calls this on acceptance)."""
    _settle(connection, store, [job_id])


def settle_waiting(connection: redis.Redis, store: Store | None) -> None:
    """Release or cancel a batch of the deferred jobs whose parents have ended (a flows pass)."""
    raw = connection.zrange(DEFERRED_KEY, 0, SETTLE_BATCH - 1)
    _settle(connection, store, [item.decode() if isinstance(item, bytes) else str(item) for item in raw])


def _settle(connection: redis.Redis, store: Store | None, job_ids: list[str]) -> None:
    if not job_ids:
        return
    with connection.pipeline(transaction=False) as pipeline:
        for job_id in job_ids:
            pipeline.hgetall(job_key(job_id))
        hashes = cast(list[dict[bytes, bytes]], pipeline.execute())
    jobs: list[Job] = []
    for job_id, fields in zip(job_ids, hashes, strict=True):
        if not fields:
            connection.zrem(DEFERRED_KEY, job_id)  # gone (deleted from the dashboard, say)
            continue
        waiting: Job = RunnerJob(job_id, connection=connection, serializer=JSONSerializer)
        waiting.restore(fields)  # type: ignore[arg-type]
        jobs.append(waiting)
    statuses = parent_statuses(connection, store, (parent for job in jobs for parent in dependency_ids(job)))
    still_waiting: list[str] = []
    for job in jobs:
        if job_status(job) != JobStatus.DEFERRED:  # canceled by a user, or expired
            with connection.pipeline() as pipeline:
                _queue_settled(pipeline, job)
                pipeline.execute()
            continue
        parents = dependency_ids(job)
        error = failed_parent(parents, statuses)
        if error is not None:
            end_unstarted_job(connection, job.id, partial(_if_deferred, error), also=partial(_queue_settled, job=job))
        elif all(statuses.get(parent) == JobStatus.FINISHED for parent in parents):
            _release(connection, job.id)
        else:
            still_waiting.append(job.id)
    if still_waiting:  # looked at now: to the back of the line
        connection.zadd(DEFERRED_KEY, dict.fromkeys(still_waiting, time.time()))


def _is_deferred(job: Job) -> bool:
    return job_status(job) == JobStatus.DEFERRED


def _if_deferred(error: dict[str, str], job: Job) -> dict[str, str] | None:
    return error if _is_deferred(job) else None


def _queue_settled(pipeline: Pipeline, job: Job) -> None:
    queue_forget_dependencies(pipeline, job)
    pipeline.zrem(DEFERRED_KEY, job.id)


def _release(connection: redis.Redis, job_id: str) -> None:
    """Put a deferred job whose parents all finished on its queue, its row `queued`, in one transaction."""
    retried_on_change(partial(_requeue_if_deferred, connection, job_id))


def _requeue_if_deferred(connection: redis.Redis, job_id: str) -> None:
    with changing_job(connection, job_id) as (pipeline, job, fence):
        if job is None or not _is_deferred(job):
            pipeline.reset()
            return
        _queue_settled(pipeline, job)
        job.meta["progress"] = {"percent": 0, "message": JobStatus.QUEUED.value}
        queue_meta(pipeline, job)
        queue_requeue(pipeline, job, queue_for(job.origin, connection))
        journal.append(pipeline, job_id, row_values(job, JobStatus.QUEUED), fence=fence,
                       traceparent=tracing.traceparent_of(job.meta))


def parent_results(connection: redis.Redis, store: Store | None, parents: Sequence[str]) -> dict[str, Any]:
    """{job id: result} of each parent that finished (Redis first, then its row)."""
    results: dict[str, Any] = {}
    for parent in parents:
        try:
            job = fetch_with_latest_result(parent, connection)
        except (NoSuchJobError, DeserializationError):  # Redis forgot it (or it is no runner job): the row decides
            job = None
        if job is not None:
            if job_status(job) == JobStatus.FINISHED:
                results[parent] = job.return_value()
            continue
        if store is None:
            continue
        try:
            record = read_history(connection, store).get(parent)
        except BackendUnavailable:
            record = None
        if record is not None and record.status == JobStatus.FINISHED:
            results[parent] = record.result
    return results
