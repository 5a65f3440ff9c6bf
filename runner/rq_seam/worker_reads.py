"""Reading the live workers' hashes: every worker in two round trips whatever their number, with RQ's
fields and the runner's slot fields, for GET /workers, /metrics and /scaling.

RQ's `Worker.all` reads three commands per worker (EXISTS, HGETALL, HGET current_job), one round trip
each, and drops the fields it does not know; here one SMEMBERS and one pipeline of HGETALL read them
all. The fields RQ writes are parsed as its `Worker.refresh` does (tests/unit/test_rq_seam.py pins it).
A worker is alive while its hash exists (it expires when heartbeats stop): a key left in RQ's set of
workers without a hash is skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import redis
from rq.utils import utcparse

from runner.rq_seam.keys import (
    WORKER_BIRTH_FIELD,
    WORKER_CURRENT_JOB_FIELD,
    WORKER_FAILED_FIELD,
    WORKER_HEARTBEAT_FIELD,
    WORKER_HOSTNAME_FIELD,
    WORKER_KEY_PREFIX,
    WORKER_LOOP_BLOCKED_FIELD,
    WORKER_LOOP_LAG_FIELD,
    WORKER_PID_FIELD,
    WORKER_QUEUES_FIELD,
    WORKER_SLOTS_BUSY_FIELD,
    WORKER_SLOTS_FIELD,
    WORKER_STATE_FIELD,
    WORKER_SUCCESSFUL_FIELD,
    WORKER_WORKING_TIME_FIELD,
    WORKERS_KEY,
)

# RQ's state word of a worker running a job.
BUSY_STATE = "busy"

_Number = TypeVar("_Number", int, float)


@dataclass(frozen=True)
class WorkerSlots:
    """How many jobs a worker runs at once (`total`), how many it runs now (`busy`), and the difference."""

    total: int
    busy: int
    free: int


@dataclass(frozen=True)
class WorkerRecord:
    """One live worker as its hash says."""

    name: str
    state: str
    queues: list[str]
    current_job: str | None
    successful_jobs: int
    failed_jobs: int
    total_working_seconds: float
    hostname: str | None
    pid: int | None
    started_at: datetime | None
    last_heartbeat: datetime | None
    slots: WorkerSlots
    loop_lag_seconds: float
    loop_blocked: int


def read_live_workers(connection: redis.Redis) -> list[WorkerRecord]:
    """Every live worker, by name."""
    keys = sorted(_text(raw) for raw in connection.smembers(WORKERS_KEY))
    pipe = connection.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
    hashes = zip(keys, pipe.execute(), strict=True)
    return [worker_record(key.removeprefix(WORKER_KEY_PREFIX), {_text(field): _text(value)
                                                                for field, value in raw.items()})
            for key, raw in hashes if raw]


def worker_record(name: str, fields: dict[str, str]) -> WorkerRecord:
    """A worker's record from its hash's fields; a slot field absent (a worker older than slots) or unreadable
    reads as one slot, busy while RQ's state says so, no loop lag and no blocked loop."""
    state = fields.get(WORKER_STATE_FIELD, "?")
    total = max(1, _number(fields.get(WORKER_SLOTS_FIELD), int, 1))
    busy = min(total, max(0, _number(fields.get(WORKER_SLOTS_BUSY_FIELD), int, int(state == BUSY_STATE))))
    return WorkerRecord(
        name=name,
        state=state,
        queues=[queue for queue in fields.get(WORKER_QUEUES_FIELD, "").split(",") if queue],
        current_job=fields.get(WORKER_CURRENT_JOB_FIELD),
        successful_jobs=_number(fields.get(WORKER_SUCCESSFUL_FIELD), int, 0),
        failed_jobs=_number(fields.get(WORKER_FAILED_FIELD), int, 0),
        total_working_seconds=_number(fields.get(WORKER_WORKING_TIME_FIELD), float, 0.0),
        hostname=fields.get(WORKER_HOSTNAME_FIELD) or None,
        pid=_number(fields.get(WORKER_PID_FIELD), int, 0) or None,
        started_at=_time(fields.get(WORKER_BIRTH_FIELD)),
        last_heartbeat=_time(fields.get(WORKER_HEARTBEAT_FIELD)),
        slots=WorkerSlots(total=total, busy=busy, free=total - busy),
        loop_lag_seconds=max(0.0, _number(fields.get(WORKER_LOOP_LAG_FIELD), float, 0.0)),
        loop_blocked=max(0, _number(fields.get(WORKER_LOOP_BLOCKED_FIELD), int, 0)),
    )


def _number(raw: str | None, kind: type[_Number], default: _Number) -> _Number:
    # Whatever wrote the hash, a field that is not a finite number must not fail a listing.
    try:
        value = float(raw) if raw else math.nan
    except ValueError:
        return default
    return kind(value) if math.isfinite(value) else default


def _time(raw: str | None) -> datetime | None:
    return utcparse(raw) if raw else None


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw
