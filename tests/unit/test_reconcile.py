"""Deferred store writes: kept in Redis while the database is away, replayed in order, never over newer data."""

from __future__ import annotations

from datetime import timedelta

import fakeredis

from runner.models import InvocationRecord, utcnow
from runner.reconcile import PENDING_WRITES_KEY, has_pending_writes, replay_pending_writes, write_or_defer
from runner.store import Store


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
