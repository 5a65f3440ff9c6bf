"""The SQL store of invocation history (SQLite by default, PostgreSQL in production).

It reads rows and applies batches of row changes; it knows nothing of Redis. Every write of
history reaches it through the journal's projector (runner.journal), which calls `apply`.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.orm import Session, defer, sessionmaker

from runner.errors import BackendUnavailable
from runner.store.cursors import decode_cursor, encode_cursor
from runner.store.database import UNAVAILABLE_ERRORS, create_db_engine
from runner.store.models import LISTED_JSON_CHARS, InvocationRecord, ListedInvocation
from runner.store.statements import RowChange, runs_of_same_shape

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Any ids will do, as long as every process uses the same ones.
MIGRATION_LOCK_ID = 727_411_905
# Appliers of row changes take turns on PostgreSQL (SQLite lets one writer in anyway): rows are
# then always changed in the journal's order, and two appliers never wait for each other's rows.
APPLY_LOCK_ID = 727_411_906


def database_unavailable() -> BackendUnavailable:
    """The error every caller raises when the database cannot be reached."""
    return BackendUnavailable("The database is unavailable.", details={"dependency": "database"})


class Store:
    """Reads invocation rows and applies changes to them; a lost connection becomes BackendUnavailable."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_db_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # The database file when this is SQLite on disk (its migration lock goes next to it), else None.
        database = self.engine.url.database if self.engine.dialect.name == "sqlite" else None
        self._sqlite_file = database if database and database != ":memory:" else None
        self._answered_at = float("-inf")
        self._thread_turn = threading.Lock()
        self._lock_file: TextIO | None = None
        # A forked child must not reuse the parent's pooled connections.
        os.register_at_fork(after_in_child=self._forget_pool)

    def _forget_pool(self) -> None:
        self.engine.dispose(close=False)
        self._thread_turn = threading.Lock()  # a thread of the parent may have held it at the fork
        self._lock_file = None

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed on success; a lost database becomes BackendUnavailable."""
        try:
            with self._sessions.begin() as session:
                yield session
        except UNAVAILABLE_ERRORS as exc:
            raise database_unavailable() from exc
        self._answered_at = time.monotonic()

    def answered_within(self, seconds: float) -> bool:
        """Whether the database answered this process in the last `seconds`."""
        return time.monotonic() - self._answered_at < seconds

    def migrate(self) -> None:
        """Bring the schema to the newest revision; safe to run from several processes at once."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        try:
            with self._sqlite_file_lock(), self.engine.begin() as connection:
                if connection.dialect.name == "postgresql":
                    connection.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
        except UNAVAILABLE_ERRORS as exc:
            raise database_unavailable() from exc

    @contextmanager
    def _sqlite_file_lock(self) -> Iterator[None]:
        # SQLite runs DDL outside a transaction: processes migrating one fresh file at once
        # (web and workers started together) would both create the tables. Take turns.
        if self._sqlite_file is None:
            yield
            return
        with open(f"{self._sqlite_file}.migrate-lock", "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    @contextmanager
    def _write_turn(self) -> Iterator[None]:
        # SQLite lets one writer in at a time and makes the others poll for its lock, sleeping 1, 2,
        # 5, 10... ms between tries: a read of history applying the journal while the projector
        # does would wait milliseconds for nothing. Appliers queue on a file lock instead, which
        # hands over at once (PostgreSQL's advisory lock does the same there).
        if self._sqlite_file is None:
            yield
            return
        with self._thread_turn:
            if self._lock_file is None:  # per process: a forked child opens its own (see _forget_pool)
                self._lock_file = open(f"{self._sqlite_file}.write-lock", "a")  # noqa: SIM115 (kept for the process)
            fcntl.flock(self._lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._lock_file, fcntl.LOCK_UN)

    def ping(self) -> None:
        """Raise BackendUnavailable unless the database answers."""
        with self.session() as session:
            session.execute(sa.text("SELECT 1"))

    def probe_history(self) -> None:
        """Raise unless history can be written: BackendUnavailable when the database is away, the
        driver's error when it lacks the table (not migrated; the API answers it with a 503)."""
        with self.session() as session:
            session.execute(sa.select(InvocationRecord.id).limit(0))

    def get(self, job_id: str) -> InvocationRecord | None:
        """The row of `job_id`, or None."""
        with self.session() as session:
            return session.get(InvocationRecord, job_id)

    def apply(self, changes: Sequence[RowChange]) -> None:
        """Apply row changes in one transaction, each only where the row is not newer (see RowChange)."""
        if not changes:
            return
        dialect = self.engine.dialect.name
        try:
            with self._write_turn(), self.engine.begin() as connection:
                if dialect == "postgresql":
                    connection.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": APPLY_LOCK_ID})
                for statement, rows in runs_of_same_shape(changes, dialect):
                    connection.execute(statement, rows)
        except UNAVAILABLE_ERRORS as exc:
            raise database_unavailable() from exc
        self._answered_at = time.monotonic()

    def list(
        self,
        *,
        function: str | None = None,
        status: str | None = None,
        schedule: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> tuple[list[ListedInvocation], str | None]:
        """A page of rows, newest first, and the cursor of the next page (None on the last).

        Input and result come as the head of their JSON text, cut in SQL: a page over 1 MB inputs
        moves kilobytes, not megabytes, from the database (ListedInvocation).
        """
        query = self.page_query(function=function, status=status, schedule=schedule, limit=limit + 1, cursor=cursor)
        with self.session() as session:
            rows = [ListedInvocation(record, input_head, result_head)
                    for record, input_head, result_head in session.execute(query)]
        if len(rows) <= limit:
            return rows, None
        rows = rows[:limit]
        return rows, encode_cursor(rows[-1].record)

    @staticmethod
    def page_query(*, function: str | None, status: str | None, limit: int, cursor: str | None,
                   schedule: str | None = None) -> sa.Select[InvocationRecord, str | None, str | None]:
        """The statement of a page of `list` (`limit` rows; the benchmark shows its plans)."""
        query = sa.select(InvocationRecord, _json_head(InvocationRecord.input), _json_head(InvocationRecord.result))
        query = query.options(defer(InvocationRecord.input, raiseload=True),
                              defer(InvocationRecord.result, raiseload=True))
        if function:
            query = query.where(InvocationRecord.function == function)
        if status:
            query = query.where(InvocationRecord.status == status)
        if schedule:
            query = query.where(InvocationRecord.schedule == schedule)
        if cursor:
            created_at, last_id = decode_cursor(cursor)
            # A row comparison: PostgreSQL reads it as one range of the (created_at, id) indexes.
            query = query.where(sa.tuple_(InvocationRecord.created_at, InvocationRecord.id) < (created_at, last_id))
        return query.order_by(InvocationRecord.created_at.desc(), InvocationRecord.id.desc()).limit(limit)

    def history(
        self, *, since: datetime | None = None, until: datetime | None = None, function: str | None = None
    ) -> Iterator[InvocationRecord]:
        """Every row created in [since, until), oldest first, streamed in batches."""
        query = sa.select(InvocationRecord).order_by(InvocationRecord.created_at, InvocationRecord.id)
        if since is not None:
            query = query.where(InvocationRecord.created_at >= since.astimezone(UTC))
        if until is not None:
            query = query.where(InvocationRecord.created_at < until.astimezone(UTC))
        if function:
            query = query.where(InvocationRecord.function == function)
        with self.session() as session:
            yield from session.scalars(query.execution_options(yield_per=500))


def _json_head(column: sa.orm.InstrumentedAttribute[object]) -> sa.ColumnElement[str | None]:
    """The first LISTED_JSON_CHARS + 1 characters of a JSON column's text (one more than is
    shown, so the reader can tell a cut value from a whole one)."""
    return sa.func.substr(sa.cast(column, sa.Text), 1, LISTED_JSON_CHARS + 1)
