"""Statements sent through the driver's cursor store exactly what SQLAlchemy's own execute stores."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from runner.store.database import as_utc
from runner.store.driver_statements import compile_for_driver
from runner.store.sql_store import INVOCATIONS, Store

NOW = datetime(2026, 11, 28, 12, 30, 15, 123456, tzinfo=UTC)


def row_values(job_id: str) -> dict[str, Any]:
    return {"id": job_id, "function": "simple_calculation", "queue": "demo_tasks", "status": "queued",
            "input": {"expression": "6*7", "note": "über ✓"}, "progress_percent": 0, "progress_message": "queued",
            "attempts": 0, "callback_url": None, "created_at": NOW, "updated_at": NOW}


def raw_rows(store: Store) -> dict[str, tuple[Any, ...]]:
    """Every row as the database holds it (no SQLAlchemy type conversion on the way out)."""
    with store.engine.connect() as connection:
        rows = connection.exec_driver_sql("SELECT * FROM invocations").all()
    return {row[0]: tuple(row[1:]) for row in rows}


def test_insert_and_update_store_what_sqlalchemy_stores(store: Store) -> None:
    store.insert(row_values("driver"))
    with store.engine.begin() as connection:
        connection.execute(INVOCATIONS.insert(), [row_values("sqlalchemy")])
    assert raw_rows(store)["driver"] == raw_rows(store)["sqlalchemy"]

    later = NOW + timedelta(seconds=1)
    finished = {"status": "finished", "result": None, "error": {"type": "X", "message": "ü"},
                "started_at": NOW, "ended_at": later, "updated_at": later}
    store.apply_writes([("driver", finished)])
    with store.engine.begin() as connection:
        update = (sa.update(INVOCATIONS).where(INVOCATIONS.c.id == "sqlalchemy").values(**finished))
        connection.execute(update)
    assert raw_rows(store)["driver"] == raw_rows(store)["sqlalchemy"]
    assert store.get("driver").result is None  # type: ignore[union-attr]
    assert as_utc(store.get("driver").ended_at) == later  # type: ignore[union-attr] (SQLite keeps no zone)


def test_a_write_older_than_the_row_is_skipped(store: Store) -> None:
    store.insert(row_values("job"))
    store.apply_writes([("job", {"status": "started", "updated_at": NOW - timedelta(seconds=1)})])
    row = store.get("job")
    assert row is not None and row.status == "queued"


def test_statements_with_python_side_defaults_are_left_to_sqlalchemy(store: Store) -> None:
    # Without progress_percent (a column with a Python default) SQLAlchemy must compute it at execution.
    partial = INVOCATIONS.insert().values({name: sa.bindparam(name) for name in ("id", "function", "queue")})
    assert compile_for_driver(partial, store.engine.dialect) is None
    values = row_values("defaults")
    del values["progress_percent"], values["attempts"]
    store.insert(values)
    row = store.get("defaults")
    assert row is not None and (row.progress_percent, row.attempts) == (0, 0)


def test_a_drivers_error_comes_wrapped_as_sqlalchemy_wraps_it(store: Store) -> None:
    # Callers tell a lost database (OperationalError) from a bad row as for any statement.
    statement = compile_for_driver(INVOCATIONS.insert().values({name: sa.bindparam(name) for name in row_values("x")}),
                                   store.engine.dialect)
    assert statement is not None
    store.insert(row_values("twice"))
    with store.engine.begin() as connection, pytest.raises(sa.exc.IntegrityError):
        statement.execute(connection, row_values("twice"))
