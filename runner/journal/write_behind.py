"""Row updates a worker makes, journaled in Redis at once and committed to SQL in batches.

A worker's jobs end far more often than a database likes to commit. Each update is pushed to
the worker's journal in Redis (so it survives the worker) and handed to one writer thread,
which commits whatever has gathered in one transaction: a lone job's row is written within
a millisecond or two, a busy worker's rows a few hundred at a time (group commit). After the
commit the writer removes them from the journal. A write can be journaled in the very
pipeline that records the change in Redis (`journal_into`), so the two are atomic. When the
database is away, the batch moves to the shared list of deferred writes (runner.journal.reconcile)
and is replayed once it is back. When the worker dies, its peers move its journal there too
(`adopt_journal`). Writes are conditional on the
row's `updated_at`, so applying one twice, or late, never rolls a row back.

A worker with no job claimed ahead commits instead of journaling (`settle_before`): the last
job's row, and whatever is pending, before the call that records the job's end in Redis and
claims the next, so that one call also wakes whoever waits for the job. A worker dying
between the two leaves a row that says finished for a job Redis has as started: like any job
of a dead worker it is recovered and retried, and its row follows the retry.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.client import Pipeline

from runner.errors import BackendUnavailable
from runner.services.backends import REDIS_ERRORS
from runner.store.sql_store import Store

log = logging.getLogger(__name__)

JOURNAL_KEY_PREFIX = "runner:store:journal:"
MAX_BATCH = 500
# Longest a write that ends no job waits for company (see WriteBehind.is_urgent).
HOLD_SECONDS = 0.05
# Longest a write that ends a job waits for the writer thread: the worker commits it itself
# sooner when it runs out of jobs (`settle_here`); a busy worker's ends gather meanwhile.
URGENT_HOLD_SECONDS = 0.003
# After the database failed, batches go straight to the deferred list for this long.
DATABASE_BACKOFF_SECONDS = 1.0


def journal_key(worker_name: str) -> str:
    """The Redis list of a worker's row updates not yet committed to SQL."""
    return f"{JOURNAL_KEY_PREFIX}{worker_name}"


@dataclass(frozen=True)
class RowWrite:
    """One update of one row, as journaled (`raw`) and as applied (`values`)."""

    job_id: str
    values: dict[str, Any]
    raw: str


# Told of each committed batch, with the pipeline that removes it from the journal (to add to it).
Committed = Callable[[Sequence[RowWrite], Pipeline], None]


class FlushableWriter:
    """What a writer thread shares with those who wait for it: the items pending and in flight, under one lock."""

    _lock: threading.Condition
    _pending: deque[Any]
    _in_flight: int
    _flushing: int  # callers of `flush` waiting: the thread writes at once
    _thread: threading.Thread | None

    def flush(self, timeout: float) -> bool:
        """Wait until every item submitted is written (or deferred); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._flushing += 1
            self._lock.notify_all()
            try:
                while self._pending or self._in_flight:
                    left = deadline - time.monotonic()
                    if left <= 0 or self._thread is None or not self._thread.is_alive():
                        return False
                    self._lock.wait(left)
            finally:
                self._flushing -= 1
        return True


class WriteBehind(FlushableWriter):
    """Journals row updates in Redis and commits them to SQL from one background thread."""

    def __init__(self, store: Store, connection: redis.Redis, worker_name: str, *,
                 deferred_key: str, on_committed: Committed | None = None,
                 is_urgent: Callable[[RowWrite], bool] | None = None) -> None:
        self.store = store
        self.connection = connection
        self.journal = journal_key(worker_name)
        self.deferred_key = deferred_key
        self.on_committed = on_committed
        # Urgent writes (a job's end, which someone may wait for) go within URGENT_HOLD_SECONDS, or
        # at once when the worker runs out of jobs (settle_here). Others (a start, a progress step)
        # may wait up to HOLD_SECONDS, so that a short job's start and end become one UPDATE in
        # one commit instead of two commits.
        self.is_urgent = is_urgent or (lambda _write: True)
        self._pending: deque[RowWrite] = deque()
        self._lock = threading.Condition()
        self._hold_until: float | None = None
        self._flushing = 0
        self._in_flight = 0
        self._stopping = False
        self._database_down_until = 0.0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the writer thread (in the process that will submit writes)."""
        self._thread = threading.Thread(target=self._run, name="runner-write-behind", daemon=True)
        self._thread.start()

    def submit(self, write: RowWrite) -> bool:
        """Journal `write` and queue it for the writer; False when Redis refused it (the caller writes it)."""
        try:
            self.connection.rpush(self.journal, write.raw)
        except REDIS_ERRORS:
            return False
        self.enqueue(write)
        return True

    def journal_into(self, pipeline: Pipeline, write: RowWrite) -> None:
        """Journal `write` in `pipeline`, with the change it records; `enqueue` it once that executed."""
        pipeline.rpush(self.journal, write.raw)

    def enqueue(self, write: RowWrite) -> None:
        """Hand a journaled write to the writer thread."""
        with self._lock:
            self._pending.append(write)
            hold = URGENT_HOLD_SECONDS if self.is_urgent(write) else HOLD_SECONDS
            if self._hold_until is None or time.monotonic() + hold < self._hold_until:
                self._hold_until = time.monotonic() + hold
                self._lock.notify_all()

    def settle_here(self, then: Callable[[Pipeline], None]) -> list[Any] | None:
        """Commit the pending writes in the calling thread (a worker about to wait for work), and
        send their journal cleanup in one round trip with the commands `then` queues (its wait).

        The replies of that round trip (`then`'s last; errors as values), or None, with nothing
        sent, when there was nothing to settle or the writer thread is at it.
        """
        batch = self._take_here(needs_pending=True)
        if batch is None:
            return None
        settled, sent = False, None
        try:
            settled, sent = self._write(batch, then)
        except Exception:  # a bug here must not stop the worker: the writer thread takes the batch again
            log.exception("write-behind: %d row updates could not be written here; the writer retries", len(batch))
        finally:
            self._end_here(batch, settled)
        return sent

    def settle_before(self, pipeline: Pipeline, write: RowWrite) -> bool:
        """Commit the pending writes and `write` now, `write` being journaled in `pipeline`, which has
        not executed yet; queue their journal cleanup (and `on_committed`'s commands) at its end.

        For a worker about to send a job's end and look for the next job: its row is committed
        before Redis hears of the end, and whoever waits for the job is woken by that same call,
        not by a round trip after the commit. True: `write` is committed, not for `enqueue`.
        False, with nothing done, when the writer thread is at a batch or the database is away:
        `write` then goes the usual way.
        """
        batch = self._take_here(needs_pending=False)
        if batch is None:
            return False
        settled = False
        try:
            self.store.apply_writes(_one_write_per_job([*batch, write]))
            settled = True
        except BackendUnavailable:
            self._database_down_until = time.monotonic() + DATABASE_BACKOFF_SECONDS
            log.warning("write-behind: database unavailable; row updates wait for the writer thread")
        except Exception:  # a bug here must not stop the worker: the writer thread takes the batch again
            log.exception("write-behind: %d row updates could not be written here; the writer retries", len(batch))
        finally:
            self._end_here(batch, settled)
        if settled:
            # After the pipeline's own commands, so the RPUSH of `write` comes before its removal.
            self._queue_cleanup(pipeline, [*batch, write])
        return settled

    def _take_here(self, *, needs_pending: bool) -> list[RowWrite] | None:
        """The pending writes, for the calling thread to commit (the writer thread waits meanwhile);
        None when the writer thread is at a batch, the database is away, or nothing is pending
        and `needs_pending`."""
        with self._lock:
            if self._in_flight or time.monotonic() < self._database_down_until or (needs_pending and not self._pending):
                return None
            batch = self._take_batch()
            self._in_flight += 1  # the caller's own writes, if any, are in flight too
            return batch

    def _end_here(self, batch: list[RowWrite], settled: bool) -> None:
        """The calling thread is done with `batch`: unsettled, it goes back to the writer thread."""
        with self._lock:
            if not settled:  # the writer thread keeps trying (and defers while the database is away)
                self._pending.extendleft(reversed(batch))
                self._hold_until = time.monotonic()
            self._in_flight = 0
            # Wake only who has something to do: the writer thread when writes are pending or it
            # is stopping, `flush` callers. Not an idle writer: on a worker whose queue runs dry
            # that would be a thread switch per job.
            if self._pending or self._flushing or self._stopping:
                self._lock.notify_all()

    def stop(self, timeout: float) -> bool:
        """Commit what is pending (up to `timeout` seconds), then end the thread."""
        flushed = self.flush(timeout)
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=1)
        return flushed

    def _due(self) -> float | None:
        """Seconds until the pending writes must go (0: now), or None when there are none."""
        if not self._pending:
            return None
        if self._flushing or self._stopping or self._hold_until is None:
            return 0.0
        return max(0.0, self._hold_until - time.monotonic())

    def _run(self) -> None:
        while True:
            with self._lock:
                # While settle_here commits a batch in another thread, wait: batches commit in order.
                while (due := None if self._in_flight else self._due()) != 0.0:
                    if due is None and self._stopping and not self._in_flight:
                        return
                    self._lock.wait(due)
                batch = self._take_batch()
            try:
                settled, _ = self._write(batch)
            except Exception:  # a bug here must not stop history for good: keep the writes for replay
                log.exception("write-behind: %d row updates could not be written; deferred", len(batch))
                settled = self._defer(batch)
            with self._lock:
                if not settled:  # Redis and the database are both away: keep them, in order, and wait
                    self._pending.extendleft(reversed(batch))
                self._in_flight = 0
                self._lock.notify_all()
                if not settled:
                    self._lock.wait(DATABASE_BACKOFF_SECONDS)

    def _take_batch(self) -> list[RowWrite]:
        """The next batch, now in flight (with the lock held)."""
        batch = [self._pending.popleft() for _ in range(min(MAX_BATCH, len(self._pending)))]
        self._hold_until = time.monotonic() if self._pending else None  # more than a batch waits: at once
        self._in_flight = len(batch)
        return batch

    def _write(self, batch: list[RowWrite],
               then: Callable[[Pipeline], None] | None = None) -> tuple[bool, list[Any] | None]:
        """Commit `batch`, or defer it: whether it is settled, and the replies of the cleanup's round
        trip when `then`'s commands went with it (None when they did not)."""
        if time.monotonic() < self._database_down_until:
            return self._defer(batch), None
        try:
            self.store.apply_writes(_one_write_per_job(batch))
        except BackendUnavailable:
            self._database_down_until = time.monotonic() + DATABASE_BACKOFF_SECONDS
            log.warning("write-behind: database unavailable; %d row updates wait in Redis for replay", len(batch))
            return self._defer(batch), None
        try:
            with self.connection.pipeline(transaction=False) as pipeline:
                self._queue_cleanup(pipeline, batch)
                if then is not None:
                    then(pipeline)
                replies = pipeline.execute(raise_on_error=then is None)
        except REDIS_ERRORS as exc:  # the journal keeps them: applied again later, harmlessly
            log.warning("write-behind: journal not trimmed, Redis is unavailable (%s)", exc)
            return True, None
        return True, replies if then is not None else None

    def _defer(self, batch: list[RowWrite]) -> bool:
        # One transaction: each write is in the journal or in the deferred list, never neither.
        try:
            with self.connection.pipeline() as pipeline:
                pipeline.rpush(self.deferred_key, *[write.raw for write in batch])
                self._unjournal(pipeline, batch)
                pipeline.execute()
            return True
        except REDIS_ERRORS as exc:
            log.error("write-behind: %d row updates wait, Redis and the database are unavailable (%s)",
                      len(batch), exc)
            return False


    def _queue_cleanup(self, pipeline: Pipeline, committed: list[RowWrite]) -> None:
        """Queue what follows a commit: the journal entries go, and `on_committed` adds its own."""
        self._unjournal(pipeline, committed)
        if self.on_committed is not None:
            self.on_committed(committed, pipeline)

    def _unjournal(self, pipeline: Pipeline, batch: list[RowWrite]) -> None:
        # By value, not by position: writes are journaled from several threads and pipelines.
        for write in batch:
            pipeline.lrem(self.journal, 1, write.raw)


def _one_write_per_job(batch: Sequence[RowWrite]) -> list[tuple[str, dict[str, Any]]]:
    """Fold each job's writes into one, later values winning (a short job's start and end: one UPDATE)."""
    merged: dict[str, dict[str, Any]] = {}
    for write in batch:
        merged.setdefault(write.job_id, {}).update(write.values)
    return list(merged.items())


def adopt_journal(connection: redis.Redis, worker_name: str, deferred_key: str) -> int:
    """Move a dead worker's uncommitted row updates to the deferred list, in order; return how many."""
    moved = 0
    while connection.lmove(journal_key(worker_name), deferred_key, "LEFT", "RIGHT") is not None:
        moved += 1
    if moved:
        log.warning("moved %d uncommitted row updates of worker %s to the deferred writes", moved, worker_name)
    return moved
