"""Canceling a job before it runs: by a user (runner.services.control), or by the runner itself when
the job expired or a job it waits for failed (runner.services.expiry, runner.services.dependencies).

A cancel by the runner carries an error (`Expired`, `DependencyFailed`) that the job view and its
row show, and ends like any other end: its row, the token that wakes `?wait=`, the `canceled`
lifecycle event (completion callback, limits), all in one transaction with RQ's cancel.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import redis
from redis.client import Pipeline
from rq.job import Job

from runner import tracing
from runner.journal import entries as journal
from runner.journal.ends import announce_ends
from runner.journal.rows import row_values
from runner.rq_seam.bookkeeping import changing_job, queue_meta, retried_on_change
from runner.rq_seam.job_hash import ENTRY_POINT
from runner.rq_seam.job_reads import job_status
from runner.services.lifecycle import JobEvent, emit, emit_into
from runner.status import JobStatus
from runner.store.models import utcnow

# A job in one of these states has not started (or waits for its next attempt).
WAITING = frozenset({JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED})


def queue_cancel(pipeline: Pipeline, job: Job, fence: int, error: dict[str, str] | None = None) -> None:
    """Queue RQ's cancel of a waiting `job` (with why, when the runner cancels it) and its row's entry."""
    job.cancel(pipeline=pipeline)
    job.meta["progress"] = {**(job.meta.get("progress") or {"percent": 0}), "message": "canceled"}
    if error is not None:
        job.meta["error"] = error
    else:  # a user's cancel: an earlier attempt's error (a job waiting for its retry) is not why it ended
        job.meta.pop("error", None)
    queue_meta(pipeline, job)
    if job.func_name == ENTRY_POINT:
        journal.append(pipeline, job.id, row_values(job, JobStatus.CANCELED, ended_at=utcnow()), fence=fence,
                       traceparent=tracing.traceparent_of(job.meta))


def end_unstarted_job(connection: redis.Redis, job_id: str, reason: Callable[[Job], dict[str, str] | None], *,
                      also: Callable[[Pipeline], None] | None = None) -> bool:
    """Cancel `job_id` if it waits and `reason(job)` gives an error (None: leave it), in one transaction
    with `also`'s commands; True when it did. Its completion callback and listeners follow."""
    event = retried_on_change(partial(_cancel_if_waiting, connection, job_id, reason, also))
    if event is None:
        return False
    emit(connection, event, after_emit_into=True)
    return True


def _cancel_if_waiting(connection: redis.Redis, job_id: str, reason: Callable[[Job], dict[str, str] | None],
                       also: Callable[[Pipeline], None] | None) -> JobEvent | None:
    with changing_job(connection, job_id) as (pipeline, job, fence):
        error = reason(job) if job is not None and job_status(job) in WAITING else None
        if job is None or error is None:
            pipeline.reset()
            return None
        queue_cancel(pipeline, job, fence, error)
        announce_ends(pipeline, [job_id])
        event = JobEvent("canceled", job_id, str(job.meta.get("function") or job.func_name), job.origin,
                         attempt=int(job.meta.get("attempts", 0)), error=error,
                         status=JobStatus.CANCELED.value, callback_url=job.meta.get("callback_url"))
        emit_into(pipeline, event)
        if also is not None:
            also(pipeline)
    return event
