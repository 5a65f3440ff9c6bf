"""Cancel and retry: the two operations a user may apply to a job after it was accepted.

Cancel takes a queued, scheduled or deferred job off its queue (RQ's `job.cancel()`), and stops
a running one (RQ's stop-job command: its worker interrupts the job and marks it `stopped`).
Retry puts a failed, stopped or canceled job back on its queue under the same id, with its
function's full retry policy again; `attempts` keeps counting across the retry. A job Redis has
forgotten is re-enqueued from its SQL row. One operation per job at a time (a short Redis lock).
Each change goes to Redis with its history row's journal entry, in one transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import redis
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation
from rq.registry import CanceledJobRegistry
from rq.serializers import JSONSerializer

from runner import tracing
from runner.authoring.registry import Registry
from runner.authoring.spec import FunctionSpec
from runner.errors import JobNotFound, StateConflict
from runner.journal import entries as journal
from runner.journal.reads import read_history
from runner.journal.rows import row_values
from runner.redis_connection import REDIS_ERRORS, redis_unavailable
from runner.rq_seam.bookkeeping import changing_job, queue_requeue
from runner.rq_seam.job_hash import ENTRY_POINT, job_key
from runner.rq_seam.job_reads import job_status
from runner.rq_seam.queues import queue_for
from runner.services.backends import Backends
from runner.services.invocation import job_meta, submit_job, validated_input
from runner.services.job_views import JOB_ID_PATTERN, JobView, get_job_view, wait_for_job
from runner.services.limits import release_waiting_place, reserve_waiting_place
from runner.services.unstarted import WAITING, queue_cancel
from runner.status import TERMINAL_STATUSES, JobStatus
from runner.store.models import utcnow

LOCK_KEY = "runner:control:{job_id}"
LOCK_SECONDS = 10
# How long cancel waits for a running job's worker to report it stopped.
STOP_WAIT_SECONDS = 3.0
CANCELABLE = WAITING
RETRYABLE = frozenset({JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED})


@contextmanager
def _job_lock(connection: redis.Redis, job_id: str) -> Iterator[None]:
    """Hold the job's control lock; StateConflict when another cancel or retry holds it."""
    key, token = LOCK_KEY.format(job_id=job_id), uuid.uuid4().hex
    try:
        if not connection.set(key, token, nx=True, ex=LOCK_SECONDS):
            raise StateConflict("Another cancel or retry of this job is in progress.", details={"job_id": job_id})
    except REDIS_ERRORS as exc:
        raise redis_unavailable() from exc
    try:
        yield
    finally:
        try:
            if connection.get(key) == token.encode():
                connection.delete(key)
        except REDIS_ERRORS:
            pass  # the lock expires by itself


def _invalid_id(job_id: str) -> JobNotFound | None:
    return None if JOB_ID_PATTERN.match(job_id) else JobNotFound(f"No job has the id {job_id!r}.")


def cancel_job(job_id: str, backends: Backends) -> JobView:
    """Cancel a waiting job or stop a running one; StateConflict when it has already ended."""
    if (error := _invalid_id(job_id)) is not None:
        raise error
    try:
        with _job_lock(backends.connection, job_id):
            with changing_job(backends.connection, job_id) as (pipeline, job, fence):
                if job is None:
                    pipeline.reset()
                    return _cancel_forgotten(job_id, backends)
                status = JobStatus(job_status(job))
                if status in CANCELABLE:
                    queue_cancel(pipeline, job, fence)
                else:
                    pipeline.reset()
            if status in CANCELABLE:
                with suppress(*REDIS_ERRORS):
                    release_waiting_place(backends.connection, str(job.meta.get("function", "")), job_id)
                return get_job_view(job_id, backends)
            if status != JobStatus.STARTED:
                raise StateConflict(f"The job has already ended ({status.value}); there is nothing to cancel.",
                                    details={"status": status.value})
            try:
                send_stop_job_command(backends.connection, job_id, serializer=JSONSerializer)
            except InvalidJobOperation:
                raise StateConflict("The job is marked started but no worker runs it.",
                                    details={"status": status.value}) from None
    except redis.WatchError:
        raise StateConflict("The job changed while it was being canceled; look at it again.",
                            details={"job_id": job_id}) from None
    except REDIS_ERRORS as exc:
        raise redis_unavailable() from exc
    # The worker marks the job `stopped` (and journals its row) once the job is interrupted.
    return wait_for_job(job_id, backends, STOP_WAIT_SECONDS)


def _cancel_forgotten(job_id: str, backends: Backends) -> JobView:
    record = read_history(backends.connection, backends.store).get(job_id)
    if record is None:
        raise JobNotFound(f"No job has the id {job_id!r}.")
    if record.status in TERMINAL_STATUSES:
        raise StateConflict(f"The job has already ended ({record.status}); there is nothing to cancel.",
                            details={"status": record.status})
    # Redis lost a job that never ended (flushed, or restarted without persistence): nothing will run it.
    journal.append(backends.connection, job_id, {"status": JobStatus.CANCELED.value, "progress_message": "canceled",
                                                 "ended_at": utcnow()}, fence=record.fence)
    return get_job_view(job_id, backends)


def retry_job(job_id: str, backends: Backends, registry: Registry) -> JobView:
    """Queue a failed, stopped or canceled job again under its id; StateConflict for any other state."""
    if (error := _invalid_id(job_id)) is not None:
        raise error
    try:
        with _job_lock(backends.connection, job_id):
            if not backends.connection.exists(job_key(job_id)):
                _resubmit_forgotten(job_id, backends, registry)
            elif not requeue_ended_job(job_id, backends, registry, reserve=True):
                raise StateConflict("The job changed while it was being retried; look at it again.",
                                    details={"job_id": job_id})
            return get_job_view(job_id, backends)
    except REDIS_ERRORS as exc:
        raise redis_unavailable() from exc


def _not_retryable(status: str) -> StateConflict:
    return StateConflict(f"Only failed, stopped or canceled jobs can be retried; this one is {status}.",
                         details={"status": status})


def requeue_ended_job(job_id: str, backends: Backends, registry: Registry, *, reserve: bool = False,
                      function: str | None = None) -> bool:
    """Put a failed, stopped or canceled job back on its queue with its function's whole retry
    policy, its row back to `queued`; the one way an ended job goes back (retry, requeue-failed).

    False when the job changed meanwhile, or (with `function`) runs another function. With
    `reserve`, StateConflict when it has not ended, and it takes a waiting place (`max_queued`)."""
    spec: FunctionSpec | None = None
    try:
        with changing_job(backends.connection, job_id) as (pipeline, job, fence):
            function_name = str(job.meta.get("function") or "") if job is not None else ""
            status = job_status(job) if job is not None else ""
            if job is None or status not in RETRYABLE or (function is not None and function_name != function):
                pipeline.reset()
                if reserve and job is not None:
                    raise _not_retryable(status)
                return False
            if function_name in registry:
                spec = registry.get(function_name)
                # A requeued job gets its whole retry policy again, as a fresh invocation would.
                job.retries_left = spec.retries or None
                job.retry_intervals = list(spec.backoff) or [0]
                if reserve:
                    reserve_waiting_place(backends.connection, spec, job_id)
            for stale in ("error", "waiting_for_slot", "expires_at"):
                job.meta.pop(stale, None)
            job.meta["progress"] = {"percent": 0, "message": "queued"}
            for source in (job.failed_job_registry, CanceledJobRegistry(job.origin, backends.connection,
                                                                        serializer=JSONSerializer)):
                source.remove(job, pipeline=pipeline)
            queue_requeue(pipeline, job, queue_for(job.origin, backends.connection))
            if job.func_name == ENTRY_POINT:
                journal.append(pipeline, job_id, row_values(job, JobStatus.QUEUED), fence=fence,
                               traceparent=tracing.traceparent_of(job.meta))
    except redis.WatchError:
        if spec is not None and reserve:
            release_waiting_place(backends.connection, spec.name, job_id)
        return False
    except REDIS_ERRORS:
        if spec is not None and reserve:
            with suppress(*REDIS_ERRORS):
                release_waiting_place(backends.connection, spec.name, job_id)
        raise
    return True


def _resubmit_forgotten(job_id: str, backends: Backends, registry: Registry) -> None:
    """Enqueue again, from its SQL row, a job Redis has forgotten, if it may be retried."""
    record = read_history(backends.connection, backends.store).get(job_id)
    if record is None:
        raise JobNotFound(f"No job has the id {job_id!r}.")
    if record.status not in RETRYABLE:
        raise _not_retryable(record.status)
    spec = registry.get(record.function)
    # The function may have changed since: its input must still fit the signature.
    arguments = validated_input(spec, record.input, backends)
    reserve_waiting_place(backends.connection, spec, job_id)
    meta = job_meta(spec, attempts=record.attempts, callback_url=record.callback_url, schedule=record.schedule)
    values = {"status": JobStatus.QUEUED.value, "progress_percent": 0, "progress_message": "queued", "result": None,
              "error": None, "started_at": None, "ended_at": None}
    try:
        submit_job(spec, job_id, arguments, backends, meta=meta, row_values=values, fence=record.fence)
    except REDIS_ERRORS:
        with suppress(*REDIS_ERRORS):
            release_waiting_place(backends.connection, spec.name, job_id)
        raise
