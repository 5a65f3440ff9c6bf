"""What a function may ask of the worker that runs it: progress, its attempt, files, the history, the
results of the jobs it waited for.

A worker installs its environment once (its uploads, artifacts and store) and opens a job
context around each job it runs (runner.worker.execution). These functions only look them up,
so importing them loads neither RQ, Redis nor SQLAlchemy; outside a job, `progress` does
nothing and `current_attempt` says 1.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

MAX_MESSAGE_LENGTH = 500


class JobContext(Protocol):
    """The job being run, as its function sees it."""

    @property
    def job_id(self) -> str:
        """The job's id."""

    @property
    def attempt(self) -> int:
        """Which attempt this is (1 for the first)."""

    def report_progress(self, percent: int, message: str) -> None:
        """Publish the job's progress (already bounded to 0-100 and MAX_MESSAGE_LENGTH)."""

    def save_artifact(self, name: str, content: bytes, media_type: str | None) -> dict[str, Any]:
        """Keep a file the job produced; its listing entry."""

    def parent_results(self) -> dict[str, Any]:
        """The results of the jobs this one waited for (`?after=`), by job id."""


class Environment(Protocol):
    """What every job of a worker process shares: the stored uploads and the history."""

    def upload_path(self, upload_id: str) -> Path:
        """The file behind an upload id; PermanentError when it is gone."""

    def history(self, since: datetime | None, until: datetime | None,
                function: str | None) -> Iterator[dict[str, Any]]:
        """The invocation rows created in [since, until), oldest first."""

    def summary(self, since: datetime | None, until: datetime | None, function: str | None,
                leave_out: str | None) -> list[dict[str, Any]]:
        """Per-function totals of the rows created in [since, until), computed by the database."""


_job: ContextVar[JobContext | None] = ContextVar("runner_job", default=None)
_environment: Environment | None = None


def install_environment(environment: Environment | None) -> None:
    """Make a worker's environment known to the functions it runs (None to forget it)."""
    global _environment
    _environment = environment


@contextmanager
def running(job: JobContext) -> Iterator[None]:
    """Within this block, the functions below speak of `job`."""
    token = _job.set(job)
    try:
        yield
    finally:
        _job.reset(token)


def progress(percent: float, message: str = "") -> None:
    """Report progress of the running job (0-100); does nothing outside a worker."""
    job = _job.get()
    if job is not None:
        job.report_progress(max(0, min(100, int(percent))), str(message)[:MAX_MESSAGE_LENGTH])


def current_attempt() -> int:
    """Which attempt of the current job this is (1 for the first; 1 outside a worker)."""
    job = _job.get()
    return 1 if job is None else job.attempt


def parent_results() -> dict[str, Any]:
    """{job id: result} of the jobs the running job waited for (`?after=`): fan-in; {} outside a worker.

    Every job it waited for has finished when it starts (a failed one cancels it instead)."""
    job = _job.get()
    return {} if job is None else job.parent_results()


def save_artifact(name: str, data: bytes | str, media_type: str | None = None) -> dict[str, Any]:
    """Keep a file the job produced; it is listed in the job view and served by the API."""
    job = _job.get()
    if job is None:
        raise RuntimeError("save_artifact is only called inside a job")
    return job.save_artifact(name, data.encode() if isinstance(data, str) else bytes(data), media_type)


async def aprogress(percent: float, message: str = "") -> None:
    """`progress` for an `async def` function: the write runs off the event loop."""
    await asyncio.to_thread(progress, percent, message)


async def aparent_results() -> dict[str, Any]:
    """`parent_results` for an `async def` function: the read runs off the event loop."""
    return await asyncio.to_thread(parent_results)


async def asave_artifact(name: str, data: bytes | str, media_type: str | None = None) -> dict[str, Any]:
    """`save_artifact` for an `async def` function: the file and its record are written off the event loop."""
    return await asyncio.to_thread(save_artifact, name, data, media_type)


def upload_path(upload_id: str) -> Path:
    """The file behind an upload id (a function's `UploadId` input); PermanentError if it is gone."""
    return _installed().upload_path(upload_id)


def invocation_history(
    since: datetime | None = None, until: datetime | None = None, function: str | None = None
) -> Iterator[dict[str, Any]]:
    """The runner's own invocation rows, oldest first, without the calling job's own (for report functions)."""
    rows = _installed().history(since, until, function)
    job = _job.get()
    if job is None:
        return rows
    # The caller is still running: its row would say `started` in a report of what has happened.
    own_id = job.job_id
    return (row for row in rows if row.get("id") != own_id)


def invocation_summary(
    since: datetime | None = None, until: datetime | None = None, function: str | None = None
) -> list[dict[str, Any]]:
    """Per-function totals of the runner's invocations created in [since, until), computed by the
    database, without the calling job: `function`, `count`, `statuses` ({status: count}), `retries`
    and `duration_percentiles` ({50: seconds, 95: seconds}, empty when no ended job started)."""
    job = _job.get()
    return _installed().summary(since, until, function, job.job_id if job is not None else None)


def _installed() -> Environment:
    if _environment is None:
        raise RuntimeError("no worker environment is installed: this runs inside a runner worker")
    return _environment
