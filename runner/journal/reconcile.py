"""Store writes that failed because the database was away, kept in Redis until it is back.

A worker that cannot write a job's row does not lose the outcome: it appends the write to a
Redis list, and workers replay that list (oldest first) once the database answers again. A
replayed write never overwrites a newer one: it applies only where the row's `updated_at` is
not later than the moment the write was first attempted.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

import redis
from redis.client import Pipeline

from runner.errors import BackendUnavailable
from runner.journal.write_behind import RowWrite, WriteBehind
from runner.services.backends import REDIS_ERRORS
from runner.store.models import utcnow
from runner.store.sql_store import Store
from runner.store.statements import values_from_json, values_to_json

log = logging.getLogger(__name__)

PENDING_WRITES_KEY = "runner:store:pending"
REPLAY_BATCH = 500

# In a worker process, row updates go through its write-behind writer (see runner.journal.write_behind).
_write_behind: WriteBehind | None = None


def install_write_behind(writer: WriteBehind | None) -> None:
    """Send this process's row updates through `writer` (None: write them synchronously again)."""
    global _write_behind
    _write_behind = writer


def write_or_defer(
    store: Store, connection: redis.Redis, job_id: str, *, as_of: datetime | None = None, **values: Any
) -> None:
    """Write the row now, or keep the write in Redis for replay when the database is away.

    With `as_of`, the row is written as it was at that moment, unless something newer reached it
    since (a later attempt's start, say): whoever moves a job on in Redis and then writes its row
    races the next worker, and the older news must not win. Replays are always conditional.
    """
    write = _row_write(job_id, as_of, values)
    values, item = write.values, write.raw
    # Behind a writer every write is conditional: its `updated_at` is when it was made.
    if _write_behind is not None and _write_behind.submit(write):
        return
    try:
        if as_of is not None:
            store.update_unless_newer(job_id, **values)
        else:
            store.update(job_id, **values)
        return
    except BackendUnavailable:
        pass
    try:
        connection.rpush(PENDING_WRITES_KEY, item)
        log.warning("job %s: database unavailable; the row update waits in Redis for replay", job_id)
    except REDIS_ERRORS:
        log.error("job %s: database and Redis unavailable; this row update is lost", job_id)


def flush_write_behind(timeout: float) -> bool:
    """Commit this process's pending row updates now (read-your-writes before reading history)."""
    return _write_behind is None or _write_behind.flush(timeout)


def stage_write(
    store: Store, connection: redis.Redis, pipeline: Pipeline, job_id: str, *, as_of: datetime | None = None,
    **values: Any,
) -> tuple[Callable[[], None], RowWrite | None]:
    """Journal a row update in `pipeline`, with the Redis change it records: what to call after
    the pipeline executed, and the write as journaled.

    Without a write-behind writer (outside workers) nothing is journaled (None), and the
    returned call writes the row as `write_or_defer` does.
    """
    writer = _write_behind
    if writer is None:
        return lambda: write_or_defer(store, connection, job_id, as_of=as_of, **values), None
    write = _row_write(job_id, as_of, values)
    writer.journal_into(pipeline, write)
    return lambda: writer.enqueue(write), write


def _row_write(job_id: str, as_of: datetime | None, values: dict[str, Any]) -> RowWrite:
    if as_of is not None:
        values["updated_at"] = as_of
    values.setdefault("updated_at", utcnow())
    item = json.dumps({"job_id": job_id, "values": values_to_json(values)})
    return RowWrite(job_id, values, item)


def replay_pending_writes(store: Store, connection: redis.Redis, limit: int = REPLAY_BATCH) -> int:
    """Apply deferred writes, oldest first, until the list is empty or the database fails again."""
    applied = 0
    while applied < limit:
        raw = connection.lpop(PENDING_WRITES_KEY)
        if not isinstance(raw, bytes | str):
            break
        item = json.loads(raw)
        values = values_from_json(item["values"])
        try:
            store.update_unless_newer(item["job_id"], **values)
        except BackendUnavailable:
            connection.lpush(PENDING_WRITES_KEY, raw)  # back at the head: order is kept
            break
        applied += 1
    if applied:
        log.info("replayed %d deferred store writes", applied)
    return applied


def has_pending_writes(connection: redis.Redis) -> bool:
    """True when some store write waits for replay."""
    return bool(connection.llen(PENDING_WRITES_KEY))
