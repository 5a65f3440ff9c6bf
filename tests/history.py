"""History as the API reads it, for tests: the store, with the journal's waiting entries applied before each read."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

import redis
import sqlalchemy as sa

from runner.journal.reads import read_history
from runner.store.models import InvocationRecord, ListedInvocation
from runner.store.sql_store import Store
from runner.store.statements import RowChange


class ReadingStore(Store):
    """A store whose reads first apply what waits in the journal of `connection` (when set)."""

    connection: redis.Redis | None = None

    def _caught_up(self) -> Store:
        return self if self.connection is None else read_history(self.connection, self)

    def get(self, job_id: str) -> InvocationRecord | None:
        self._caught_up()
        return super().get(job_id)

    def list(self, **filters: Any) -> tuple[list[ListedInvocation], str | None]:  # type: ignore[override]
        self._caught_up()
        return super().list(**filters)

    def history(self, *, since: datetime | None = None, until: datetime | None = None,
                function: str | None = None) -> Iterator[InvocationRecord]:
        self._caught_up()
        return super().history(since=since, until=until, function=function)


def insert_rows(store: Store, *records: InvocationRecord) -> None:
    """Write rows as the journal's projector writes new ones (test setup)."""
    changes = []
    for record in records:
        values = {column.key: getattr(record, column.key) for column in record.__table__.columns}
        values = {key: value for key, value in values.items()
                  if value is not None and key not in ("id", "fence", "journal_position", "updated_at")}
        changes.append(RowChange(record.id, values, fence=record.fence or 0, position=record.journal_position or 0,
                                 at=record.updated_at or record.created_at, insert=True))
    store.apply(changes)


def update_row(store: Store, job_id: str, **values: Any) -> None:
    """Set columns of an existing row, as a newer journal entry would (test setup)."""
    row = store.get(job_id)  # the journal applied first, when it is a ReadingStore
    assert row is not None, f"no row {job_id}"
    store.apply([RowChange(job_id, values, fence=row.fence, position=row.journal_position + 1, at=row.updated_at)])


def delete_row(store: Store, job_id: str) -> None:
    """Remove a row, as if it had never been written (test setup)."""
    store.get(job_id)  # the journal applied first, when it is a ReadingStore
    with store.session() as session:
        session.execute(sa.delete(InvocationRecord).where(InvocationRecord.id == job_id))


# The columns `copy_rows` fills; the others take their defaults.
COPIED_COLUMNS = ("id", "function", "queue", "status", "input", "result", "attempts", "progress_percent",
                  "progress_message", "created_at", "started_at", "ended_at", "updated_at")


def copy_rows(store: Store, rows: Iterable[Mapping[str, Any]], chunk: int = 50_000) -> int:
    """Write many rows at once on PostgreSQL (COPY, `chunk` rows a statement); how many were written.
    Each row maps COPIED_COLUMNS to values (input and result as JSON-ready values, times aware)."""
    written = 0
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def flush() -> None:
        buffer.seek(0)
        connection = store.engine.raw_connection()
        try:
            with connection.cursor() as cursor:
                cursor.copy_expert(f"COPY invocations ({', '.join(COPIED_COLUMNS)}) FROM STDIN "
                                   "WITH (FORMAT csv, FORCE_NOT_NULL (progress_message))", buffer)
            connection.commit()
        finally:
            connection.close()
        buffer.seek(0)
        buffer.truncate()

    for number, row in enumerate(rows, 1):
        writer.writerow([_csv_value(column, row.get(column)) for column in COPIED_COLUMNS])
        written = number
        if number % chunk == 0:
            flush()
    if buffer.tell():
        flush()
    return written


def _csv_value(column: str, value: Any) -> Any:
    if value is None:
        return "" if column not in ("input", "result") else "null"
    if column in ("input", "result"):
        return json.dumps(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value
