"""The status words of a job: RQ's, and ours too (one enum, used by the engine and the HTTP client)."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """Where a job is in its life."""

    QUEUED = "queued"
    SCHEDULED = "scheduled"
    DEFERRED = "deferred"
    STARTED = "started"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELED = "canceled"
    STOPPED = "stopped"


TERMINAL_STATUSES = frozenset({JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.STOPPED})
STATUS_WORDS = frozenset(status.value for status in JobStatus)
# The terminal statuses as words, in a fixed order (SQL `IN` lists).
TERMINAL_WORDS = tuple(sorted(status.value for status in TERMINAL_STATUSES))
