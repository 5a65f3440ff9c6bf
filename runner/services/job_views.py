"""Job views: live from Redis, falling back to the SQL row once Redis has forgotten the job."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field, fields
from datetime import datetime
from enum import Enum
from typing import Any

from rq.exceptions import DeserializationError, NoSuchJobError
from rq.job import Job

from runner.errors import BackendUnavailable, JobNotFound
from runner.journal.ends import ended_key
from runner.journal.reads import read_history
from runner.journal.rows import progress_of
from runner.redis_connection import REDIS_ERRORS, redis_unavailable
from runner.rq_seam.dependencies import dependency_ids
from runner.rq_seam.job_reads import fetch_with_latest_result
from runner.services.backends import Backends
from runner.services.parents import waiting_for
from runner.status import STATUS_WORDS, TERMINAL_STATUSES, JobStatus
from runner.store.database import as_utc
from runner.store.models import LISTED_JSON_CHARS, InvocationRow, ListedInvocation

JOB_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Longest a waiter blocks before it reads the job again (API connections time out after 2 s).
WAIT_SLICE_SECONDS = 0.5
# A view shows the error of a job in these states (a canceled one has one when the runner canceled it).
ERROR_STATUSES = frozenset({JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED})


@dataclass
class JobView:
    """What a user sees of a job."""

    id: str
    function: str
    queue: str
    status: str
    progress: dict[str, Any]
    result: Any
    error: dict[str, str] | None
    attempts: int
    input: Any
    artifacts: list[dict[str, Any]]
    created_at: str | None
    started_at: str | None
    ended_at: str | None
    # The schedule whose tick made the job, or None.
    schedule: str | None
    # True in a row of GET /jobs whose input (result) was cut: it then holds the first
    # LISTED_JSON_CHARS characters of the value's JSON text; GET /jobs/<id> has it whole.
    input_truncated: bool
    result_truncated: bool
    # The jobs it waits for (`?after=`), and those of them not finished yet while it is deferred.
    after: list[str] = field(default_factory=list)
    waiting_for: list[str] = field(default_factory=list)

    @property
    def is_terminal(self) -> bool:
        """True once the job will not change by itself any more."""
        return self.status in STATUS_WORDS and JobStatus(self.status) in TERMINAL_STATUSES

    def to_dict(self) -> dict[str, Any]:
        """The JSON body of the job view."""
        # Not dataclasses.asdict: its deep copy of input and result costs more than the rest of a view.
        return {name: getattr(self, name) for name in _VIEW_FIELDS}


_VIEW_FIELDS = tuple(view_field.name for view_field in fields(JobView))


def iso_time(value: datetime | None) -> str | None:
    """ISO 8601 in UTC (SQLite hands back times without a zone), or None."""
    aware = as_utc(value)
    return aware.isoformat() if aware else None


def _artifact_listing(job_id: str, stored: Any) -> list[dict[str, Any]]:
    entries = stored if isinstance(stored, list) else []
    return [{**entry, "url": f"/jobs/{job_id}/artifacts/{entry['name']}"} for entry in entries if "name" in entry]


def view_from_job(job: Job) -> JobView:
    """The view of a job that Redis still holds."""
    meta = job.get_meta(refresh=False)
    status = job.get_status(refresh=False) or JobStatus.QUEUED
    status_word = status.value if isinstance(status, Enum) else str(status)
    error = meta.get("error") if status_word in ERROR_STATUSES else None
    if status_word == JobStatus.FAILED and not error:
        error = error_from_traceback(job)
    args = job.args or ()
    return JobView(
        id=job.id,
        function=str(meta.get("function") or job.func_name),
        queue=job.origin,
        status=status_word,
        progress=progress_of(status_word, meta.get("progress")),
        result=job.return_value() if status_word == JobStatus.FINISHED else None,
        error=error,
        attempts=int(meta.get("attempts", 0)),
        input=args[1] if len(args) > 1 else job.kwargs,
        artifacts=_artifact_listing(job.id, meta.get("artifacts")),
        created_at=iso_time(job.created_at),
        started_at=iso_time(job.started_at),
        ended_at=iso_time(job.ended_at),
        schedule=meta.get("schedule"),
        input_truncated=False,
        result_truncated=False,
        after=dependency_ids(job),
    )


def error_from_traceback(job: Job) -> dict[str, str]:
    """Type and message from RQ's stored traceback of the job's latest attempt."""
    result = job.latest_result()
    return error_from_text((result.exc_string if result else None) or "")


def error_from_text(text: str) -> dict[str, str]:
    """Type and message from the last line of a traceback, or of RQ's note on a dead work horse."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else "The job failed without an error message."
    if last.startswith("Work-horse terminated unexpectedly"):
        return {"type": "WorkerDied", "message": f"The worker running this job died: {last}"}
    kind, _, message = last.partition(": ")
    if not message or " " in kind:
        return {"type": "JobFailed", "message": last}
    return {"type": kind.rsplit(".", 1)[-1], "message": message}


def view_from_record(record: InvocationRow) -> JobView:
    """The view of a job from its SQL row (Redis forgot it, or Redis is away)."""
    return _view_of_row(record, record.input, record.result)


def view_from_listing(listed: ListedInvocation) -> JobView:
    """The view of a row of a page of history: input and result whole when their JSON text is
    at most LISTED_JSON_CHARS characters long, else its head, flagged as cut."""
    input_value, input_cut = _summary(listed.input_head)
    result_value, result_cut = _summary(listed.result_head)
    return _view_of_row(listed.record, input_value, result_value, input_truncated=input_cut,
                        result_truncated=result_cut)


def _summary(head: str | None) -> tuple[Any, bool]:
    """The value whose JSON text starts with `head` (see Store.list), and whether it was cut."""
    if head is None:
        return None, False
    if len(head) > LISTED_JSON_CHARS:
        return head[:LISTED_JSON_CHARS], True
    return json.loads(head), False


def _view_of_row(record: InvocationRow, input_value: Any, result: Any, *, input_truncated: bool = False,
                 result_truncated: bool = False) -> JobView:
    return JobView(
        id=record.id,
        function=record.function,
        queue=record.queue,
        status=record.status,
        progress=progress_of(record.status, {"percent": record.progress_percent, "message": record.progress_message}),
        result=result,
        error=record.error if record.status in ERROR_STATUSES else None,
        attempts=record.attempts,
        input=input_value,
        artifacts=_artifact_listing(record.id, record.artifacts),
        created_at=iso_time(record.created_at),
        started_at=iso_time(record.started_at),
        ended_at=iso_time(record.ended_at),
        schedule=record.schedule,
        input_truncated=input_truncated,
        result_truncated=result_truncated,
        after=list(record.after_ids or ()),
    )


def get_job_view(job_id: str, backends: Backends, *, after_end_wait: float = 0.0) -> JobView:
    """The freshest view of a job: Redis first, then the store; JobNotFound if neither knows it.

    `after_end_wait`: first block until the job's end is announced or these seconds pass, in the
    same round trip as the read (Redis runs the read the moment the wait ends).
    """
    if not JOB_ID_PATTERN.match(job_id):
        raise JobNotFound(f"No job has the id {job_id!r}.")
    redis_error: Exception | None = None
    try:
        # A waiter answers once the end is in Redis, not once its row is in SQL: the row follows
        # through the journal (the projector), and every read of history applies the journal first
        # (runner.journal.reads), so no reader sees it older. `make bench`, latency on PostgreSQL:
        # the row's transaction (0.7 ms) was most of what the waiter spent past Celery's.
        job = fetch_with_latest_result(job_id, backends.connection, wait_on=ended_key(job_id),
                                       wait_seconds=after_end_wait)
        view = view_from_job(job)
        if view.status == JobStatus.DEFERRED and view.after:
            view.waiting_for = waiting_for(backends.connection, backends.store, view.after)
        return view
    except (NoSuchJobError, DeserializationError):
        pass  # not in Redis (or not a runner job): the store decides
    except REDIS_ERRORS as exc:
        if after_end_wait:  # a waiter must not spin on the row while Redis is away
            raise redis_unavailable() from exc
        redis_error = exc
    try:
        record = read_history(backends.connection, backends.store).get(job_id)
    except BackendUnavailable:
        if redis_error is not None:
            raise BackendUnavailable("Redis and the database are unavailable.",
                                     details={"dependency": ["redis", "database"]}) from redis_error
        raise
    if record is None:
        if redis_error is not None:
            raise redis_unavailable() from redis_error
        raise JobNotFound(f"No job has the id {job_id!r}.")
    return view_from_record(record)


def wait_for_job(job_id: str, backends: Backends, timeout: float, *, fresh: bool = False) -> JobView:
    """Wait until the job ends or `timeout` passes; return its latest view either way.

    Workers announce each end in the call that records it (runner.journal.ends); ends nobody
    announces (a cancel) are seen within WAIT_SLICE_SECONDS. `fresh`: the caller
    has just enqueued the job, so it waits for the announcement before its first look.
    """
    deadline = time.monotonic() + timeout
    if fresh:
        view = view_after_end(backends, job_id, min(timeout, WAIT_SLICE_SECONDS))
    else:
        view = get_job_view(job_id, backends)
    while not view.is_terminal and (remaining := deadline - time.monotonic()) > 0:
        view = view_after_end(backends, job_id, min(remaining, WAIT_SLICE_SECONDS))
    return view


def view_after_end(backends: Backends, job_id: str, seconds: float) -> JobView:
    """The job's view once its end is announced, or once `seconds` pass."""
    return get_job_view(job_id, backends, after_end_wait=seconds)
