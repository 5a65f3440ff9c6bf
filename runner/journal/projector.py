"""The projector: applies journal entries (runner.journal.entries) to the SQL store, oldest first.

One projector at a time applies the journal, the holder of a short lease in Redis: every worker
process runs a projector thread, and whichever holds the lease applies while the others wait to
take over from one that dies. A batch is read from the head of the stream, folded into one
change per row (a short job's new row, start and end become one insert), committed in one
transaction, then deleted from the stream. A projector that dies between its commit and the
delete leaves the batch for the next one, which applies it again: the rows' journal positions
make that a no-op. While the database is away the entries wait in Redis, in order.

Reads of history that must see every accepted job first apply what waits
(runner.journal.reads), lease or not: applying an entry twice changes nothing, and the store
lets one applier in at a time.

With tracing on (runner.tracing), each applied entry that carries its job's traceparent gets a
`store.apply` span in that job's trace, from the start of its batch's transaction to its commit.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast

import redis

from runner import tracing
from runner.errors import BackendUnavailable
from runner.journal.entries import (
    ENTRY_FIELD,
    JOURNAL_KEY,
    LEASE_KEY,
    POSITION_SCALE,
    Entry,
    decode,
    stream_id_of,
)
from runner.redis_connection import REDIS_ERRORS
from runner.redis_lease import Lease
from runner.store.sql_store import Store
from runner.store.statements import RowChange

log = logging.getLogger(__name__)

MAX_BATCH = 500
LEASE_SECONDS = 5.0
# How long the lease holder blocks on an empty journal before it renews its lease.
WAIT_SECONDS = 1.0
# How long entries wait for company before they are applied: one transaction where there would be
# several, and no projector work competing with a short job while it runs (single-job latency:
# see README, Performance).
HOLD_SECONDS = 0.02
# While entries keep coming, the projector looks every HOLD_SECONDS instead of blocking until the
# next one: a wake-up per entry would compete with the job that wrote it; idle, it blocks.
BUSY_SECONDS = 1.0
# After the database failed, the projector tries again this often.
RETRY_SECONDS = 1.0

def fold(entries: Sequence[Entry]) -> list[RowChange]:
    """One change per row for a run of entries in journal order, later values winning.

    An entry of an older attempt than one already folded for its row is left out (its fence is
    lower): that attempt was settled and retried before it wrote. The change carries the
    highest fence and the last position, so the store skips it where the row is newer still.
    """
    folded: dict[str, tuple[dict[str, Any], int, int, bool]] = {}
    for entry in entries:
        values, fence, _position, insert = folded.get(entry.job_id, ({}, entry.fence, 0, False))
        if entry.fence < fence:
            continue
        if entry.new:
            values, insert = {**entry.values, **values}, True
        else:
            values = {**values, **entry.values}
        folded[entry.job_id] = (values, entry.fence, entry.position, insert)
    return [RowChange(job_id, values, fence, position, _updated_at(values, position, insert), insert=insert)
            for job_id, (values, fence, position, insert) in folded.items()]


def _updated_at(values: dict[str, Any], position: int, insert: bool) -> datetime:
    # A row written once, as accepted, was last updated when it was created; any later write at
    # the moment Redis took it (the stream id's milliseconds).
    if insert and values.get("status") in ("queued", "scheduled") and isinstance(values.get("created_at"), datetime):
        return values["created_at"]  # type: ignore[no-any-return]
    return datetime.fromtimestamp(position // POSITION_SCALE / 1000, UTC)


def record_store_writes(entries: Sequence[Entry], began: int, system: str) -> None:
    """A `store.apply` span per entry with a traceparent, in its job's trace: its batch's transaction,
    begun at `began` (ns since the epoch) and committed now, and how long the entry waited in the journal."""
    for entry in entries:
        if entry.traceparent is None:
            continue
        written_ms = entry.position // POSITION_SCALE  # when Redis took the entry (its stream id)
        tracing.record_span("store.apply", entry.traceparent, began, {
            "runner.job_id": entry.job_id, "db.system": system, "runner.journal.batch_size": len(entries),
            "runner.journal.wait_seconds": max(0.0, began / 1e9 - written_ms / 1000), "runner.fence": entry.fence,
            "runner.journal.entry_id": stream_id_of(entry.position),
        }, kind="CLIENT")


class Projector:
    """Applies the journal to one store."""

    def __init__(self, connection: redis.Redis, store: Store, *, name: str | None = None) -> None:
        self.connection = connection
        self.store = store
        self.name = name or f"projector-{uuid.uuid4().hex}"
        self._lease = Lease(connection, LEASE_KEY, self.name, LEASE_SECONDS)
        self._last_id = "0-0"

    def read_batch(self, most: int = MAX_BATCH) -> list[tuple[bytes, Entry]]:
        """Up to `most` entries from the head of the journal, with their stream ids."""
        found = cast(list[tuple[bytes, dict[bytes, bytes]]],
                     self.connection.xrange(JOURNAL_KEY, "-", "+", count=most))
        return [(stream_id, decode(stream_id, fields[ENTRY_FIELD.encode()])) for stream_id, fields in found]

    def apply(self, batch: Sequence[tuple[bytes, Entry]]) -> int:
        """Apply `batch` (from `read_batch`), then delete it; how many entries it had.
        BackendUnavailable when the database is away (the entries stay), Redis errors as raised."""
        if not batch:
            return 0
        entries = [entry for _stream_id, entry in batch]
        began = tracing.clock()  # None when tracing is off
        self.store.apply(fold(entries))
        if began is not None:
            record_store_writes(entries, began, self.store.engine.dialect.name)
        self.connection.xdel(JOURNAL_KEY, *[stream_id for stream_id, _entry in batch])
        self._last_id = stream_id_of(entries[-1].position)
        return len(entries)

    def apply_batch(self, most: int = MAX_BATCH) -> int:
        """Apply up to `most` entries from the head of the journal (see `apply`); how many there were."""
        return self.apply(self.read_batch(most))

    def catch_up(self, most: int) -> int:
        """Apply what waits, up to `most` entries; how many were applied."""
        applied = 0
        while applied < most:
            count = self.apply_batch(min(MAX_BATCH, most - applied))
            if not count:
                break
            applied += count
        return applied

    def hold_lease(self) -> bool:
        """Take the lease, or keep it; whether this projector holds it now."""
        return self._lease.hold()

    def release_lease(self) -> None:
        """Give the lease back (at exit), so another projector takes over at once."""
        self._lease.release()

    def wait_for_entries(self, seconds: float) -> None:
        """Block until an entry newer than the last one applied arrives, or `seconds` pass."""
        self.connection.xread({JOURNAL_KEY: self._last_id}, count=1, block=max(1, int(seconds * 1000)))

    def run(self, stop: threading.Event) -> None:
        """Apply the journal while this projector holds the lease, until `stop` is set (a thread's body).

        Entries wait up to HOLD_SECONDS for company, so a short job's new row, start and end become
        one change (a read of history does not wait for it: it applies what waits itself)."""
        database_away = False
        held_since: float | None = None
        renew_lease_at = 0.0
        busy_until = 0.0
        while not stop.is_set():
            try:
                now = time.monotonic()
                if now >= renew_lease_at:
                    if not self.hold_lease():
                        stop.wait(LEASE_SECONDS / 2)
                        continue
                    renew_lease_at = now + LEASE_SECONDS / 5
                # Counted while they wait for company, read (and decoded) once, when applied.
                waiting = self.connection.xlen(JOURNAL_KEY)
                if not waiting:
                    held_since = None
                    if now < busy_until:
                        stop.wait(HOLD_SECONDS)  # entries came lately: look again soon, not woken by each
                    else:
                        self.wait_for_entries(WAIT_SECONDS)
                    continue
                busy_until = now + BUSY_SECONDS
                held_since = held_since or now
                if waiting < MAX_BATCH and now - held_since < HOLD_SECONDS:
                    stop.wait(HOLD_SECONDS - (now - held_since))  # the jobs' own work goes first
                    continue
                self.apply(self.read_batch())
                held_since = None
                if database_away:
                    log.info("journal: the database answers again; applying the waiting entries")
                database_away = False
            except BackendUnavailable:
                if not database_away:
                    log.warning("journal: the database is unavailable; history writes wait in Redis")
                database_away = True
                stop.wait(RETRY_SECONDS)
            except REDIS_ERRORS as exc:  # the worker running this thread says Redis is away, once per retry
                log.debug("journal: Redis is unavailable (%s); retrying", exc)
                stop.wait(RETRY_SECONDS)
            except Exception:  # a bug must not end history for good: the entries stay, and we try again
                log.exception("journal: applying a batch failed; it stays in the journal")
                stop.wait(RETRY_SECONDS)


def start_projector_thread(connection: redis.Redis, store: Store,
                           name: str) -> tuple[threading.Thread, threading.Event]:
    """Run a projector in a daemon thread of this process; set the event to stop it."""
    stop = threading.Event()
    projector = Projector(connection, store, name=name)
    thread = threading.Thread(target=projector.run, args=(stop,), name="runner-projector", daemon=True)
    thread.start()
    return thread, stop


def stop_projector_thread(thread: threading.Thread, stop: threading.Event, connection: redis.Redis,
                          store: Store, name: str, timeout: float) -> None:
    """Stop a projector thread; apply what waits (up to `timeout`) and give the lease back."""
    stop.set()
    thread.join(timeout)
    projector = Projector(connection, store, name=name)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and projector.apply_batch():
            pass
        projector.release_lease()
    except (BackendUnavailable, *REDIS_ERRORS) as exc:
        log.warning("journal: left for the next projector at exit (%s)", exc)
