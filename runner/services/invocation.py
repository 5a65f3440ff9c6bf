"""Accepting an invocation: validate, claim its idempotency key, enqueue the RQ job with its journaled row."""

from __future__ import annotations

import functools
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from rq.queue import Queue

from runner import tracing
from runner.authoring.spec import FunctionSpec
from runner.errors import BackendUnavailable, NotReplicated
from runner.journal import entries as journal
from runner.redis_connection import NOT_ACCEPTED, REDIS_ERRORS, redis_unavailable, require_replicas
from runner.rq_seam.dependencies import queue_deferred
from runner.rq_seam.job_hash import JobTemplate, job_fields, job_key, new_job, queue_job, template_for
from runner.rq_seam.queues import queue_for
from runner.rq_seam.scripts import encode_commands, script_pipeline
from runner.services.backends import Backends
from runner.services.callbacks import check_callback_url
from runner.services.dependencies import check_after, settle_deferred, watch_deferred
from runner.services.expiry import DEADLINE_META, queue_deadline, set_deadline
from runner.services.idempotency import Claim, claim_or_find, fingerprint, release
from runner.services.lifecycle import JobEvent, emit, emit_into
from runner.services.limits import release_waiting_place, reserve_waiting_place
from runner.status import JobStatus
from runner.store.models import NewInvocation, utcnow

# How far ahead `?delay=` / `?at=` may schedule a job.
MAX_SCHEDULE_AHEAD = timedelta(days=30)
# An invocation is refused (503) unless the database answered this process this recently, or answers a ping.
DATABASE_ANSWERED_WITHIN_SECONDS = 1.0


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
    # A schedule's tick: the schedule's id, and the job id its tick names (runner.services.schedule_ticks).
    schedule: str | None = None
    job_id: str | None = None
    # Seconds after acceptance past which it never starts (None: the function's `expires`).
    expires: float | None = None
    # The jobs it waits for (`?after=`): it runs once all of them finished.
    after: tuple[str, ...] = ()


@dataclass(frozen=True)
class Accepted:
    """The job of an accepted invocation; `replayed` when an idempotency key named an earlier one."""

    job_id: str
    # The row as journaled, for a new job (its 202 is made from it); None for a replay.
    row: NewInvocation | None = None
    # The job may have moved on since the row was journaled (a job with `after`, settled at once).
    settled: bool = False

    @property
    def replayed(self) -> bool:
        """Whether an idempotency key named an earlier invocation."""
        return self.row is None


def schedule_time(run_at: datetime) -> datetime:
    """`run_at` rounded up to a whole second: RQ's scheduler keeps whole seconds, and must never run early."""
    whole = run_at.replace(microsecond=0)
    return whole if whole == run_at else whole + timedelta(seconds=1)


def job_meta(spec: FunctionSpec, *, attempts: int = 0, callback_url: str | None = None,
             status: str = JobStatus.QUEUED.value, schedule: str | None = None) -> dict[str, Any]:
    """The job.meta a runner job starts with (its progress message says what it waits for: `status`)."""
    meta: dict[str, Any] = {
        "function": spec.name,
        "attempts": attempts,
        "progress": {"percent": 0, "message": status},
    }
    if callback_url:
        meta["callback_url"] = callback_url
    if schedule:
        meta["schedule"] = schedule
    if traceparent := tracing.current_traceparent():  # its attempts join the request's trace
        meta[tracing.TRACEPARENT] = traceparent
    return meta


def submit_job(spec: FunctionSpec, job_id: str, arguments: dict[str, Any], backends: Backends, *,
               meta: dict[str, Any], run_at: datetime | None = None, event: JobEvent | None = None,
               row: NewInvocation | None = None, row_values: dict[str, Any] | None = None,
               fence: int = 0, after: tuple[str, ...] = ()) -> None:
    """Put the RQ job on its queue now, in the scheduled registry until `run_at`, or deferred until
    the jobs named in `after` end (runner.services.dependencies); raises Redis errors.

    The job's history goes with it, in the same script call: a new `row`, or `row_values` for the
    row of a job enqueued again (its journal entries carry `fence`). `event`, if given, is
    emitted once the job is in Redis (its metrics travel with the job).
    """
    queue = queue_for(spec.queue, backends.connection)
    settings = backends.settings
    created_at = row.created_at if row is not None else utcnow()
    with script_pipeline(backends.connection) as pipe:
        if after:
            job = new_job(queue, spec, job_id, arguments, meta=meta, result_ttl=settings.result_ttl,
                          failure_ttl=settings.failure_ttl, depends_on=after)
            queue_deferred(pipe, queue, job)
            watch_deferred(pipe, job_id)
        elif run_at is not None:
            job = new_job(queue, spec, job_id, arguments, meta=meta, result_ttl=settings.result_ttl,
                          failure_ttl=settings.failure_ttl)
            queue.schedule_job(job, schedule_time(run_at), pipeline=pipe)
        else:
            # On every invocation's path: the job's hash from its function's template (RQ's
            # enqueue_job: two dozen calls, nine replies).
            template = _template(queue, spec, settings.result_ttl, settings.failure_ttl)
            queue_job(pipe, queue, job_id, job_fields(template, spec, arguments, meta, created_at))
        if meta.get(DEADLINE_META) is not None:
            queue_deadline(pipe, job_id, float(meta[DEADLINE_META]))
        traceparent = tracing.traceparent_of(meta)  # the SQL write joins the trace (None when off)
        if row is not None:
            journal.append(pipe, job_id, row.column_values(), fence=fence, new=True, traceparent=traceparent)
        elif row_values is not None:
            journal.append(pipe, job_id, row_values, fence=fence, traceparent=traceparent)
        if event is not None:
            emit_into(pipe, event)
        # Other threads' new jobs may travel in the same call (see group_commit).
        with tracing.span("enqueue", kind="PRODUCER", attributes={"runner.job_id": job_id,
                                                                   "messaging.destination.name": spec.queue}):
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
    arguments = validated_input(spec, payload, backends)
    callback_url = check_callback_url(options.callback_url, backends.settings)
    check_after(options.after, backends)
    job_id = options.job_id or new_job_id()
    claim: Claim | None = None
    if options.idempotency_key is not None:
        claim = Claim(job_id, spec.name, fingerprint(spec.name, arguments), time.time())
        earlier = claim_or_find(backends.connection, options.idempotency_key, claim,
                                backends.settings.idempotency_ttl, lambda job_id: job_exists(job_id, backends))
        if earlier is not None:  # only returned once its job exists
            settings = backends.settings
            if settings.redis_min_replicas:  # it may be the retry of a 503 NotReplicated
                require_replicas(backends.connection, settings.redis_min_replicas, settings.redis_replica_timeout_ms)
            return Accepted(earlier)
    try:
        row = _record_and_enqueue(spec, job_id, arguments, backends, options, callback_url)
    except NotReplicated as exc:
        # The primary holds the job: the claim keeps naming it, so a retry gets it, never a second.
        exc.details = {**exc.details, "job_id": job_id}
        raise
    except BaseException:
        if claim is not None and options.idempotency_key is not None:
            release(backends.connection, options.idempotency_key, claim)
        raise
    if options.after:
        # Its parents may have ended already: it is released or canceled now, not at the next flows pass.
        try:
            settle_deferred(backends.connection, backends.store, job_id)
        except (*REDIS_ERRORS, BackendUnavailable):
            return Accepted(row.id, row)  # accepted all the same, its 202 says deferred: a flows pass settles it
        return Accepted(row.id, row, settled=True)
    return Accepted(row.id, row)


def validated_input(spec: FunctionSpec, payload: Any, backends: Backends) -> dict[str, Any]:
    """An invocation's input checked against the function's signature (InvalidInput, a 422, if not)."""
    return spec.validate(payload, backends.validation_context())


def job_exists(job_id: str, backends: Backends) -> bool:
    """Whether Redis holds the job, or the store its row."""
    try:
        return bool(backends.connection.exists(job_key(job_id))) or backends.store.get(job_id) is not None
    except REDIS_ERRORS as exc:
        raise redis_unavailable(NOT_ACCEPTED) from exc


def _record_and_enqueue(spec: FunctionSpec, job_id: str, arguments: dict[str, Any], backends: Backends,
                        options: InvocationOptions, callback_url: str | None) -> NewInvocation:
    # History must be writable to accept: the row waits in the journal, but a database that does
    # not answer now (or lacks its table) is a 503, as it was when the row was written first (a
    # probe only after a second without an answer: a stream of invocations pays nothing).
    if not backends.store.answered_within(DATABASE_ANSWERED_WITHIN_SECONDS):
        backends.store.probe_history()
    try:
        reserve_waiting_place(backends.connection, spec, job_id)
    except REDIS_ERRORS as exc:
        raise redis_unavailable(NOT_ACCEPTED) from exc
    status = (JobStatus.DEFERRED if options.after else
              JobStatus.SCHEDULED if options.run_at is not None else JobStatus.QUEUED).value
    row = NewInvocation(id=job_id, function=spec.name, queue=spec.queue, status=status, input=arguments,
                        created_at=utcnow(), idempotency_key=options.idempotency_key, callback_url=callback_url,
                        schedule=options.schedule, after_ids=list(options.after) or None)
    meta = job_meta(spec, callback_url=callback_url, status=status, schedule=options.schedule)
    expires = options.expires if options.expires is not None else spec.expires
    if expires is not None:
        set_deadline(meta, row.created_at.timestamp(), expires)
    accepted = JobEvent("accepted", job_id, spec.name, spec.queue, status=status)
    try:
        submit_job(spec, job_id, arguments, backends, meta=meta, run_at=options.run_at, event=accepted, row=row,
                   after=options.after)
    except REDIS_ERRORS as exc:  # neither the job nor its row is in
        with suppress(*REDIS_ERRORS):  # else pruned when the function is full
            release_waiting_place(backends.connection, spec.name, job_id)
        raise redis_unavailable(NOT_ACCEPTED) from exc
    return row


def enqueue_invocation(spec: FunctionSpec, payload: Any, backends: Backends) -> NewInvocation:
    """Validate `payload`, journal its row and enqueue its job; return the row. Nothing invalid is enqueued."""
    return _record_and_enqueue(spec, new_job_id(), validated_input(spec, payload, backends),
                               backends, InvocationOptions(), None)
