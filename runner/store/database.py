"""Connecting to the SQL database: the engine, the errors that mean it is away, and the time convention."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine

UNAVAILABLE_ERRORS = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)


def with_driver(url: str) -> str:
    """Pin PostgreSQL URLs to psycopg2, the driver we ship (SQLAlchemy 2.1 defaults to psycopg 3)."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            url = "postgresql+psycopg2://" + url.removeprefix(prefix)
    return hosts_in_query(url) if url.startswith("postgresql") else url


def hosts_in_query(url: str) -> str:
    """A libpq multi-host URL (`postgresql://u@h1:5432,h2:5432/db?...`) in SQLAlchemy's spelling (`?host=h1:5432&...`).

    SQLAlchemy reads one host and port from the URL's authority (it takes `5432,h2:5432` for a
    port); libpq, through psycopg2, tries the hosts in order, and with `target_session_attrs=read-write`
    settles on the one that takes writes: a primary that fails over to a promoted standby.
    """
    scheme, _, rest = url.partition("://")
    # As in runner.config.masked_url: the credentials end at the last '@' (a password may hold '/').
    credentials, at, hosts_and_path = rest.rpartition("@")
    hosts, _, path_and_query = hosts_and_path.partition("/")
    if "," not in hosts:
        return url
    path, question, query = path_and_query.partition("?")
    host_options = "&".join(f"host={host}" for host in hosts.split(","))
    return f"{scheme}://{credentials}{at}/{path}?{host_options}{'&' + query if question and query else ''}"


def create_db_engine(url: str) -> Engine:
    """An engine that fails fast when the database is away, and shares SQLite between processes."""
    url = with_driver(url)
    if url.startswith("sqlite"):
        # sqlite3's `timeout` is SQLite's busy timeout: writers queue for the lock instead of failing.
        engine = sa.create_engine(url, connect_args={"timeout": 30})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    pooled: dict[str, Any] = {"pool_pre_ping": True, "pool_size": 5, "max_overflow": 10}
    if not url.startswith("postgresql"):
        return sa.create_engine(url, **pooled)
    # values_plus_batch: the projector's fenced updates of a batch go in pages of 100 (execute_batch),
    # not one round trip per row as psycopg2's executemany does.
    return sa.create_engine(url, **pooled, connect_args={"connect_timeout": 3}, executemany_mode="values_plus_batch")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the API read while a worker writes.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite forgets time zones; every stored time is UTC, so say so again."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


# PostgreSQL's SQLSTATE for a relation that does not exist (42P01); SQLite says it in words.
UNDEFINED_TABLE = "42P01"


def is_missing_table(error: BaseException) -> bool:
    """True when `error` (or the driver error under it) says a table does not exist: the schema is not migrated."""
    driver_error = getattr(error, "orig", None) or error.__cause__ or error
    return getattr(driver_error, "pgcode", None) == UNDEFINED_TABLE or "no such table" in str(driver_error)
