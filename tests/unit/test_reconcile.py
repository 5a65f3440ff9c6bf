"""Deferred store writes: kept in Redis while the database is away, replayed in order, never over newer data."""

from __future__ import annotations

import json
from datetime import timedelta

import fakeredis

from runner.journal.reconcile import PENDING_WRITES_KEY, has_pending_writes, replay_pending_writes, write_or_defer
from runner.store.database import as_utc
from runner.store.models import InvocationRecord, utcnow
from runner.store.sql_store import Store


def _row(store: Store, job_id: str) -> None:
    now = utcnow() - timedelta(seconds=10)
    store.add(InvocationRecord(id=job_id, function="f", queue="q", status="started", input={},
                               progress_percent=0, progress_message="", attempts=1, created_at=now, updated_at=now))


def test_write_goes_straight_to_a_reachable_store(store: Store, connection: fakeredis.FakeRedis) -> None:
    _row(store, "a")
    write_or_defer(store, connection, "a", status="finished", result={"x": 1})
    record = store.get("a")
    assert record is not None and record.status == "finished" and record.result == {"x": 1}
    assert not has_pending_writes(connection)


def test_unreachable_store_defers_then_replay_applies(
    store: Store, connection: fakeredis.FakeRedis, closed_port: int
) -> None:
    _row(store, "b")
    down = Store(f"postgresql://postgres@127.0.0.1:{closed_port}/none")
    write_or_defer(down, connection, "b", status="finished", ended_at=utcnow(), result=[1, 2])
    assert connection.llen(PENDING_WRITES_KEY) == 1
    assert replay_pending_writes(down, connection) == 0  # still away: the write stays queued
    assert connection.llen(PENDING_WRITES_KEY) == 1
    assert replay_pending_writes(store, connection) == 1
    record = store.get("b")
    assert record is not None and record.status == "finished" and record.result == [1, 2]
    assert record.ended_at is not None
    assert not has_pending_writes(connection)


def test_replay_never_overwrites_a_newer_write(
    store: Store, connection: fakeredis.FakeRedis, closed_port: int
) -> None:
    _row(store, "c")
    down = Store(f"postgresql://postgres@127.0.0.1:{closed_port}/none")
    write_or_defer(down, connection, "c", progress_percent=50, progress_message="halfway")
    store.update("c", status="finished", progress_percent=100, progress_message="done")
    replay_pending_writes(store, connection)
    record = store.get("c")
    assert record is not None and (record.status, record.progress_percent) == ("finished", 100)


def test_a_deferred_result_that_looks_like_a_time_stays_what_it_was(
    store: Store, connection: fakeredis.FakeRedis, closed_port: int
) -> None:
    # Times are read back by column name: a function's JSON result is never taken for one.
    _row(store, "d")
    down = Store(f"postgresql://postgres@127.0.0.1:{closed_port}/none")
    result = {"$datetime": "2026-11-29T07:00:00+00:00"}
    write_or_defer(down, connection, "d", status="finished", result=result)
    assert replay_pending_writes(store, connection) == 1
    record = store.get("d")
    assert record is not None and record.result == result


def test_a_write_deferred_before_an_upgrade_still_replays(store: Store, connection: fakeredis.FakeRedis) -> None:
    # Journals written before times were journaled by column name tagged them {"$datetime": ...}.
    _row(store, "e")
    ended = utcnow()
    connection.rpush(PENDING_WRITES_KEY, json.dumps({"job_id": "e", "values": {
        "status": "finished", "ended_at": {"$datetime": ended.isoformat()},
        "updated_at": {"$datetime": ended.isoformat()}}}))
    assert replay_pending_writes(store, connection) == 1
    record = store.get("e")
    assert record is not None and record.status == "finished" and as_utc(record.ended_at) == ended
