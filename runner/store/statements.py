"""The statements of the store's hot path (a new row, runs of conditional row updates), and a
row's values as they travel through Redis."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from runner.store.models import InvocationRecord

INVOCATIONS: sa.Table = InvocationRecord.__table__  # type: ignore[assignment]
# Row values wait in Redis as JSON (runner.journal.reconcile's deferred writes, runner.journal.new_rows' journal).
# Times go as ISO 8601 text and are read back by column name, so that no JSON value (an input, a
# result) is ever taken for a time, whatever it looks like.
TIME_COLUMNS = frozenset(column.key for column in INVOCATIONS.columns if isinstance(column.type, sa.DateTime))


def values_to_json(values: dict[str, Any]) -> dict[str, Any]:
    """Column values, JSON-ready."""
    return {key: value.isoformat() if key in TIME_COLUMNS and value is not None else value
            for key, value in values.items()}


def values_from_json(values: dict[str, Any]) -> dict[str, Any]:
    """Column values from `values_to_json` (or from the {"$datetime": ...} form journals had before)."""
    for key in TIME_COLUMNS.intersection(values):
        text = values[key]
        if isinstance(text, dict):
            text = text.get("$datetime")
        values[key] = None if text is None else datetime.fromisoformat(text)
    return values


def runs_of_same_columns(
    writes: Sequence[tuple[str, dict[str, Any]]],
) -> Iterator[tuple[tuple[str, ...], list[dict[str, Any]]]]:
    """Group consecutive writes by the columns they set, keeping their order."""
    columns: tuple[str, ...] | None = None
    rows: list[dict[str, Any]] = []
    for job_id, values in writes:
        keys = tuple(sorted(values))
        if keys != columns and rows:
            yield columns or (), rows
            rows = []
        columns = keys
        rows.append({**values, "_job_id": job_id, "_as_of": values["updated_at"]})
    if rows:
        yield columns or (), rows


@lru_cache(maxsize=64)
def insert_of(columns: tuple[str, ...]) -> sa.Insert:
    """An insert of a row that sets `columns` (one statement per column set)."""
    return INVOCATIONS.insert().values({name: sa.bindparam(name) for name in columns})


@lru_cache(maxsize=64)
def insert_unless_present(columns: tuple[str, ...], dialect_name: str) -> sa.Insert:
    """An insert of a row that sets `columns`, which does nothing when a row with its id exists
    (a row written behind may arrive twice, or after a worker ensured it)."""
    dialect_insert = postgresql.insert if dialect_name == "postgresql" else sqlite.insert
    return (dialect_insert(INVOCATIONS)
            .values({name: sa.bindparam(name) for name in columns})
            .on_conflict_do_nothing(index_elements=["id"]))


@lru_cache(maxsize=64)
def conditional_update(columns: tuple[str, ...]) -> sa.Update:
    """An update of `columns` of row `_job_id`, unless the row was updated after `_as_of`."""
    table = INVOCATIONS
    return (
        sa.update(table)
        .where(table.c.id == sa.bindparam("_job_id"), table.c.updated_at <= sa.bindparam("_as_of"))
        .values({name: sa.bindparam(name) for name in columns})
    )
