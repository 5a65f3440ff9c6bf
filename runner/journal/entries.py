"""The journal: every write of history, as one entry of a Redis stream, written by the call that
changes the job in Redis.

Whoever moves a job on (the API accepting it, a worker starting or ending it, recovery settling
it, a cancel or a retry) appends the row's new values in the same script call or transaction
that makes the change, so Redis holds both or neither, whatever process dies when. The
projector (runner.journal.projector) later applies entries to SQL, oldest first.

Each entry carries its job's fence: the number of the execution (attempt) that wrote it, from
the job hash's `runner_fence` field (runner.rq_seam.bookkeeping). A row remembers the fence and
the stream position of the last entry applied to it, and an entry applies only where it is not
older on either count: a write from an older attempt never overwrites a newer one, and an entry
applied twice (a projector that died between its commit and its delete) changes nothing.

Keys::

    runner:journal         stream; field `e` of each entry is JSON [job id, fence, new row?, values]
                           and, when tracing is on, the job's traceparent (runner.tracing) last
    runner:journal:lease   the name of the projector that applies the journal now (SET NX PX)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis
from redis.client import Pipeline

from runner.store.statements import values_from_json, values_to_json

JOURNAL_KEY = "runner:journal"
LEASE_KEY = "runner:journal:lease"
ENTRY_FIELD = "e"
# A stream id "<ms>-<seq>" as one sortable integer: ms * POSITION_SCALE + seq (seq never reaches it).
POSITION_SCALE = 1_000_000


@dataclass(frozen=True, slots=True)
class Entry:
    """One journaled write: a new row (`new`), or new values for an existing one."""

    position: int
    job_id: str
    fence: int
    new: bool
    values: dict[str, Any]
    traceparent: str | None = None


def append(commands: Pipeline | redis.Redis, job_id: str, values: dict[str, Any], *, fence: int,
           new: bool = False, traceparent: str | None = None) -> None:
    """Queue the journal entry of one row write in `commands` (new rows carry every column)."""
    commands.xadd(JOURNAL_KEY, {ENTRY_FIELD: encode(job_id, values, fence=fence, new=new, traceparent=traceparent)})


def encode(job_id: str, values: dict[str, Any], *, fence: int, new: bool = False,
           traceparent: str | None = None) -> str:
    """An entry's field value; the traceparent, only when there is one, so the projector's write
    joins the job's trace (runner.tracing.traceparent_of gives None when tracing is off)."""
    fields: list[Any] = [job_id, fence, new, values_to_json(values)]
    if traceparent:
        fields.append(traceparent)
    return json.dumps(fields, separators=(",", ":"))


def decode(stream_id: bytes | str, raw: bytes | str) -> Entry:
    """An entry read back from the stream."""
    fields = json.loads(raw)
    job_id, fence, new, values = fields[:4]
    traceparent = str(fields[4]) if len(fields) > 4 else None
    return Entry(position_of(stream_id), str(job_id), int(fence), bool(new), values_from_json(values), traceparent)


def position_of(stream_id: bytes | str) -> int:
    """A stream id as one integer that sorts as the stream does."""
    text = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
    milliseconds, _, sequence = text.partition("-")
    return int(milliseconds) * POSITION_SCALE + int(sequence or 0)


def stream_id_of(position: int) -> str:
    """The stream id a position was made from."""
    return f"{position // POSITION_SCALE}-{position % POSITION_SCALE}"
