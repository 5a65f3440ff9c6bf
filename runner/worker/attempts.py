"""What an attempt writes besides RQ's bookkeeping, at each moment of its life: its count, its history
row (a journal entry), its lifecycle event, and the token that wakes whoever waits for the job's end.

Each `queue_*` function queues its writes in the pipeline that moves the job on (so they are sent
in the same script call, under the same fence) and returns what to do once that call ran: emit
the event to the listeners that read Redis (callbacks, logs), only if the fence held.
Jobs that are not invocations (callback deliveries) get RQ's bookkeeping only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import redis
from redis.client import Pipeline
from rq.job import Job
from rq.queue import Queue
from rq.utils import now

from runner import tracing
from runner.journal import entries as journal
from runner.journal.ends import announce_ends
from runner.journal.rows import row_values
from runner.rq_seam.bookkeeping import queue_failure, queue_meta, queue_requeue, queue_retry, queue_schedule
from runner.rq_seam.job_hash import ENTRY_POINT
from runner.rq_seam.job_reads import job_status
from runner.services.expiry import forget_deadline
from runner.services.job_views import error_from_text
from runner.services.lifecycle import JobEvent, emit, emit_into
from runner.status import TERMINAL_STATUSES, JobStatus

log = logging.getLogger(__name__)

AfterSent = Callable[[bool], None]
WORKER_DIED = "WorkerDied"


def is_invocation(job: Job) -> bool:
    """Whether `job` runs a function (callback deliveries and other jobs on our queues have no row)."""
    return job.func_name == ENTRY_POINT


def function_of(job: Job) -> str:
    """The function a job runs."""
    return str(job.meta.get("function") or job.func_name)


def fence_of(job: Job) -> int:
    """The execution number of the attempt the worker runs (runner.rq_seam.bookkeeping)."""
    return int(getattr(job, "fence", 0))


def count_attempt(job: Job) -> int:
    """Count the attempt that starts now in the job's meta; its number."""
    attempt = int(job.meta.get("attempts", 0)) + 1
    job.meta.update(attempts=attempt, progress={"percent": 0, "message": "started"})
    job.meta.pop("error", None)
    return attempt


def event_of(job: Job, event: str, status: str, **extra: Any) -> JobEvent:
    """The lifecycle event of a job reaching `status`."""
    duration = (job.ended_at - job.started_at).total_seconds() if job.ended_at and job.started_at else None
    return JobEvent(event=event, job_id=job.id, function=function_of(job), queue=job.origin,
                    attempt=int(job.meta.get("attempts", 1)), duration_seconds=duration,
                    error=job.meta.get("error") if event != "finished" else None, status=status,
                    callback_url=job.meta.get("callback_url"), extra=extra)


def queue_history(pipeline: Pipeline, job: Job, status: str, event: JobEvent | None,
                  connection: redis.Redis, *, result: Any = None) -> AfterSent:
    """Queue the row's journal entry (and the end token when `status` ends the job, and the
    listeners' writes of `event`); what to do once sent: tell the other listeners, if it held."""
    journal.append(pipeline, job.id, row_values(job, status, result=result), fence=fence_of(job),
                   traceparent=tracing.traceparent_of(job.meta))
    if status == JobStatus.STARTED:
        forget_deadline(pipeline, job)  # it started in time: it never expires now
    if status in TERMINAL_STATUSES:
        announce_ends(pipeline, [job.id])
    if event is None:
        return _nothing
    emit_into(pipeline, event)

    def after(held: bool) -> None:
        if held:
            emit(connection, event, after_emit_into=True)

    return after


def _nothing(_held: bool) -> None:
    return None


def queue_begin(pipeline: Pipeline, job: Job, connection: redis.Redis) -> AfterSent:
    """Count the attempt that starts now and queue its history (for a function without a
    concurrency limit; run_invocation begins the others once they hold a slot)."""
    count_attempt(job)
    queue_meta(pipeline, job)
    return queue_history(pipeline, job, JobStatus.STARTED, event_of(job, "started", JobStatus.STARTED), connection)


def queue_success(pipeline: Pipeline, job: Job, connection: redis.Redis) -> AfterSent:
    """Queue the history of a successful attempt."""
    if not is_invocation(job):
        return _nothing
    event = event_of(job, "finished", JobStatus.FINISHED)
    return queue_history(pipeline, job, JobStatus.FINISHED, event, connection, result=getattr(job, "outcome", None))


def queue_unsuccessful(pipeline: Pipeline, job: Job, queue: Queue, connection: redis.Redis, exc_string: str, *,
                       stopped: bool, worker_name: str = "", execution: Any = None) -> AfterSent:
    """Queue the end of an attempt that raised or was stopped: retried per its policy, failed, or
    stopped; with its history."""
    if is_invocation(job) and not job.meta.get("error"):
        job.meta["error"] = error_from_text(exc_string)
    if stopped:
        status = JobStatus.STOPPED.value
        queue_failure(pipeline, job, exc_string, status=status, worker_name=worker_name, execution=execution)
    elif job.should_retry:
        status = queue_retry(pipeline, job, queue)
    else:
        status = JobStatus.FAILED.value
        queue_failure(pipeline, job, exc_string, worker_name=worker_name, execution=execution)
    if not is_invocation(job):
        return _nothing
    event = status if status in (JobStatus.FAILED, JobStatus.STOPPED) else "retried"
    return queue_history(pipeline, job, status, event_of(job, event, status), connection)


@dataclass(frozen=True)
class Settlement:
    """What becomes of an attempt whose worker died or was stopped, once its commands are sent."""

    status: str
    event: str
    attempt: int
    error: dict[str, str] | None
    counted: bool
    after: AfterSent


def queue_abandoned(pipeline: Pipeline, job: Job, queue: Queue, connection: redis.Redis, *, reason: str,
                    count_attempt: bool) -> Settlement:
    """Queue the settlement of an attempt whose worker died or was stopped: requeued uncounted (it
    never began, or a stop cut it short), retried, or failed with WorkerDied."""
    began = job_status(job) == JobStatus.STARTED
    attempt = int(job.meta.get("attempts", 0))
    error: dict[str, str] | None = None
    if not began or not count_attempt:
        if began:
            attempt = max(0, attempt - 1)
        job.meta.update(attempts=attempt, progress={"percent": 0, "message": "requeued"})
        queue_requeue(pipeline, job, queue, at_front=True)
        status, event = JobStatus.QUEUED.value, "retried"
    else:
        attempt = max(attempt, 1)
        retries_left = int(job.retries_left or 0)
        error = {"type": WORKER_DIED,
                 "message": f"The worker running this job died (attempt {attempt} of {attempt + retries_left})."}
        job.meta.update(attempts=attempt, error=error)
        if retries_left:
            status, event = queue_retry(pipeline, job, queue), "retried"
        else:
            status, event = JobStatus.FAILED.value, "failed"
            queue_failure(pipeline, job, f"{WORKER_DIED}: {error['message']}", worker_name=job.worker_name or "")
    after: AfterSent = _nothing
    if is_invocation(job):
        after = queue_history(pipeline, job, status, event_of(job, event, status, reason=reason), connection)
    return Settlement(status, event, attempt, error, began and count_attempt, after)


def queue_deferral(pipeline: Pipeline, job: Job, queue: Queue, connection: redis.Redis,
                   delay_seconds: int) -> AfterSent:
    """Queue a job that found no free concurrency slot again in `delay_seconds`, no attempt counted;
    its row says why it waits the first time."""
    queue_schedule(pipeline, job, queue, now() + timedelta(seconds=delay_seconds))
    if not getattr(job, "first_deferral", False):
        return _nothing
    return queue_history(pipeline, job, JobStatus.SCHEDULED, None, connection)
