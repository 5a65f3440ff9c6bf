"""A job's history row as its job in Redis says it should read: the one place its values are built.

Whoever moves a job on (a worker, recovery, a cancel, a retry) changes the RQ job first, then
journals `row_values(job, ...)` with that change, so the row always mirrors the job.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rq.job import Job

from runner.status import TERMINAL_STATUSES, JobStatus


def progress_of(status: str, stored: Any) -> dict[str, Any]:
    """The progress a job shows: what it reported, and 100 once it finished."""
    progress = stored if isinstance(stored, dict) else {}
    percent = int(progress.get("percent", 0))
    message = str(progress.get("message", ""))
    if status == JobStatus.FINISHED:
        return {"percent": 100, "message": message if percent == 100 and message else "finished"}
    return {"percent": percent, "message": message}


def row_values(job: Job, status: str, *, result: Any = None, ended_at: datetime | None = None) -> dict[str, Any]:
    """The columns of the job's row once the job is `status` (`result` only counts when finished).

    Terminal statuses get `ended_at` (the job's own when not given); every other status clears
    it, with the result, for the attempt to come. `started_at` is the start's, written with it, as
    Redis keeps it: an end leaves it (RQ sets the job's `started_at` again, in memory only, just
    before the code runs)."""
    meta = job.meta
    progress = progress_of(status, meta.get("progress"))
    terminal = status in TERMINAL_STATUSES
    values = {
        "status": status,
        "attempts": int(meta.get("attempts", 0)),
        "progress_percent": progress["percent"],
        "progress_message": progress["message"],
        "result": result if status == JobStatus.FINISHED else None,
        "error": meta.get("error"),
        "artifacts": meta.get("artifacts") or [],
        "ended_at": (ended_at or job.ended_at) if terminal else None,
    }
    if not terminal:
        values["started_at"] = job.started_at
    return values
