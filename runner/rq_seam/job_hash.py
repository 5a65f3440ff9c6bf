"""The RQ job hash of an invocation, built from a per-function template instead of an RQ Job.

Every invocation of a function enqueues the same RQ job but for its id, timestamps, payload
and meta. Building and saving an RQ `Job` for each (its constructor, `to_dict`, a dozen
pipeline calls) cost more CPU than the rest of an invocation; here RQ builds the job once per
function, and each invocation fills in only what differs. The hash and the commands are those
RQ's `Queue.enqueue_job` writes (tests/unit/test_job_template.py compares them field by field).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from redis.client import Pipeline
from rq import Retry
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.serializers import JSONSerializer
from rq.utils import now, utcformat

from runner.authoring.spec import FunctionSpec

# What RQ calls for every runner job (runner.worker.execution.run_invocation), with the function's
# name and input as arguments: never a path taken from a request.
ENTRY_POINT = "runner.worker.execution.run_invocation"
# Filled in per invocation; everything else in the hash comes from the template.
PER_INVOCATION_FIELDS = ("created_at", "enqueued_at", "data", "meta")
FieldValue = bytes | str | int | float


@dataclass(frozen=True)
class JobTemplate:
    """What every job of one function has in common in Redis."""

    fields: dict[str, FieldValue]


def new_job(queue: Queue, spec: FunctionSpec, job_id: str, arguments: dict[str, Any], *,
            meta: dict[str, Any], result_ttl: int, failure_ttl: int, depends_on: Sequence[str] = ()) -> Job:
    """The RQ job of an invocation, as RQ builds it (not saved); `depends_on`: the jobs it waits for."""
    return queue.create_job(
        ENTRY_POINT,
        args=(spec.name, arguments),
        job_id=job_id,
        timeout=spec.timeout,
        retry=Retry(max=spec.retries, interval=list(spec.backoff) or 0) if spec.retries else None,
        result_ttl=result_ttl,
        failure_ttl=failure_ttl,
        description=f"{spec.name}()",
        meta=meta,
        depends_on=list(depends_on) or None,
    )


def template_for(queue: Queue, spec: FunctionSpec, *, result_ttl: int, failure_ttl: int) -> JobTemplate:
    """The hash fields every job of `spec` shares, taken from a job RQ builds."""
    job = new_job(queue, spec, "template", {}, meta={}, result_ttl=result_ttl, failure_ttl=failure_ttl)
    # What Queue.enqueue_job sets before it saves (enqueued_at is replaced per invocation).
    job.origin, job.enqueued_at = queue.name, now()
    fields = {**job.to_dict(), "status": JobStatus.QUEUED.value}
    for name in PER_INVOCATION_FIELDS:
        fields.pop(name, None)
    return JobTemplate(fields=fields)


def job_fields(template: JobTemplate, spec: FunctionSpec, arguments: dict[str, Any],
               meta: dict[str, Any], created_at: datetime) -> dict[str, FieldValue]:
    """The hash of one invocation's job, created at `created_at` (the time its row says too)."""
    stamp = utcformat(created_at)
    data = JSONSerializer.dumps((ENTRY_POINT, None, (spec.name, arguments), {}))
    return {**template.fields, "created_at": stamp, "enqueued_at": stamp, "data": zlib.compress(data),
            "meta": JSONSerializer.dumps(meta)}


def job_key(job_id: str) -> str:
    """The Redis key of a job's hash."""
    return str(Job.key_for(job_id))


def queue_job(pipeline: Pipeline, queue: Queue, job_id: str, fields: dict[str, FieldValue]) -> None:
    """Queue the commands RQ's enqueue_job sends for a job (our queue class adds its wake-up token)."""
    pipeline.sadd(queue.redis_queues_keys, queue.key)
    pipeline.hset(job_key(job_id), mapping=cast(Mapping[Any, FieldValue], fields))
    queue.push_job_id(job_id, pipeline=pipeline)
