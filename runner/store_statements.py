"""The statements of the store's hot path: a new row, and runs of conditional row updates."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from runner.models import InvocationRecord

INVOCATIONS: sa.Table = InvocationRecord.__table__  # type: ignore[assignment]


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
