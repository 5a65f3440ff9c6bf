"""The SQL store of invocation history (SQLite by default, PostgreSQL in production)."""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TextIO, cast

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.orm import Session, sessionmaker

from runner.errors import BackendUnavailable
from runner.services.group_commit import GroupCommit
from runner.store.cursors import decode_cursor, encode_cursor
from runner.store.database import UNAVAILABLE_ERRORS, create_db_engine
from runner.store.driver_statements import DriverStatement, compile_for_driver
from runner.store.models import InvocationRecord, utcnow
from runner.store.statements import (
    INVOCATIONS,
    conditional_update,
    insert_of,
    insert_unless_present,
    runs_of_same_columns,
)

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Any id will do, as long as every process that migrates uses the same one.
MIGRATION_LOCK_ID = 727_411_905


class PendingRows(Protocol):
    """New rows accepted ahead of their commit (runner.journal.new_rows): kept in Redis until they are in SQL."""

    def rows_for(self, job_ids: Collection[str]) -> list[dict[str, Any]]:
        """The column values of those of `job_ids` whose rows wait; BackendUnavailable when Redis is away."""

    def claimed_rows(self, job_ids: Collection[str]) -> list[dict[str, Any]]:
        """Those of them this process's claims found waiting (runner.worker.claims), each once; no round trip."""

    def settle(self, store: Store) -> None:
        """Commit every waiting row (before reading history); BackendUnavailable when Redis is away."""


class Store:
    """Reads and writes invocation rows; turns lost connections into BackendUnavailable."""

    # Set where new rows may be written behind (runner.services.backends): reads and updates see them first.
    pending_rows: PendingRows | None = None

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_db_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._thread_turn = threading.Lock()
        self._lock_file: TextIO | None = None
        self._kept = threading.local()  # per thread: the connection apply_writes keeps
        self._compiled: dict[sa.Insert | sa.Update, DriverStatement | None] = {}  # hot-path statements
        # A shared insert that failed wrote nothing: its rows go in one by one, unless the
        # database is away, which every one of them would only wait to find out again.
        self._inserts = GroupCommit(self._insert_rows,
                                    retry_alone=lambda error: not isinstance(error, BackendUnavailable))
        # The database file when this is SQLite on disk (its lock files go next to it), else None.
        database = self.engine.url.database if self.engine.dialect.name == "sqlite" else None
        self._sqlite_file = database if database and database != ":memory:" else None
        # A forked work horse must not reuse the parent's pooled connections.
        os.register_at_fork(after_in_child=self._forget_pool)

    def _forget_pool(self) -> None:
        self.engine.dispose(close=False)
        self._thread_turn = threading.Lock()  # a thread of the parent may have held it at the fork
        self._lock_file = None
        self._kept = threading.local()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed on success; a lost database becomes BackendUnavailable."""
        try:
            with self._sessions.begin() as session:
                yield session
        except UNAVAILABLE_ERRORS as exc:
            raise BackendUnavailable("The database is unavailable.", details={"dependency": "database"}) from exc

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
            raise BackendUnavailable("The database is unavailable.", details={"dependency": "database"}) from exc

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
        # SQLite lets one writer in at a time, and makes the others poll for the lock with sleeps
        # of 1, 2, 5, 10... ms: under load, tail latencies of hundreds of ms. The hot-path writers
        # (invocations, workers' batches) queue on a file lock instead, which hands over at once.
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

    def add(self, record: InvocationRecord) -> None:
        """Insert a new invocation row."""
        values = {column.key: getattr(record, column.key) for column in INVOCATIONS.columns}
        self.insert({key: value for key, value in values.items() if value is not None})

    def get(self, job_id: str) -> InvocationRecord | None:
        """The row of `job_id`, or None; a row still journaled (runner.journal.new_rows) is committed first."""
        with self.session() as session:
            record = session.get(InvocationRecord, job_id)
        if record is not None or self.pending_rows is None:
            return record
        try:
            waiting = self._waiting_rows([job_id])
        except BackendUnavailable:  # Redis away: what SQL has is the answer
            return None
        if waiting:
            self.insert_unless_present(waiting)  # its own transaction, taking its turn to write
        # Read again also when none waited: its own writer may have committed it meanwhile.
        with self.session() as session:
            return session.get(InvocationRecord, job_id)

    def delete(self, job_id: str) -> None:
        """Remove a row (used when the enqueue after the insert failed)."""
        with self.session() as session:
            session.execute(sa.delete(InvocationRecord).where(InvocationRecord.id == job_id))

    def update(self, job_id: str, **values: Any) -> None:
        """Set columns of one row."""
        values.setdefault("updated_at", utcnow())
        self._update_one(job_id, sa.update(InvocationRecord).where(InvocationRecord.id == job_id).values(**values))

    def _update_one(self, job_id: str, statement: sa.Update) -> None:
        """Run the update of row `job_id`; when it touched nothing, commit the row if it waits in
        Redis (runner.journal.new_rows) and run it again (also when none waits any more: its writer may
        have committed it since; when Redis is away, the update goes to the rows SQL has)."""
        with self.session() as session:
            if cast(sa.CursorResult[Any], session.execute(statement)).rowcount == 0 and self.pending_rows is not None:
                with suppress(BackendUnavailable):
                    self._insert_waiting(session.connection(), self._waiting_rows([job_id]))
                session.execute(statement)

    def insert(self, values: dict[str, Any]) -> None:
        """Insert a new invocation row from column values (no ORM unit of work on the hot path).

        Returns once the row is committed; threads inserting at the same moment share a commit.
        """
        self._inserts.submit(values)

    def insert_unless_present(self, rows: list[dict[str, Any]]) -> None:
        """Insert those of `rows` whose id has no row yet, in one transaction (rows written behind)."""
        self._insert_rows(rows, unless_present=True)

    def _insert_rows(self, rows: list[dict[str, Any]], *, unless_present: bool = False) -> None:
        """Insert `rows` in one transaction."""
        if self.engine.dialect.name == "sqlite":  # no server: its connections never go stale, keep one
            with self._kept_transaction() as connection:
                self._insert_within(connection, rows, unless_present)
            return
        try:
            with self.engine.begin() as connection:  # from the pool, pinged: survives a server restart
                self._insert_within(connection, rows, unless_present)
        except UNAVAILABLE_ERRORS as exc:
            raise BackendUnavailable("The database is unavailable.", details={"dependency": "database"}) from exc

    def _insert_within(self, connection: sa.Connection, rows: list[dict[str, Any]], unless_present: bool) -> None:
        dialect = self.engine.dialect.name
        if unless_present:
            # Several may commit the same journaled rows at once (an API's writer, a read of history,
            # a worker): in one order, or PostgreSQL finds them waiting for each other (a deadlock).
            rows = sorted(rows, key=lambda values: values["id"])
        for values in rows:
            columns = tuple(values)
            statement = insert_unless_present(columns, dialect) if unless_present else insert_of(columns)
            self._execute(connection, statement, [values])

    def _waiting_rows(self, job_ids: Collection[str]) -> list[dict[str, Any]]:
        """The rows of `job_ids` accepted but not committed yet (none without `pending_rows`)."""
        return self.pending_rows.rows_for(job_ids) if self.pending_rows is not None and job_ids else []

    def _insert_waiting(self, connection: sa.Connection, waiting: list[dict[str, Any]]) -> None:
        # Before an update of a row written behind: the update must find it (runner.journal.new_rows).
        if waiting:
            self._insert_within(connection, waiting, unless_present=True)

    def settle_pending_rows(self) -> None:
        """Commit the rows accepted ahead of their commit, so a read of history sees them; skipped
        (SQL is read as it is) when Redis is away."""
        if self.pending_rows is not None:
            with suppress(BackendUnavailable):
                self.pending_rows.settle(self)

    def _execute(self, connection: sa.Connection, statement: sa.Insert | sa.Update,
                 rows: list[dict[str, Any]]) -> int:
        """Run `statement` for `rows`: one row through the driver, several through SQLAlchemy (it
        batches). How many rows it touched, as the driver tells (-1 when it cannot)."""
        try:
            compiled = self._compiled[statement]
        except KeyError:
            compiled = self._compiled[statement] = compile_for_driver(statement, self.engine.dialect)
        if compiled is not None and len(rows) == 1:
            return compiled.execute(connection, rows[0])
        return connection.execute(statement, rows).rowcount

    def apply_writes(self, writes: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Apply row updates in order, in one transaction, each only where the row is not newer.

        Every write carries its own `updated_at` (when it was made); a write whose row was updated
        later than that is skipped, as in `update_unless_newer`. Consecutive writes that set the
        same columns go to the database as one executemany.
        """
        # A writer thread commits many small batches: on a kept connection, with no pool checkout
        # and reset per batch. A stale one (the server restarted) costs one deferred batch.
        claimed = self.pending_rows.claimed_rows([job_id for job_id, _ in writes]) if self.pending_rows else []
        with self._kept_transaction() as connection:
            self._insert_waiting(connection, claimed)  # rows the claims of these jobs found journaled
            if self._update_each(connection, writes) < len(writes) and self.pending_rows is not None:
                # Some row is newer than its write, or was not committed yet (runner.journal.new_rows):
                # commit those that wait in Redis and apply the writes again, also when none waits
                # any more (its own writer may have committed it since). A write applied twice is
                # applied once. Rare: rows written behind are committed within a few ms.
                self._insert_waiting(connection, self._waiting_rows({job_id for job_id, _ in writes}))
                self._update_each(connection, writes)

    def _update_each(self, connection: sa.Connection, writes: Sequence[tuple[str, dict[str, Any]]]) -> int:
        """Apply `writes` (one per row); how many rows they updated (fewer when the driver cannot say)."""
        updated = 0
        for columns, rows in runs_of_same_columns(writes):
            touched = self._execute(connection, conditional_update(columns), rows)
            updated += touched if touched >= 0 else 0
        return updated

    @contextmanager
    def _kept_transaction(self) -> Iterator[sa.Connection]:
        """A transaction on this thread's kept connection: opened on first use, dropped when the database went away."""
        connection = getattr(self._kept, "connection", None)
        try:
            if connection is None or connection.invalidated or connection.closed:
                connection = self._kept.connection = self.engine.connect()
            with self._write_turn(), connection.begin():
                yield connection
        except UNAVAILABLE_ERRORS as exc:
            self._kept.connection = None
            if connection is not None:
                with suppress(Exception):
                    connection.invalidate()
            raise BackendUnavailable("The database is unavailable.", details={"dependency": "database"}) from exc

    def update_unless_newer(self, job_id: str, **values: Any) -> None:
        """Set columns unless the row was updated after `values["updated_at"]` (replayed writes)."""
        stamp = values["updated_at"]
        self._update_one(job_id, sa.update(InvocationRecord)
                         .where(InvocationRecord.id == job_id, InvocationRecord.updated_at <= stamp)
                         .values(**values))

    def list(
        self,
        *,
        function: str | None = None,
        status: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> tuple[list[InvocationRecord], str | None]:
        """A page of rows, newest first, and the cursor of the next page (None on the last)."""
        self.settle_pending_rows()
        query = sa.select(InvocationRecord)
        if function:
            query = query.where(InvocationRecord.function == function)
        if status:
            query = query.where(InvocationRecord.status == status)
        if cursor:
            created_at, last_id = decode_cursor(cursor)
            query = query.where(
                sa.or_(
                    InvocationRecord.created_at < created_at,
                    sa.and_(InvocationRecord.created_at == created_at, InvocationRecord.id < last_id),
                )
            )
        query = query.order_by(InvocationRecord.created_at.desc(), InvocationRecord.id.desc()).limit(limit + 1)
        with self.session() as session:
            rows = list(session.scalars(query))
        if len(rows) <= limit:
            return rows, None
        rows = rows[:limit]
        return rows, encode_cursor(rows[-1])


    def history(
        self, *, since: datetime | None = None, until: datetime | None = None, function: str | None = None
    ) -> Iterator[InvocationRecord]:
        """Every row created in [since, until), oldest first, streamed in batches."""
        self.settle_pending_rows()
        query = sa.select(InvocationRecord).order_by(InvocationRecord.created_at, InvocationRecord.id)
        if since is not None:
            query = query.where(InvocationRecord.created_at >= since.astimezone(UTC))
        if until is not None:
            query = query.where(InvocationRecord.created_at < until.astimezone(UTC))
        if function:
            query = query.where(InvocationRecord.function == function)
        with self.session() as session:
            yield from session.scalars(query.execution_options(yield_per=500))
