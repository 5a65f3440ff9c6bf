"""The SQL store on SQLite: rows in and out, time zones, pages and their cursors."""

from __future__ import annotations

import base64
import json
import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.orm.exc import DetachedInstanceError

from runner.errors import MalformedRequest
from runner.store.cursors import decode_cursor, encode_cursor
from runner.store.database import as_utc, with_driver
from runner.store.models import LISTED_JSON_CHARS, InvocationRecord
from runner.store.sql_store import Store
from runner.store.statements import RowChange
from tests.history import insert_rows

CREATED = datetime(2024, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)


def make_record(job_id: str = "job1", *, created_at: datetime = CREATED, **values: object) -> InvocationRecord:
    fields: dict[str, object] = {
        "function": "simple_calculation",
        "queue": "demo_tasks",
        "status": "queued",
        "input": {"expression": "1+1"},
        "attempts": 0,
        **values,
    }
    return InvocationRecord(id=job_id, created_at=created_at, **fields)


def change(job_id: str = "job1", *, fence: int = 0, position: int = 1, insert: bool = False,
           **values: object) -> RowChange:
    return RowChange(job_id, dict(values), fence=fence, position=position, at=CREATED, insert=insert)


def test_a_new_row_goes_in_whole(store: Store) -> None:
    insert_rows(store, make_record(input={"expression": "2*(3+4)", "nested": [1, {"a": None}]}))
    record = store.get("job1")
    assert record is not None
    assert (record.id, record.function, record.queue, record.status, record.attempts) == (
        "job1",
        "simple_calculation",
        "demo_tasks",
        "queued",
        0,
    )
    assert record.input == {"expression": "2*(3+4)", "nested": [1, {"a": None}]}
    assert (record.result, record.error, record.started_at, record.ended_at) == (None, None, None, None)
    assert record.progress_percent == 0
    assert record.updated_at is not None


def test_get_unknown_is_none(store: Store) -> None:
    assert store.get("nope") is None


def test_an_update_sets_its_columns_and_leaves_the_others(store: Store) -> None:
    insert_rows(store, make_record())
    ended = CREATED + timedelta(seconds=5)
    store.apply([change(status="finished", result={"result": 14}, attempts=1, progress_percent=100,
                        progress_message="done", ended_at=ended, fence=1, position=2)])
    record = store.get("job1")
    assert record is not None
    assert (record.status, record.result, record.attempts, record.progress_percent, record.progress_message) == (
        "finished", {"result": 14}, 1, 100, "done")
    assert as_utc(record.ended_at) == ended
    assert (record.fence, record.journal_position) == (1, 2)
    assert record.input == {"expression": "1+1"}  # untouched columns stay


def test_an_update_of_an_unknown_id_changes_nothing(store: Store) -> None:
    insert_rows(store, make_record())
    store.apply([change("nope", status="failed")])
    assert store.get("nope") is None
    assert store.get("job1").status == "queued"  # type: ignore[union-attr]


def test_a_write_of_an_older_attempt_is_not_applied(store: Store) -> None:
    insert_rows(store, make_record())
    store.apply([change(status="started", attempts=2, fence=2, position=5)])
    store.apply([change(status="finished", result={"late": True}, fence=1, position=6)])  # attempt 1, late
    record = store.get("job1")
    assert (record.status, record.result, record.fence) == ("started", None, 2)  # type: ignore[union-attr]
    store.apply([change(status="finished", result={"on": "time"}, fence=2, position=7)])
    assert store.get("job1").result == {"on": "time"}  # type: ignore[union-attr]


def test_a_write_applied_again_or_late_changes_nothing(store: Store) -> None:
    insert_rows(store, make_record())
    store.apply([change(status="started", fence=1, position=5)])
    store.apply([change(status="finished", fence=1, position=6)])
    store.apply([change(status="started", fence=1, position=5)])  # the same entry again, after the next one
    assert store.get("job1").status == "finished"  # type: ignore[union-attr]


def test_a_new_row_applied_again_leaves_a_newer_row_alone(store: Store) -> None:
    store.apply([change(insert=True, position=1, function="f", queue="q", status="queued", input={},
                        created_at=CREATED)])
    store.apply([change(status="finished", fence=1, position=3)])
    store.apply([change(insert=True, position=1, function="f", queue="q", status="queued", input={},
                        created_at=CREATED)])
    assert store.get("job1").status == "finished"  # type: ignore[union-attr]


def test_changes_of_many_shapes_go_in_one_transaction(store: Store) -> None:
    insert_rows(store, make_record("a"), make_record("b"))
    store.apply([
        change("a", status="started", fence=1, position=2),
        change("b", progress_percent=50, progress_message="half", fence=1, position=3),
        change("c", insert=True, position=4, function="f", queue="q", status="queued", input={}, created_at=CREATED),
        change("a", status="finished", result=1, fence=1, position=5),
    ])
    rows = {row.record.id: row.record for row in store.list()[0]}
    assert (rows["a"].status, rows["b"].progress_message, rows["c"].status) == ("finished", "half", "queued")


def test_appliers_on_many_threads_at_once_all_land(store: Store) -> None:
    insert_rows(store, *[make_record(f"job{n}") for n in range(40)])

    def apply(n: int) -> None:
        store.apply([change(f"job{n}", status="finished", result=n, fence=1, position=10 + n)])

    threads = [threading.Thread(target=apply, args=(n,)) for n in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    results = {row.record.id: json.loads(row.result_head or "null") for row in store.list(limit=100)[0]}
    assert results == {f"job{n}": n for n in range(40)}


def test_timestamps_come_back_timezone_aware_after_as_utc(store: Store) -> None:
    started = CREATED + timedelta(seconds=1)  # the runner only ever writes UTC times
    insert_rows(store, make_record(started_at=started))
    record = store.get("job1")
    assert record is not None
    created = as_utc(record.created_at)
    assert created is not None and created.utcoffset() == timedelta(0)
    assert created == CREATED
    assert as_utc(record.started_at) == started


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (datetime(2024, 1, 1, 12), datetime(2024, 1, 1, 12, tzinfo=UTC)),
        (datetime(2024, 1, 1, 12, tzinfo=UTC), datetime(2024, 1, 1, 12, tzinfo=UTC)),
    ],
)
def test_as_utc(value: datetime | None, expected: datetime | None) -> None:
    result = as_utc(value)
    assert result == expected
    if result is not None:
        assert result.tzinfo is not None


def test_as_utc_keeps_an_aware_time_as_it_is() -> None:
    local = datetime(2024, 1, 1, 12, tzinfo=timezone(timedelta(hours=-5)))
    assert as_utc(local) is local


def test_list_newest_first_with_filters_and_limit(store: Store) -> None:
    for index, (function, status) in enumerate(
        [("a", "queued"), ("b", "finished"), ("a", "finished"), ("b", "failed"), ("a", "failed")]
    ):
        insert_rows(store, make_record(f"job{index}", created_at=CREATED + timedelta(seconds=index), function=function,
                              status=status))
    assert [r.record.id for r in store.list()[0]] == ["job4", "job3", "job2", "job1", "job0"]
    assert [r.record.id for r in store.list(function="a")[0]] == ["job4", "job2", "job0"]
    assert [r.record.id for r in store.list(status="finished")[0]] == ["job2", "job1"]
    assert [r.record.id for r in store.list(function="b", status="failed")[0]] == ["job3"]
    rows, cursor = store.list(limit=2)
    assert [r.record.id for r in rows] == ["job4", "job3"] and cursor is not None
    rows, cursor = store.list(limit=2, cursor=cursor)
    assert [r.record.id for r in rows] == ["job2", "job1"] and cursor is not None
    rows, cursor = store.list(limit=2, cursor=cursor)
    assert ([r.record.id for r in rows], cursor) == (["job0"], None)


def test_list_with_exactly_limit_rows_has_no_next_page(store: Store) -> None:
    for index in range(3):
        insert_rows(store, make_record(f"job{index}", created_at=CREATED + timedelta(seconds=index)))
    rows, cursor = store.list(limit=3)
    assert (len(rows), cursor) == (3, None)


def test_list_pages_through_rows_that_share_a_timestamp(store: Store) -> None:
    ids = [f"job{index}" for index in range(5)]
    for job_id in ids:
        insert_rows(store, make_record(job_id))  # all at CREATED: the id breaks the tie
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(5):
        rows, cursor = store.list(limit=2, cursor=cursor)
        seen += [r.record.id for r in rows]
        if cursor is None:
            break
    assert seen == sorted(ids, reverse=True)


@pytest.mark.parametrize(
    "created_at",
    [CREATED, CREATED.replace(tzinfo=None), datetime(2024, 3, 4, 7, 6, 7, tzinfo=timezone(timedelta(hours=2)))],
    ids=["aware-utc", "naive", "other-zone"],
)
def test_cursor_round_trip(created_at: datetime) -> None:
    record = make_record("job-42_x", created_at=created_at)
    cursor = encode_cursor(record)
    assert "=" not in cursor and "|" not in cursor
    decoded_at, decoded_id = decode_cursor(cursor)
    assert decoded_id == "job-42_x"
    assert decoded_at.utcoffset() == timedelta(0)
    assert decoded_at == as_utc(created_at)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


@pytest.mark.parametrize(
    "cursor",
    [
        pytest.param("garbage", id="garbage"),
        pytest.param("!!!!", id="not-base64"),
        pytest.param(b64(b"no separator"), id="no-separator"),
        pytest.param(b64(b"not a date|job1"), id="not-a-date"),
        pytest.param(b64(b"\xff\xfe\xfd|job1"), id="not-utf8"),
        # Dates that parse but overflow when moved to UTC (OverflowError, not ValueError).
        pytest.param(b64(b"0001-01-01T00:00:00+01:00|job1"), id="year-1-east-of-utc"),
        pytest.param(b64(b"9999-12-31T23:59:59-01:00|job1"), id="year-9999-west-of-utc"),
    ],
)
def test_decode_cursor_rejects_what_it_did_not_make(cursor: str) -> None:
    with pytest.raises(MalformedRequest) as caught:
        decode_cursor(cursor)
    assert caught.value.details == {"cursor": cursor}


def test_migrate_is_idempotent(store: Store) -> None:
    insert_rows(store, make_record())
    store.migrate()
    assert store.get("job1") is not None


@pytest.mark.parametrize(("url", "given"), [
    ("postgresql://u:p@h1:5432,h2:5433/db?target_session_attrs=read-write",
     "postgresql+psycopg2://u:p@/db?host=h1:5432&host=h2:5433&target_session_attrs=read-write"),
    ("postgres://h1,h2/db", "postgresql+psycopg2:///db?host=h1&host=h2"),
    ("postgresql://u:p@ss/w@h1,h2:6/db", "postgresql+psycopg2://u:p@ss/w@/db?host=h1&host=h2:6"),
    ("postgresql://u@db:5432/runner", "postgresql+psycopg2://u@db:5432/runner"),  # one host: as it was
    ("sqlite:////srv/a,b/runner.db", "sqlite:////srv/a,b/runner.db"),
])
def test_a_libpq_multi_host_url_reaches_sqlalchemy_in_its_spelling(url: str, given: str) -> None:
    assert with_driver(url) == given


def test_an_engine_on_a_multi_host_url_gives_libpq_every_host() -> None:
    store = Store("postgresql://u@h1:5432,h2:5433/db?target_session_attrs=read-write")
    _args, options = store.engine.dialect.create_connect_args(store.engine.url)
    assert (options["host"], options["port"], options["target_session_attrs"]) == ("h1,h2", "5432,5433", "read-write")


def test_a_page_carries_the_head_of_input_and_result_and_never_the_whole(store: Store) -> None:
    big = {"text": "x" * (3 * LISTED_JSON_CHARS)}
    insert_rows(store, make_record("small", input={"n": 1}, result=[1, 2]),
                make_record("big", input=big, result=[big], status="finished"),
                make_record("none", result=None))
    rows = {row.record.id: row for row in store.list()[0]}
    assert (rows["small"].input_head, rows["small"].result_head) == ('{"n": 1}', "[1, 2]")
    assert rows["big"].input_head == json.dumps(big)[: LISTED_JSON_CHARS + 1]
    assert rows["big"].result_head == json.dumps([big])[: LISTED_JSON_CHARS + 1]
    assert json.loads(rows["none"].result_head or "null") is None
    with pytest.raises(DetachedInstanceError):  # a page never reads a whole value by accident
        _ = rows["big"].record.input
