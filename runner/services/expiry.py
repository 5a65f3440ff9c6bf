"""Expiry: a job not started within `expires` seconds of its acceptance never starts; it ends
`canceled` with error type `Expired` (runner.services.unstarted), its callback and row as for any end.

The deadline is in the job's meta (`expires_at`, seconds since the epoch) and in one sorted set of
deadlines. Two places enforce it:
- a worker about to start a job it took (runner.worker.taking) reads the meta it has already read
  with the job: past the deadline, the job is canceled instead, and its claim released, in one
  transaction; a job within its deadline costs nothing more;
- the workers' flows pass (runner.worker.duties) cancels the jobs past their deadline that nobody
  takes (no worker for their queue, all busy, or stopped until now).

Only a job that never began an attempt expires: a job waiting for a retry does not.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis
from redis.client import Pipeline
from rq.job import Job

from runner.services.unstarted import end_unstarted_job

EXPIRING_KEY = "runner:flows:expiring"
EXPIRED = "Expired"
DEADLINE_META = "expires_at"
# A flows pass cancels at most this many expired jobs (the next pass takes the rest).
SWEEP_BATCH = 200


def set_deadline(meta: dict[str, Any], accepted_at: float, seconds: float) -> float:
    """Record in a new job's meta that it expires `seconds` after `accepted_at`; the deadline."""
    deadline = accepted_at + seconds
    meta[DEADLINE_META] = deadline
    return deadline


def queue_deadline(pipeline: Pipeline, job_id: str, deadline: float) -> None:
    """Queue the job's deadline in the set the flows pass reads (with the job's enqueue)."""
    pipeline.zadd(EXPIRING_KEY, {job_id: deadline})


def forget_deadline(pipeline: Pipeline, job: Job) -> None:
    """Queue the removal of the deadline of a job that starts its first attempt now."""
    if job.meta.get(DEADLINE_META) is not None:
        pipeline.zrem(EXPIRING_KEY, job.id)


def past_deadline(job: Job, now: float | None = None) -> bool:
    """Whether `job` has a deadline, has passed it, and never began an attempt."""
    deadline = job.meta.get(DEADLINE_META)
    if deadline is None or int(job.meta.get("attempts", 0)):
        return False
    return float(deadline) <= (time.time() if now is None else now)


def expiry_error(job: Job) -> dict[str, str] | None:
    """The error of a job past its deadline that never began an attempt; None for any other job."""
    if not past_deadline(job):
        return None
    deadline = float(job.meta[DEADLINE_META])
    within = f" within {deadline - job.created_at.timestamp():g} s of its acceptance" if job.created_at else ""
    return {"type": EXPIRED, "message": f"The job did not start{within}: it expired and never ran."}


def expire(connection: redis.Redis, job_id: str, also: Callable[[Pipeline], None] | None = None) -> bool:
    """Cancel `job_id` as Expired if it is past its deadline and has not started; True when it did."""
    return end_unstarted_job(connection, job_id, expiry_error, also=also)


def expire_due(connection: redis.Redis, now: float | None = None) -> int:
    """Cancel the jobs past their deadline that have not started; forget the others' deadlines. How many expired."""
    due = [raw.decode() if isinstance(raw, bytes) else str(raw) for raw in
           connection.zrangebyscore(EXPIRING_KEY, "-inf", time.time() if now is None else now,
                                    start=0, num=SWEEP_BATCH)]
    count = sum(1 for job_id in due if expire(connection, job_id))
    if due:  # expired now, started, or ended otherwise: nothing more to watch for
        connection.zrem(EXPIRING_KEY, *due)
    return count
