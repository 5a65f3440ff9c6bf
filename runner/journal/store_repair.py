"""SQL rows left behind when a worker died between writing a job's end to Redis and to SQL.

Redis is written first (it decides what runs next); a worker killed in the moment after leaves
a row that says `started` for a job that has ended. Recovery passes look for rows `started`
and untouched for longer than the dead-worker window, and bring them in line with Redis. When
the job ended, the terminal event the dead worker never emitted is emitted now, so listeners
(completion callbacks, metrics) still hear of it.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import redis
import sqlalchemy as sa
from rq.exceptions import DeserializationError, NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from runner.journal.reconcile import write_or_defer
from runner.services.job_views import view_from_job
from runner.services.lifecycle import EVENTS, JobEvent, emit
from runner.status import TERMINAL_STATUSES, JobStatus
from runner.store.models import InvocationRecord, utcnow
from runner.store.sql_store import Store

log = logging.getLogger(__name__)

REPAIR_BATCH = 100
JOB_LOST = {"type": "JobLost", "message": "Redis no longer holds this job, so how it ended is unknown."}


def stale_started_rows(store: Store, older_than_seconds: float, limit: int = REPAIR_BATCH) -> list[str]:
    """Ids of rows `started` and not updated for `older_than_seconds`, oldest first."""
    cutoff = utcnow() - timedelta(seconds=older_than_seconds)
    query = (
        sa.select(InvocationRecord.id)
        .where(InvocationRecord.status == JobStatus.STARTED.value, InvocationRecord.updated_at < cutoff)
        .order_by(InvocationRecord.updated_at)
        .limit(limit)
    )
    with store.session() as session:
        return list(session.scalars(query))


def repair_row(store: Store, connection: redis.Redis, job_id: str) -> str | None:
    """Bring one row in line with its job in Redis; return the status written, or None if already right."""
    as_of = utcnow()
    try:
        job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
    except NoSuchJobError:
        write_or_defer(store, connection, job_id, as_of=as_of, status=JobStatus.FAILED.value, error=JOB_LOST,
                       ended_at=as_of)
        log.error("job %s: its row said started but Redis no longer holds it; marked failed", job_id)
        return JobStatus.FAILED.value
    except DeserializationError:
        return None  # not a runner job
    view = view_from_job(job)
    if view.status == JobStatus.STARTED:
        return None  # still running (a long job that reports no progress)
    values: dict[str, Any] = {"status": view.status, "attempts": view.attempts}
    if view.status in TERMINAL_STATUSES:
        values.update(
            result=view.result,
            error=view.error,
            progress_percent=view.progress["percent"],
            progress_message=view.progress["message"],
            artifacts=view.artifacts and [_without_url(item) for item in view.artifacts],
            ended_at=job.ended_at or utcnow(),
        )
    write_or_defer(store, connection, job_id, as_of=as_of, **values)
    log.warning("job %s: its row said started while Redis says %s; repaired", job_id, view.status)
    if view.status in TERMINAL_STATUSES and view.status in EVENTS:
        emit(connection, JobEvent(view.status, job_id, view.function, view.queue, attempt=view.attempts,
                                  error=view.error, status=view.status, callback_url=job.meta.get("callback_url"),
                                  extra={"reason": "store repair"}))
    return view.status


def repair_stale_rows(store: Store, connection: redis.Redis, older_than_seconds: float) -> int:
    """Repair a batch of stale `started` rows; return how many changed."""
    repaired = 0
    for job_id in stale_started_rows(store, older_than_seconds):
        if repair_row(store, connection, job_id) is not None:
            repaired += 1
    return repaired


def _without_url(item: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in item.items() if key != "url"}
