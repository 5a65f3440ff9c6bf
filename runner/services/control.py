"""Cancel and retry: the two operations a user may apply to a job after it was accepted.

Cancel takes a queued, scheduled or deferred job off its queue (RQ's `job.cancel()`), and stops
a running one (RQ's stop-job command: its worker interrupts the job and marks it `stopped`).
Retry puts a failed, stopped or canceled job back on its queue under the same id, with its
function's full retry policy again; `attempts` keeps counting across the retry. A job Redis has
forgotten is re-enqueued from its SQL row. One operation per job at a time (a short Redis lock).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import redis
from rq.command import send_stop_job_command
from rq.exceptions import DeserializationError, InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.registry import CanceledJobRegistry
from rq.serializers import JSONSerializer

from runner.authoring.registry import Registry
from runner.errors import JobNotFound, StateConflict
from runner.journal.reconcile import write_or_defer
from runner.rq_seam.queues import queue_for
from runner.services.backends import REDIS_ERRORS, Backends, redis_unavailable
from runner.services.invocation import job_meta, submit_job
from runner.services.job_views import JOB_ID_PATTERN, JobView, get_job_view, wait_for_job
from runner.services.limits import release_waiting_place, reserve_waiting_place
from runner.status import TERMINAL_STATUSES, JobStatus
from runner.store.models import utcnow

LOCK_KEY = "runner:control:{job_id}"
LOCK_SECONDS = 10
# How long cancel waits for a running job's worker to report it stopped.
STOP_WAIT_SECONDS = 3.0
CANCELABLE = frozenset({JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED})
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


def _fetch(job_id: str, backends: Backends) -> Job | None:
    if not JOB_ID_PATTERN.match(job_id):
        raise JobNotFound(f"No job has the id {job_id!r}.")
    try:
        return Job.fetch(job_id, connection=backends.connection, serializer=JSONSerializer)
    except (NoSuchJobError, DeserializationError):
        return None


def _status(job: Job) -> JobStatus:
    status = job.get_status(refresh=False)
    return JobStatus(status.value if hasattr(status, "value") else str(status))


def cancel_job(job_id: str, backends: Backends) -> JobView:
    """Cancel a waiting job or stop a running one; StateConflict when it has already ended."""
    try:
        with _job_lock(backends.connection, job_id):
            job = _fetch(job_id, backends)
            if job is None:
                return _cancel_forgotten(job_id, backends)
            status = _status(job)
            if status in CANCELABLE:
                job.cancel()
                # The view reads Redis' progress while Redis holds the job: "scheduled" would stay.
                job.meta["progress"] = {**(job.meta.get("progress") or {"percent": 0}), "message": "canceled"}
                job.save_meta()
                release_waiting_place(backends.connection, str(job.meta.get("function", "")), job_id)
                write_or_defer(backends.store, backends.connection, job_id, status=JobStatus.CANCELED.value,
                               progress_message="canceled", ended_at=utcnow())
                return get_job_view(job_id, backends)
            if status == JobStatus.STARTED:
                try:
                    send_stop_job_command(backends.connection, job_id, serializer=JSONSerializer)
                except InvalidJobOperation:
                    raise StateConflict("The job is marked started but no worker runs it.",
                                        details={"status": status.value}) from None
            else:
                raise StateConflict(f"The job has already ended ({status.value}); there is nothing to cancel.",
                                    details={"status": status.value})
    except REDIS_ERRORS as exc:
        raise redis_unavailable() from exc
    # The worker marks the job `stopped` (and writes its row) once the job is interrupted.
    return wait_for_job(job_id, backends, STOP_WAIT_SECONDS)


def _cancel_forgotten(job_id: str, backends: Backends) -> JobView:
    record = backends.store.get(job_id)
    if record is None:
        raise JobNotFound(f"No job has the id {job_id!r}.")
    if record.status in TERMINAL_STATUSES:
        raise StateConflict(f"The job has already ended ({record.status}); there is nothing to cancel.",
                            details={"status": record.status})
    # Redis lost a job that never ended (flushed, or restarted without persistence): nothing will run it.
    backends.store.update(job_id, status=JobStatus.CANCELED.value, progress_message="canceled", ended_at=utcnow())
    return get_job_view(job_id, backends)


def retry_job(job_id: str, backends: Backends, registry: Registry) -> JobView:
    """Queue a failed, stopped or canceled job again under its id; StateConflict for any other state."""
    try:
        with _job_lock(backends.connection, job_id):
            job = _fetch(job_id, backends)
            if job is None:
                requeue = _plan_resubmit(job_id, backends, registry)
            else:
                requeue = _plan_requeue(job, backends, registry)
            record = backends.store.get(job_id)
            # The row says `queued` before a worker can see the job, so its `started` write comes after ours.
            write_or_defer(backends.store, backends.connection, job_id, status=JobStatus.QUEUED.value,
                           progress_percent=0, progress_message="queued", result=None, error=None,
                           started_at=None, ended_at=None)
            try:
                requeue()
            except REDIS_ERRORS:
                if record is not None:  # put the row back as it was
                    write_or_defer(backends.store, backends.connection, job_id, status=record.status,
                                   progress_percent=record.progress_percent, progress_message=record.progress_message,
                                   result=record.result, error=record.error, started_at=record.started_at,
                                   ended_at=record.ended_at)
                raise
            return get_job_view(job_id, backends)
    except REDIS_ERRORS as exc:
        raise redis_unavailable() from exc


def _not_retryable(status: str) -> StateConflict:
    return StateConflict(f"Only failed, stopped or canceled jobs can be retried; this one is {status}.",
                         details={"status": status})


def _plan_requeue(job: Job, backends: Backends, registry: Registry) -> Callable[[], None]:
    """Check that Redis' job may be retried and take its waiting place; return what requeues it."""
    status = _status(job)
    if status not in RETRYABLE:
        raise _not_retryable(status.value)
    spec = registry.get(str(job.meta.get("function") or ""))
    reserve_waiting_place(backends.connection, spec, job.id)

    def requeue() -> None:
        for stale in ("error", "waiting_for_slot"):
            job.meta.pop(stale, None)
        job.meta["progress"] = {"percent": 0, "message": "queued"}
        # A manual retry gets the function's whole retry policy again (RQ saves these with the job).
        job.retries_left = spec.retries or None
        job.retry_intervals = list(spec.backoff) or [0]
        source = (CanceledJobRegistry(job.origin, backends.connection, serializer=JSONSerializer)
                  if status == JobStatus.CANCELED else job.failed_job_registry)
        try:
            source.requeue(job)
        except InvalidJobOperation:  # its registry entry expired before the job hash did
            job.started_at = job.ended_at = None
            queue_for(job.origin, backends.connection).enqueue_job(job)
        except REDIS_ERRORS:
            release_waiting_place(backends.connection, spec.name, job.id)
            raise

    return requeue


def _plan_resubmit(job_id: str, backends: Backends, registry: Registry) -> Callable[[], None]:
    """Check that the SQL row of a job Redis forgot may be retried; return what enqueues it again."""
    record = backends.store.get(job_id)
    if record is None:
        raise JobNotFound(f"No job has the id {job_id!r}.")
    if record.status not in RETRYABLE:
        raise _not_retryable(record.status)
    spec = registry.get(record.function)
    # The function may have changed since: its input must still fit the signature.
    arguments = spec.validate(record.input, backends.validation_context())
    reserve_waiting_place(backends.connection, spec, job_id)
    meta = job_meta(spec, attempts=record.attempts, callback_url=record.callback_url)

    def resubmit() -> None:
        try:
            submit_job(spec, job_id, arguments, backends, meta=meta)
        except REDIS_ERRORS:
            release_waiting_place(backends.connection, spec.name, job_id)
            raise

    return resubmit
