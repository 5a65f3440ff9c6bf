"""New invocation rows written behind the API's answer while invocations come in a stream.

Accepting an invocation writes its SQL row, then its RQ job. Alone, it does exactly that (the
answer waits for the commit). When invocations follow each other closely, the commit on each
one's path is what limits a client that sends them one after the other: there, the row is
instead journaled in Redis, in the very script call that enqueues the job (so the two are
atomic), and a writer thread of the process commits the journaled rows in batches.

One rule makes this safe: a row leaves the journal (the hash NEW_ROWS_KEY) only once it is
committed. So whoever needs a row that may not be committed yet finds it in one of the two
places, and commits it first (an insert that does nothing when the row is there):
- a worker about to update the row of a job it ran: its claim brought the row along when it
  was still journaled (runner.worker.claims), so this costs no round trip (Store.apply_writes);
- every other update, when it finds no row (it looks into the journal, then runs again);
- a read of history (`GET /jobs`, a job Redis has forgotten, an idempotent replay);
- a worker's periodic recovery pass, for the rows of an API process that died before its commit.

A row written behind is never older news than a worker's update: it is inserted only where
no row with its id exists. While the database does not answer, invocations go the direct way
again, and so are refused with a 503 as before; the journaled rows wait for it.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Collection
from typing import Any, cast

import redis
from redis.client import Pipeline

from runner.errors import BackendUnavailable
from runner.journal.write_behind import FlushableWriter
from runner.services.backends import REDIS_ERRORS, redis_unavailable
from runner.store.sql_store import Store
from runner.store.statements import values_from_json, values_to_json
from runner.worker.claims import NEW_ROWS_KEY, take_journaled_rows

log = logging.getLogger(__name__)

# An invocation this soon after the previous one of the process is part of a stream.
STREAM_GAP_SECONDS = 0.05
# Rows are written behind only while the database answered this recently.
ANSWERED_WITHIN_SECONDS = 1.0
MAX_BATCH = 500
# How long the writer thread gathers a stream's rows before it commits them: one commit, one
# journal trim and one wake-up per batch instead of per row (a row's share of them is most of
# what writing it costs). Readers and updates never wait for it (see above).
HOLD_SECONDS = 0.02
# After the database failed, the writer thread tries its rows again this often.
RETRY_SECONDS = 1.0
# At the exit of a process, how long its last rows may take to commit (the journal keeps the rest).
EXIT_FLUSH_SECONDS = 2.0


def encode_row(values: dict[str, Any]) -> str:
    """A row's column values as journaled."""
    return json.dumps(values_to_json(values))


def decode_row(raw: bytes | str) -> dict[str, Any]:
    """A journaled row's column values."""
    return values_from_json(json.loads(raw))


class JournaledRows:
    """The journal in Redis, as the store consults it (runner.store.sql_store.PendingRows)."""

    def __init__(self, connection: redis.Redis) -> None:
        self.connection = connection

    def rows_for(self, job_ids: Collection[str]) -> list[dict[str, Any]]:
        ids = list(job_ids)
        try:
            found = self.connection.hmget(NEW_ROWS_KEY, ids)
        except REDIS_ERRORS as exc:
            raise redis_unavailable() from exc
        return [decode_row(raw) for raw in found if raw is not None]

    def claimed_rows(self, job_ids: Collection[str]) -> list[dict[str, Any]]:
        return [decode_row(raw) for raw in take_journaled_rows(job_ids)]

    def settle(self, store: Store) -> None:
        settle_journaled_rows(store, self.connection)


def settle_journaled_rows(store: Store, connection: redis.Redis, limit: int = 10 * MAX_BATCH) -> int:
    """Commit journaled rows (up to `limit`), then drop them from the journal; how many there were."""
    settled = 0
    try:
        while settled < limit:
            # From the start each time: what the last pass committed is gone from the hash.
            _cursor, found = connection.hscan(NEW_ROWS_KEY, count=MAX_BATCH)
            batch = cast(dict[bytes, bytes], found)
            if not batch:
                break
            store.insert_unless_present([decode_row(raw) for raw in batch.values()])
            connection.hdel(NEW_ROWS_KEY, *batch)
            settled += len(batch)
    except REDIS_ERRORS as exc:
        raise redis_unavailable() from exc
    return settled


class NewRows(FlushableWriter):
    """This process's rows written behind: journaled with their jobs, committed by one writer thread.

    `flush(timeout)` waits until every row handed over is committed (False on timeout: the journal
    keeps them); it also ends the writer's gathering at once."""

    def __init__(self, store: Store, connection: redis.Redis) -> None:
        self.store = store
        self.connection = connection
        self._start_afresh()
        self._last_accepted = float("-inf")
        self._answered_at = float("-inf")  # when the database last took a row from this process
        # A forked child has none of its parent's threads: a lock one of them held stays held.
        os.register_at_fork(after_in_child=functools.partial(_start_afresh_in_child, weakref.ref(self)))

    def _start_afresh(self) -> None:
        # The rows a parent handed over are its own to commit (or the journal's).
        self._lock = threading.Condition()
        self._pending: deque[dict[str, Any]] = deque()
        self._in_flight = 0
        self._idle = False  # the writer thread waits for a first row (only then does `hand` wake it)
        self._flushing = 0
        self._thread: threading.Thread | None = None

    def writes_behind(self) -> bool:
        """Whether the invocation being accepted now may have its row written behind."""
        now = time.monotonic()
        with self._lock:
            in_stream = now - self._last_accepted < STREAM_GAP_SECONDS
            self._last_accepted = now
            return in_stream and now - self._answered_at < ANSWERED_WITHIN_SECONDS

    def database_answered(self) -> None:
        """The database just took a row (written directly): it answers."""
        with self._lock:
            self._answered_at = time.monotonic()

    def journal_into(self, pipeline: Pipeline, values: dict[str, Any]) -> None:
        """Journal the row `values` in `pipeline`, with its job; `hand` it over once that ran."""
        pipeline.hset(NEW_ROWS_KEY, values["id"], encode_row(values))

    def hand(self, values: dict[str, Any]) -> None:
        """Give a journaled row to the writer thread."""
        with self._lock:
            self._pending.append(values)
            self._ensure_thread()
            if self._idle or len(self._pending) >= MAX_BATCH:
                self._lock.notify_all()

    def _ensure_thread(self) -> None:
        # Started on first use, in the process that uses it.
        if self._thread is None or not self._thread.is_alive():
            if self._thread is None:
                atexit.register(self.flush, EXIT_FLUSH_SECONDS)
            self._thread = threading.Thread(target=self._run, name="runner-new-rows", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._pending:
                    self._idle = True
                    self._lock.wait()
                self._idle = False
                until = time.monotonic() + HOLD_SECONDS
                while (left := until - time.monotonic()) > 0 and len(self._pending) < MAX_BATCH and not self._flushing:
                    self._lock.wait(left)
                batch = [self._pending.popleft() for _ in range(min(MAX_BATCH, len(self._pending)))]
                self._in_flight = len(batch)
            committed = self._commit(batch)
            with self._lock:
                if not committed:
                    self._pending.extendleft(reversed(batch))
                self._in_flight = 0
                self._lock.notify_all()
                if not committed:
                    self._lock.wait(RETRY_SECONDS)

    def _commit(self, batch: list[dict[str, Any]]) -> bool:
        try:
            self.store.insert_unless_present(batch)
        except BackendUnavailable:
            with self._lock:
                self._answered_at = float("-inf")  # invocations go the direct way (and get a 503) again
            log.warning("new rows: database unavailable; %d rows wait in Redis", len(batch))
            return False
        except Exception:  # a bug here must not lose rows: they stay journaled, for a recovery pass
            log.exception("new rows: %d rows could not be written; left in the journal", len(batch))
            return True
        self.database_answered()
        try:
            self.connection.hdel(NEW_ROWS_KEY, *[values["id"] for values in batch])
        except REDIS_ERRORS as exc:  # committed: a recovery pass drops them from the journal later
            log.warning("new rows: journal not trimmed, Redis is unavailable (%s)", exc)
        return True


def _start_afresh_in_child(alive: weakref.ref[NewRows]) -> None:
    rows = alive()
    if rows is not None:
        rows._start_afresh()
