"""Accepting an invocation: validate, write the SQL row, enqueue the RQ job."""

from __future__ import annotations

import uuid
from typing import Any

from rq import Retry

from runner.backends import REDIS_ERRORS, Backends, queue_for
from runner.errors import BackendUnavailable
from runner.execution import ENTRY_POINT
from runner.lifecycle import JobEvent, emit
from runner.models import InvocationRecord, utcnow
from runner.registry import FunctionSpec


def new_job_id() -> str:
    """A fresh job id."""
    return uuid.uuid4().hex


def enqueue_invocation(spec: FunctionSpec, payload: Any, backends: Backends) -> InvocationRecord:
    """Validate `payload`, record it, enqueue it; return its row. Nothing invalid is enqueued."""
    arguments = spec.validate(payload, backends.validation_context())
    job_id = new_job_id()
    # The row is written first so a worker never finishes a job the store has not heard of.
    now = utcnow()
    record = InvocationRecord(
        id=job_id,
        function=spec.name,
        queue=spec.queue,
        status="queued",
        input=arguments,
        progress_percent=0,
        progress_message="queued",
        attempts=0,
        created_at=now,
        updated_at=now,
    )
    backends.store.add(record)
    try:
        queue_for(spec.queue, backends.connection).enqueue_call(
            func=ENTRY_POINT,
            args=(spec.name, arguments),
            job_id=job_id,
            timeout=spec.timeout,
            retry=Retry(max=spec.retries, interval=list(spec.backoff) or 0) if spec.retries else None,
            result_ttl=backends.settings.result_ttl,
            failure_ttl=backends.settings.failure_ttl,
            description=f"{spec.name}()",
            meta={"function": spec.name, "attempts": 0, "progress": {"percent": 0, "message": "queued"}},
        )
    except REDIS_ERRORS as exc:
        backends.store.delete(job_id)
        raise BackendUnavailable(
            "Redis is unavailable; the invocation was not accepted.", details={"dependency": "redis"}
        ) from exc
    emit(backends.connection, JobEvent("accepted", job_id, spec.name, spec.queue, status="queued"))
    return record
