"""The write-behind journal: row updates reach SQL in batches, and none is lost on the way."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import fakeredis
import pytest
import redis

from runner.errors import BackendUnavailable
from runner.journal.reconcile import (
    PENDING_WRITES_KEY,
    install_write_behind,
    replay_pending_writes,
    stage_write,
    write_or_defer,
)
from runner.journal.write_behind import RowWrite, WriteBehind, adopt_journal, journal_key
from runner.store.models import InvocationRecord, utcnow
from runner.store.sql_store import Store
from runner.store.statements import values_to_json
from tests.unit.conftest import stored_row

WORKER = "w1"


def add_row(store: Store, job_id: str, status: str = "queued") -> None:
    now = utcnow() - timedelta(seconds=5)
    store.add(InvocationRecord(id=job_id, function="f", queue="q", status=status, input={}, created_at=now,
                               updated_at=now))


def status_of(store: Store, job_id: str) -> str:
    return stored_row(store, job_id).status


@pytest.fixture
def writer(store: Store, connection: fakeredis.FakeRedis) -> Iterator[WriteBehind]:
    committed: list[list[str]] = []
    behind = WriteBehind(store, connection, WORKER, deferred_key=PENDING_WRITES_KEY,
                         on_committed=lambda batch, _pipeline: committed.append([write.job_id for write in batch]))
    behind.committed = committed  # type: ignore[attr-defined]
    behind.start()
    install_write_behind(behind)
    yield behind
    install_write_behind(None)
    behind.stop(5)


def test_writes_reach_the_store_and_leave_the_journal(store: Store, connection: fakeredis.FakeRedis,
                                                      writer: WriteBehind) -> None:
    for index in range(20):
        add_row(store, f"j{index}")
    for index in range(20):
        write_or_defer(store, connection, f"j{index}", status="started", attempts=1)
        write_or_defer(store, connection, f"j{index}", status="finished", result={"n": index})
    assert writer.flush(5)
    for index in range(20):
        record = store.get(f"j{index}")
        assert record is not None
        assert (record.status, record.attempts, record.result) == ("finished", 1, {"n": index})
    assert connection.llen(journal_key(WORKER)) == 0
    committed = [job_id for batch in writer.committed for job_id in batch]  # type: ignore[attr-defined]
    assert sorted(set(committed)) == sorted(f"j{index}" for index in range(20))


def test_a_staged_write_is_journaled_with_the_pipeline_and_committed_after_it(
    store: Store, connection: fakeredis.FakeRedis, writer: WriteBehind
) -> None:
    add_row(store, "j1")
    with connection.pipeline() as pipeline:
        pipeline.set("marker", "1")
        after, journaled = stage_write(store, connection, pipeline, "j1", status="finished")
        assert journaled is not None and journaled.values["status"] == "finished"
        assert connection.llen(journal_key(WORKER)) == 0  # nothing sent before the pipeline runs
        pipeline.execute()
    assert connection.llen(journal_key(WORKER)) == 1
    after()
    assert writer.flush(5)
    assert status_of(store, "j1") == "finished"
    assert connection.llen(journal_key(WORKER)) == 0


def test_an_older_write_never_overwrites_a_newer_row(store: Store, connection: fakeredis.FakeRedis,
                                                     writer: WriteBehind) -> None:
    add_row(store, "j1")
    stale = utcnow()
    store.update("j1", status="started", updated_at=stale + timedelta(seconds=1))  # a later attempt began
    write_or_defer(store, connection, "j1", as_of=stale, status="failed")
    assert writer.flush(5)
    assert status_of(store, "j1") == "started"


class DownStore(Store):
    """A store whose database is away."""

    def apply_writes(self, writes: Any) -> None:
        raise BackendUnavailable("The database is unavailable.")


def test_with_the_database_away_writes_move_to_the_deferred_list_and_replay_later(
    store: Store, connection: fakeredis.FakeRedis
) -> None:
    add_row(store, "j1")
    down = DownStore(store.url)
    behind = WriteBehind(down, connection, WORKER, deferred_key=PENDING_WRITES_KEY)
    behind.start()
    try:
        assert behind.submit(_write("j1", status="finished"))
        assert behind.flush(5)
    finally:
        behind.stop(5)
    assert connection.llen(journal_key(WORKER)) == 0
    assert connection.llen(PENDING_WRITES_KEY) == 1
    assert status_of(store, "j1") == "queued"
    assert replay_pending_writes(store, connection) == 1  # the database is back
    assert status_of(store, "j1") == "finished"


def test_a_dead_workers_journal_is_adopted_in_order(store: Store, connection: fakeredis.FakeRedis) -> None:
    add_row(store, "j1")
    first, second = _write("j1", status="started"), _write("j1", status="finished")
    connection.rpush(journal_key("dead"), first.raw, second.raw)  # journaled, never committed
    assert adopt_journal(connection, "dead", PENDING_WRITES_KEY) == 2
    assert connection.llen(journal_key("dead")) == 0
    assert [json.loads(raw)["values"]["status"] for raw in connection.lrange(PENDING_WRITES_KEY, 0, -1)] == [
        "started", "finished"]
    replay_pending_writes(store, connection)
    assert status_of(store, "j1") == "finished"


def test_without_redis_the_write_is_refused_and_the_caller_writes_it(
    store: Store, connection: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_row(store, "j1")
    behind = WriteBehind(store, connection, WORKER, deferred_key=PENDING_WRITES_KEY)

    def redis_away(*_args: Any, **_kwargs: Any) -> None:
        raise redis.exceptions.ConnectionError("connection refused")

    monkeypatch.setattr(connection, "rpush", redis_away)
    install_write_behind(behind)
    try:
        write_or_defer(store, connection, "j1", status="finished")  # falls back to a direct write
    finally:
        install_write_behind(None)
    assert status_of(store, "j1") == "finished"
    assert behind.flush(0) is True  # nothing was queued for the writer


def test_flush_reports_a_writer_that_never_started(store: Store, connection: fakeredis.FakeRedis) -> None:
    behind = WriteBehind(store, connection, WORKER, deferred_key=PENDING_WRITES_KEY)
    behind.enqueue(_write("j1", status="finished"))
    assert behind.flush(0.1) is False


def _write(job_id: str, **values: Any) -> RowWrite:
    values.setdefault("updated_at", utcnow())
    return RowWrite(job_id, values, json.dumps({"job_id": job_id, "values": values_to_json(values)}))


def test_a_worker_out_of_jobs_settles_the_pending_writes_itself_with_its_wait(
    store: Store, connection: fakeredis.FakeRedis
) -> None:
    add_row(store, "j1")
    committed: list[str] = []
    # Not started: only the calling thread can commit, so the test sees settle_here do it.
    behind = WriteBehind(store, connection, WORKER, deferred_key=PENDING_WRITES_KEY,
                         on_committed=lambda batch, pipeline: committed.extend(write.job_id for write in batch))
    assert not behind.settle_here(lambda pipeline: pipeline.set("waited", "1"))  # nothing pending: nothing sent
    assert connection.get("waited") is None

    assert behind.submit(_write("j1", status="finished"))
    assert behind.settle_here(lambda pipeline: pipeline.set("waited", "1"))
    assert status_of(store, "j1") == "finished" and committed == ["j1"]
    assert connection.llen(journal_key(WORKER)) == 0
    assert connection.get("waited") == b"1"  # sent in the same pipeline as the cleanup
    assert behind.flush(0.1)  # nothing is left pending for a writer thread
    assert not behind.settle_here(lambda pipeline: pipeline.set("again", "1"))


def test_settling_with_the_database_away_defers_and_leaves_the_wait_to_the_caller(
    store: Store, connection: fakeredis.FakeRedis
) -> None:
    add_row(store, "j1")
    behind = WriteBehind(DownStore(store.url), connection, WORKER, deferred_key=PENDING_WRITES_KEY)
    assert behind.submit(_write("j1", status="finished"))
    assert not behind.settle_here(lambda pipeline: pipeline.set("waited", "1"))
    assert connection.get("waited") is None
    assert connection.llen(PENDING_WRITES_KEY) == 1 and connection.llen(journal_key(WORKER)) == 0


def test_settle_before_commits_ahead_of_the_pipeline_that_records_the_end(
    store: Store, connection: fakeredis.FakeRedis
) -> None:
    add_row(store, "j1")
    add_row(store, "j2")
    committed: list[str] = []
    # Not started: only the calling thread can commit.
    behind = WriteBehind(store, connection, WORKER, deferred_key=PENDING_WRITES_KEY,
                         on_committed=lambda batch, pipeline: committed.extend(write.job_id for write in batch))
    assert behind.submit(_write("j1", status="finished"))  # an earlier job's end, journaled and pending
    ending = _write("j2", status="finished", result={"n": 2})
    with connection.pipeline() as pipeline:
        pipeline.set("job-ended-in-redis", "1")
        behind.journal_into(pipeline, ending)
        assert behind.settle_before(pipeline, ending)
        # Both rows are committed before the pipeline runs; the cleanup and the announcement ride on it.
        assert (status_of(store, "j1"), status_of(store, "j2")) == ("finished", "finished")
        assert stored_row(store, "j2").result == {"n": 2}
        assert committed == ["j1", "j2"]
        assert connection.get("job-ended-in-redis") is None
        pipeline.execute()
    assert connection.get("job-ended-in-redis") == b"1"
    assert connection.llen(journal_key(WORKER)) == 0  # j2's entry was pushed, then removed, in that order
    assert not behind._pending  # nothing left for the writer thread (the caller does not enqueue `ending`)


def test_settle_before_with_the_database_away_leaves_every_write_to_the_writer(
    store: Store, connection: fakeredis.FakeRedis
) -> None:
    add_row(store, "j1")
    add_row(store, "j2")
    behind = WriteBehind(DownStore(store.url), connection, WORKER, deferred_key=PENDING_WRITES_KEY)
    assert behind.submit(_write("j1", status="finished"))
    ending = _write("j2", status="finished")
    with connection.pipeline() as pipeline:
        behind.journal_into(pipeline, ending)
        assert not behind.settle_before(pipeline, ending)
        assert len(pipeline.command_stack) == 1  # nothing added: the end goes out as it was
        pipeline.execute()
    behind.enqueue(ending)
    assert [write.job_id for write in behind._pending] == ["j1", "j2"]  # both wait for the writer thread
    assert connection.llen(journal_key(WORKER)) == 2
    behind.start()
    try:
        assert behind.flush(5)  # the database is still away: both move to the deferred list
    finally:
        behind.stop(5)
    assert connection.llen(PENDING_WRITES_KEY) == 2 and connection.llen(journal_key(WORKER)) == 0


class CountingCondition(threading.Condition):
    """A Condition that counts its notify_all calls (each one wakes the writer thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.wakeups = 0

    def notify_all(self) -> None:
        self.wakeups += 1
        super().notify_all()


def test_a_settled_job_end_with_nothing_pending_does_not_wake_the_writer(
    store: Store, connection: fakeredis.FakeRedis
) -> None:
    # A worker whose queue runs dry settles every job's end itself: waking the idle writer thread
    # each time would be a thread switch per job for nothing.
    add_row(store, "j1")
    behind = WriteBehind(store, connection, WORKER, deferred_key=PENDING_WRITES_KEY)
    behind._lock = condition = CountingCondition()
    ending = _write("j1", status="finished")
    with connection.pipeline() as pipeline:
        behind.journal_into(pipeline, ending)
        assert behind.settle_before(pipeline, ending)
        pipeline.execute()
    assert condition.wakeups == 0 and status_of(store, "j1") == "finished"


def test_a_flush_waiting_on_a_settle_in_the_worker_thread_returns_once_it_is_done(
    store: Store, connection: fakeredis.FakeRedis
) -> None:
    add_row(store, "j1")
    entered, release = threading.Event(), threading.Event()

    class SlowStore(Store):
        def apply_writes(self, writes: Any) -> None:
            entered.set()
            release.wait(5)
            super().apply_writes(writes)

    behind = WriteBehind(SlowStore(store.url), connection, WORKER, deferred_key=PENDING_WRITES_KEY)
    behind.start()
    ending = _write("j1", status="finished")
    settled: list[bool] = []

    def settle() -> None:
        with connection.pipeline() as pipeline:
            behind.journal_into(pipeline, ending)
            settled.append(behind.settle_before(pipeline, ending))
            pipeline.execute()

    worker_thread = threading.Thread(target=settle)
    worker_thread.start()
    try:
        assert entered.wait(5)
        flushed: list[bool] = []
        flusher = threading.Thread(target=lambda: flushed.append(behind.flush(30)))
        flusher.start()
        release.set()
        flusher.join(5)
        assert flushed == [True] and settled == [True]  # woken when the settle ended, not at its timeout
    finally:
        release.set()
        worker_thread.join(5)
        behind.stop(5)
    assert status_of(store, "j1") == "finished"
