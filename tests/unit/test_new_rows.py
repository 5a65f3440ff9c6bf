"""New rows written behind: a stream of invocations journals its rows in Redis, and no reader or
update ever misses one of them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
import pytest
import redis
from flask.testing import FlaskClient

from runner.authoring.registry import Registry
from runner.config import Settings
from runner.errors import BackendUnavailable
from runner.journal import new_rows
from runner.journal.new_rows import NEW_ROWS_KEY, NewRows, decode_row, encode_row, settle_journaled_rows
from runner.rq_seam.queues import queue_for
from runner.services.backends import Backends, connect_redis
from runner.services.invocation import InvocationOptions, accept_invocation
from runner.store.models import InvocationRecord, NewInvocation, utcnow
from runner.store.sql_store import Store
from runner.worker.claims import claim_and_read, take_journaled_rows
from tests.unit.conftest import stored_row

CALCULATION = {"expression": "6*7"}


def journal_row(connection: fakeredis.FakeRedis, job_id: str, *, status: str = "queued",
                created_at: datetime | None = None) -> dict[str, Any]:
    """A row as an API process journals it, not committed (as if its process died before the commit)."""
    values = NewInvocation(id=job_id, function="simple_calculation", queue="demo_tasks", status=status,
                           input=CALCULATION, created_at=created_at or utcnow()).column_values()
    connection.hset(NEW_ROWS_KEY, job_id, encode_row(values))
    return values


def in_sql(store: Store, job_id: str) -> bool:
    """Whether the row is committed (a plain read, which commits no journaled row first)."""
    with store.session() as session:
        return session.get(InvocationRecord, job_id) is not None


@pytest.fixture
def stream(backends: Backends, registry: Registry) -> Iterator[Callable[[int], list[str]]]:
    """Accept `count` invocations one right after the other; their ids."""

    def accept(count: int) -> list[str]:
        spec = registry.get("simple_calculation")
        return [accept_invocation(spec, CALCULATION, backends).record.id for _ in range(count)]

    yield accept
    assert backends.new_rows.flush(5)


# Which invocations are written behind


def test_an_invocation_alone_commits_its_row_before_it_is_accepted(backends: Backends,
                                                                   stream: Callable[[int], list[str]]) -> None:
    [job_id] = stream(1)
    assert in_sql(backends.store, job_id)
    assert backends.connection.hlen(NEW_ROWS_KEY) == 0


def test_invocations_in_a_stream_are_written_behind_and_all_land(backends: Backends, store: Store,
                                                                 stream: Callable[[int], list[str]]) -> None:
    handed: list[str] = []
    real_hand = backends.new_rows.hand
    backends.new_rows.hand = lambda values: (handed.append(values["id"]), real_hand(values))  # type: ignore[method-assign]
    ids = stream(30)
    assert handed == ids[1:]  # the first went the direct way: nothing showed the database answers yet
    assert backends.new_rows.flush(5)
    assert all(stored_row(store, job_id).status == "queued" for job_id in ids)
    assert backends.connection.hlen(NEW_ROWS_KEY) == 0  # committed rows leave the journal
    assert queue_for("demo_tasks", backends.connection).count == 30


def test_a_streams_rows_are_committed_in_batches_not_one_by_one(backends: Backends,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    batches: list[int] = []
    real_insert = Store.insert_unless_present

    def counted(self: Store, rows: list[dict[str, Any]]) -> None:
        batches.append(len(rows))
        real_insert(self, rows)

    monkeypatch.setattr(Store, "insert_unless_present", counted)
    rows = NewRows(backends.store, backends.connection)
    started = time.monotonic()
    for index in range(10):  # one every millisecond, as a stream arrives: each alone would be its own commit
        rows.hand(NewInvocation(id=f"j{index}", function="f", queue="q", status="queued", input={},
                                created_at=utcnow()).column_values())
        time.sleep(0.001)
    handed_within = time.monotonic() - started
    assert rows.flush(5)
    assert sum(batches) == 10
    if handed_within < new_rows.HOLD_SECONDS:  # a slow machine may cross a hold's end: two batches then
        assert len(batches) == 1, batches
    assert len(batches) <= 2, batches


def test_a_gap_between_invocations_ends_the_stream(backends: Backends, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(new_rows.time, "monotonic", lambda: clock[0])
    rows = NewRows(backends.store, backends.connection)
    rows.database_answered()
    assert not rows.writes_behind()  # the first of a stream
    clock[0] += new_rows.STREAM_GAP_SECONDS / 2
    assert rows.writes_behind()
    clock[0] += new_rows.STREAM_GAP_SECONDS * 2
    assert not rows.writes_behind()


def test_no_row_is_written_behind_unless_the_database_answered_lately(backends: Backends,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(new_rows.time, "monotonic", lambda: clock[0])
    rows = NewRows(backends.store, backends.connection)
    rows.writes_behind()
    assert not rows.writes_behind()  # in a stream, but the database never answered this process
    rows.database_answered()
    clock[0] += new_rows.ANSWERED_WITHIN_SECONDS + 0.01
    assert not rows.writes_behind()


def test_a_scheduled_invocation_is_never_written_behind(backends: Backends, registry: Registry) -> None:
    spec = registry.get("simple_calculation")
    later = InvocationOptions(run_at=datetime.now(UTC) + timedelta(minutes=5))
    ids = [accept_invocation(spec, CALCULATION, backends, later).record.id for _ in range(5)]
    assert backends.connection.hlen(NEW_ROWS_KEY) == 0
    assert all(stored_row(backends.store, job_id).status == "scheduled" for job_id in ids)


# Nobody misses a journaled row


def test_a_workers_update_finds_a_row_still_journaled(connection: fakeredis.FakeRedis, store: Store,
                                                      backends: Backends) -> None:
    journal_row(connection, "j1")
    store.apply_writes([("j1", {"status": "finished", "attempts": 1, "updated_at": utcnow()})])
    row = stored_row(store, "j1")
    assert (row.status, row.attempts, row.input) == ("finished", 1, CALCULATION)


@pytest.mark.parametrize("conditional", [False, True])
def test_a_direct_update_finds_a_row_still_journaled(connection: fakeredis.FakeRedis, store: Store,
                                                     backends: Backends, conditional: bool) -> None:
    journal_row(connection, "j1")
    if conditional:
        store.update_unless_newer("j1", status="canceled", updated_at=utcnow())
    else:
        store.update("j1", status="canceled")
    assert stored_row(store, "j1").status == "canceled"


def test_a_claim_brings_the_journaled_row_of_its_job_and_the_worker_commits_it_without_asking(
    connection: fakeredis.FakeRedis, store: Store, backends: Backends, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = queue_for("demo_tasks", connection)
    job = queue.enqueue("runner.worker.execution.run_invocation", "simple_calculation", CALCULATION)
    journal_row(connection, job.id)
    _queue, [(claimed_id, fields)] = claim_and_read(connection, [queue], "w1")
    assert claimed_id == job.id
    assert not any(field.startswith(b"runner:") for field in fields)  # only RQ's fields reach the job

    looked: list[Any] = []
    monkeypatch.setattr(store.pending_rows, "rows_for", lambda job_ids: looked.append(job_ids) or [])
    store.apply_writes([(job.id, {"status": "finished", "attempts": 1, "updated_at": utcnow()})])
    assert looked == []  # no round trip to the journal: the claim brought the row
    monkeypatch.undo()
    row = stored_row(store, job.id)
    assert (row.status, row.input) == ("finished", CALCULATION)
    assert take_journaled_rows([job.id]) == []  # taken once


def test_rows_written_behind_are_inserted_in_one_order(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    # Several commit the same journaled rows at once: in different orders, PostgreSQL deadlocks them.
    inserted: list[str] = []
    real_execute = Store._execute

    def spied(self: Store, connection: Any, statement: Any, rows: list[dict[str, Any]]) -> int:
        inserted.extend(values["id"] for values in rows)
        return real_execute(self, connection, statement, rows)

    monkeypatch.setattr(Store, "_execute", spied)
    rows = [NewInvocation(id=job_id, function="f", queue="q", status="queued", input={},
                          created_at=utcnow()).column_values() for job_id in ("j3", "j1", "j2")]
    store.insert_unless_present(rows)
    assert inserted == ["j1", "j2", "j3"]


def test_a_journaled_row_arriving_late_never_rolls_a_row_back(connection: fakeredis.FakeRedis, store: Store,
                                                               backends: Backends) -> None:
    values = journal_row(connection, "j1")
    store.apply_writes([("j1", {"status": "finished", "updated_at": utcnow()})])
    store.insert_unless_present([values])  # the API process's writer, after the worker
    assert stored_row(store, "j1").status == "finished"


def test_reading_a_committed_row_does_not_look_into_the_journal(store: Store, backends: Backends,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    store.insert(NewInvocation(id="j1", function="f", queue="q", status="queued", input={},
                               created_at=utcnow()).column_values())
    looked: list[Any] = []
    monkeypatch.setattr(store.pending_rows, "rows_for", lambda job_ids: looked.append(job_ids) or [])
    assert stored_row(store, "j1").status == "queued"
    assert store.get("missing") is None
    assert looked == [["missing"]]  # a round trip to Redis only for the row SQL does not have


def test_reading_one_job_commits_its_journaled_row(connection: fakeredis.FakeRedis, store: Store,
                                                   backends: Backends) -> None:
    journal_row(connection, "j1")
    record = store.get("j1")
    assert record is not None and record.input == CALCULATION
    assert in_sql(store, "j1")


def test_listing_jobs_shows_journaled_rows(client: FlaskClient, connection: fakeredis.FakeRedis) -> None:
    for index in range(3):
        journal_row(connection, f"j{index}")
    listed = [job["id"] for job in client.get("/jobs").get_json()["jobs"]]
    assert sorted(listed) == ["j0", "j1", "j2"]
    assert connection.hlen(NEW_ROWS_KEY) == 0


def test_settling_takes_every_journaled_row_in_batches(connection: fakeredis.FakeRedis, store: Store,
                                                       backends: Backends) -> None:
    count = new_rows.MAX_BATCH * 2 + 7
    for index in range(count):
        journal_row(connection, f"j{index}")
    assert settle_journaled_rows(store, connection) == count
    assert connection.hlen(NEW_ROWS_KEY) == 0
    assert len(list(store.history())) == count


def test_reads_go_on_from_sql_when_redis_is_away(store: Store, closed_port: int, settings: Settings) -> None:
    Backends(connect_redis(f"redis://127.0.0.1:{closed_port}/0"), store, settings)  # wires the store to it
    store.insert({"id": "j1", "function": "f", "queue": "q", "status": "queued", "input": {},
                  "created_at": utcnow(), "updated_at": utcnow()})
    assert stored_row(store, "j1").status == "queued"
    assert store.list()[0][0].id == "j1"


@pytest.mark.parametrize("conditional", [False, True])
def test_a_direct_update_of_a_committed_row_goes_on_while_redis_is_away(store: Store, closed_port: int,
                                                                         settings: Settings,
                                                                         conditional: bool) -> None:
    Backends(connect_redis(f"redis://127.0.0.1:{closed_port}/0"), store, settings)
    store.insert(NewInvocation(id="j1", function="f", queue="q", status="queued", input={},
                               created_at=utcnow() - timedelta(seconds=1)).column_values())
    if conditional:
        store.update_unless_newer("j1", status="failed", updated_at=utcnow())
    else:
        store.update("j1", status="failed")
    assert stored_row(store, "j1").status == "failed"


def test_an_update_waits_while_redis_is_away(store: Store, closed_port: int, settings: Settings) -> None:
    # It cannot know whether the row waits in Redis: it must not update nothing and move on.
    Backends(connect_redis(f"redis://127.0.0.1:{closed_port}/0"), store, settings)
    with pytest.raises(BackendUnavailable):
        store.apply_writes([("j1", {"status": "finished", "updated_at": utcnow()})])


# Outages


def test_while_the_database_is_away_the_stream_ends_and_journaled_rows_wait(
    backends: Backends, registry: Registry, monkeypatch: pytest.MonkeyPatch, stream: Callable[[int], list[str]]
) -> None:
    ids = stream(3)
    assert backends.new_rows.flush(5)
    real_insert = Store.insert_unless_present

    def database_away(self: Store, rows: list[dict[str, Any]]) -> None:
        raise BackendUnavailable("The database is unavailable.", details={"dependency": "database"})

    monkeypatch.setattr(Store, "insert_unless_present", database_away)
    monkeypatch.setattr(Store, "insert", lambda self, values: database_away(self, [values]))
    spec = registry.get("simple_calculation")
    journaled = accept_invocation(spec, CALCULATION, backends).record.id  # still in the stream: written behind
    assert not backends.new_rows.flush(0.5)  # its commit failed, it waits
    with pytest.raises(BackendUnavailable):  # the stream is over: the direct way, which the database refuses
        accept_invocation(spec, CALCULATION, backends)
    monkeypatch.setattr(Store, "insert_unless_present", real_insert)
    assert settle_journaled_rows(backends.store, backends.connection) == 1
    assert stored_row(backends.store, journaled).status == "queued"
    assert all(stored_row(backends.store, job_id) for job_id in ids)


def test_redis_away_in_a_stream_accepts_nothing(backends: Backends, registry: Registry,
                                                stream: Callable[[int], list[str]],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    stream(2)
    assert backends.new_rows.flush(5)

    def refused(*_args: Any, **_kwargs: Any) -> None:
        raise redis.exceptions.ConnectionError("refused")

    monkeypatch.setattr(backends.job_sends, "submit", refused)
    with pytest.raises(BackendUnavailable) as raised:
        accept_invocation(registry.get("simple_calculation"), CALCULATION, backends)
    assert raised.value.details == {"dependency": "redis"}
    assert backends.connection.hlen(NEW_ROWS_KEY) == 0
    assert len(backends.store.list()[0]) == 2


# The journal's form


def test_a_row_survives_the_journal_as_it_was() -> None:
    created = datetime(2026, 11, 29, 5, 0, 1, 123456, tzinfo=UTC)
    values = {"id": "j1", "input": {"$datetime": "not a time, a user's input"}, "created_at": created,
              "updated_at": created, "attempts": 0}
    assert decode_row(encode_row(values)) == values
