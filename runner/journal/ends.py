"""The token that says a job has ended: `?wait=` blocks on it.

A worker pushes it in the script call that ends the job and journals its row, so a waiter that
wakes finds the end in Redis, and in history through a read (runner.journal.reads), which
applies what waits in the journal first. A waiter also reads the job again every half second
(runner.services.job_views), so an end nobody announces (a cancel) is seen all the same.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis
from redis.client import Pipeline

ENDED_KEY_PREFIX = "runner:ended:"
ENDED_TOKEN_TTL_SECONDS = 60


def ended_key(job_id: str) -> str:
    """The list that receives a token when the job has ended."""
    return f"{ENDED_KEY_PREFIX}{job_id}"


def announce_ends(pipeline: Pipeline | redis.Redis, ended: Iterable[str]) -> None:
    """Wake whoever waits for these jobs, in `pipeline` (the call that ends them)."""
    for job_id in ended:
        pipeline.lpush(ended_key(job_id), "1")
        pipeline.expire(ended_key(job_id), ENDED_TOKEN_TTL_SECONDS)
