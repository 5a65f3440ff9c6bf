"""Accepting an invocation: validate, claim its idempotency key, write the SQL row, enqueue the RQ job."""

from __future__ import annotations

import functools
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from rq.queue import Queue

from runner.authoring.registry import FunctionSpec
from runner.errors import BackendUnavailable
from runner.rq_seam.job_hash import JobTemplate, job_fields, new_job, queue_job, template_for
from runner.rq_seam.queues import queue_for
from runner.rq_seam.scripts import encode_commands
from runner.services.backends import NOT_ACCEPTED, REDIS_ERRORS, Backends, redis_unavailable
from runner.services.callbacks import check_callback_url
from runner.services.idempotency import Claim, claim_or_find, fingerprint, release
from runner.services.lifecycle import JobEvent, emit, emit_into
from runner.services.limits import release_waiting_place, reserve_waiting_place
from runner.store.models import InvocationRecord, InvocationRow, NewInvocation, utcnow

# How far ahead `?delay=` / `?at=` may schedule a job.
MAX_SCHEDULE_AHEAD = timedelta(days=30)


def new_job_id() -> str:
    """A fresh job id."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class InvocationOptions:
    """What an invocation asks for besides its input (from the request's headers and query)."""

    idempotency_key: str | None = None
    callback_url: str | None = None
    # When to run it (timezone-aware); None runs it as soon as a worker is free.
    run_at: datetime | None = None


@dataclass(frozen=True)
class Accepted:
    """The row of an accepted invocation; `replayed` when an idempotency key named an earlier one."""

    record: InvocationRow
    replayed: bool = False


def schedule_time(run_at: datetime) -> datetime:
    """`run_at` rounded up to a whole second: RQ's scheduler keeps whole seconds, and must never run early."""
    whole = run_at.replace(microsecond=0)
    return whole if whole == run_at else whole + timedelta(seconds=1)


def job_meta(spec: FunctionSpec, *, attempts: int = 0, callback_url: str | None = None,
             scheduled: bool = False) -> dict[str, Any]:
    """The job.meta a runner job starts with."""
    meta: dict[str, Any] = {
        "function": spec.name,
        "attempts": attempts,
        "progress": {"percent": 0, "message": "scheduled" if scheduled else "queued"},
    }
    if callback_url:
        meta["callback_url"] = callback_url
    return meta


def submit_job(spec: FunctionSpec, job_id: str, arguments: dict[str, Any], backends: Backends, *,
               meta: dict[str, Any], run_at: datetime | None = None, event: JobEvent | None = None,
               new_row: dict[str, Any] | None = None) -> None:
    """Put the RQ job on its queue now, or in the scheduled registry until `run_at`; raises Redis errors.

    `event`, if given, is emitted once the job is in Redis (its metrics travel with the job).
    `new_row`, the job's row written behind (runner.journal.new_rows), is journaled with the job (not with `run_at`).
    """
    queue = queue_for(spec.queue, backends.connection)
    settings = backends.settings
    if run_at is not None:
        job = new_job(queue, spec, job_id, arguments, meta=meta, result_ttl=settings.result_ttl,
                      failure_ttl=settings.failure_ttl)
        queue.schedule_job(job, schedule_time(run_at))  # one pipeline already
        if event is not None:
            emit(backends.connection, event)
        return
    # On every invocation's path: the job's hash from its function's template, saved and pushed
    # with the event's writes in one script call (RQ's enqueue_job: two dozen calls, nine replies).
    template = _template(queue, spec, settings.result_ttl, settings.failure_ttl)
    with backends.connection.pipeline() as pipe:
        queue_job(pipe, queue, job_id, job_fields(template, spec, arguments, meta))
        if new_row is not None:
            backends.new_rows.journal_into(pipe, new_row)
        if event is not None:
            emit_into(pipe, event)
        # Other threads' new jobs may travel in the same call (see group_commit).
        backends.job_sends.submit(encode_commands(pipe))
    if event is not None:
        emit(backends.connection, event, after_emit_into=True)


@functools.lru_cache(maxsize=1024)
def _template(queue: Queue, spec: FunctionSpec, result_ttl: int, failure_ttl: int) -> JobTemplate:
    return template_for(queue, spec, result_ttl=result_ttl, failure_ttl=failure_ttl)


def accept_invocation(spec: FunctionSpec, payload: Any, backends: Backends,
                      options: InvocationOptions | None = None) -> Accepted:
    """Validate, dedupe by idempotency key, record and enqueue; nothing invalid is ever enqueued."""
    options = options or InvocationOptions()
    arguments = spec.validate(payload, backends.validation_context())
    callback_url = check_callback_url(options.callback_url, backends.settings)
    job_id = new_job_id()
    claim: Claim | None = None
    if options.idempotency_key is not None:
        claim = Claim(job_id, spec.name, fingerprint(spec.name, arguments), time.time())
        found: dict[str, InvocationRecord] = {}

        def known_record(job_id: str) -> bool:
            record = backends.store.get(job_id)
            if record is not None:
                found[job_id] = record  # kept, so a replay reads the row once
            return record is not None

        earlier = claim_or_find(backends.connection, options.idempotency_key, claim,
                                backends.settings.idempotency_ttl, known_record)
        if earlier is not None:  # only returned once known_record found its row
            return Accepted(found[earlier], replayed=True)
    try:
        return Accepted(_record_and_enqueue(spec, job_id, arguments, backends, options, callback_url))
    except BaseException:
        if claim is not None and options.idempotency_key is not None:
            release(backends.connection, options.idempotency_key, claim)
        raise


def _record_and_enqueue(spec: FunctionSpec, job_id: str, arguments: dict[str, Any], backends: Backends,
                        options: InvocationOptions, callback_url: str | None) -> NewInvocation:
    try:
        reserve_waiting_place(backends.connection, spec, job_id)
    except REDIS_ERRORS as exc:
        raise redis_unavailable(NOT_ACCEPTED) from exc
    status = "scheduled" if options.run_at is not None else "queued"
    row = NewInvocation(id=job_id, function=spec.name, queue=spec.queue, status=status, input=arguments,
                        created_at=utcnow(), idempotency_key=options.idempotency_key, callback_url=callback_url)
    meta = job_meta(spec, callback_url=callback_url, scheduled=options.run_at is not None)
    accepted = JobEvent("accepted", job_id, spec.name, spec.queue, status=status)
    if options.run_at is None and backends.new_rows.writes_behind():
        # One of a stream: the row is journaled with the job and committed behind (runner.journal.new_rows).
        values = row.column_values()
        try:
            submit_job(spec, job_id, arguments, backends, meta=meta, event=accepted, new_row=values)
        except REDIS_ERRORS as exc:  # neither the job nor its row is in
            _forget(backends, spec, job_id, row_written=False)
            raise redis_unavailable(NOT_ACCEPTED) from exc
        backends.new_rows.hand(values)
        return row
    # The row is written first so a worker never finishes a job the store has not heard of.
    try:
        backends.store.insert(row.column_values())
        backends.new_rows.database_answered()
        submit_job(spec, job_id, arguments, backends, meta=meta, run_at=options.run_at, event=accepted)
    except REDIS_ERRORS as exc:
        _forget(backends, spec, job_id)
        raise redis_unavailable(NOT_ACCEPTED) from exc
    except BackendUnavailable:  # the database is away: no row, no job
        _forget(backends, spec, job_id, row_written=False)
        raise
    return row


def _forget(backends: Backends, spec: FunctionSpec, job_id: str, *, row_written: bool = True) -> None:
    """Undo what an invocation that was not accepted left behind (best effort: a backend is away)."""
    if row_written:
        backends.store.delete(job_id)
    try:
        release_waiting_place(backends.connection, spec.name, job_id)
    except REDIS_ERRORS:
        pass  # the waiting entry of a job that never existed is pruned when the function is full


def enqueue_invocation(spec: FunctionSpec, payload: Any, backends: Backends) -> InvocationRow:
    """Validate `payload`, record it, enqueue it; return its row. Nothing invalid is enqueued."""
    return accept_invocation(spec, payload, backends).record
