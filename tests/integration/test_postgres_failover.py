"""PostgreSQL failover: DATABASE_URL as a libpq multi-host URL with target_session_attrs=read-write.

Two real servers: a primary and its streaming standby (pg_basebackup). The stack writes history
to the primary; the primary stops and the standby is promoted; the same web and worker processes
carry on, their new connections landing on the server that now takes writes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from runner.store.sql_store import Store
from tests.integration.conftest import Stack, require_service
from tests.servers import PostgresServer, RedisServer, find_postgres_bin

RESUME_WITHIN_SECONDS = 20.0


@pytest.fixture
def primary_and_standby(tmp_path: Path) -> Iterator[tuple[PostgresServer, PostgresServer]]:
    """A primary with a database of the runner's, and a standby streaming from it."""
    require_service(find_postgres_bin(), "PostgreSQL server binaries")
    standby = PostgresServer(tmp_path / "standby")
    with PostgresServer(tmp_path / "primary") as primary:
        try:
            primary.create_database("runner_failover")
            standby.start_standby_of(primary)
            yield primary, standby
        finally:
            standby.close()


@pytest.fixture
def failover_stack(primary_and_standby: tuple[PostgresServer, PostgresServer], redis_server: RedisServer,
                   tmp_path: Path) -> Iterator[Stack]:
    """A stack whose DATABASE_URL names both servers, the primary first."""
    primary, standby = primary_and_standby
    hosts = f"127.0.0.1:{primary.port},127.0.0.1:{standby.port}"
    url = f"postgresql://postgres@{hosts}/runner_failover?target_session_attrs=read-write"
    redis_server.restart()  # a clean Redis
    stack = Stack("postgresql", redis_server.url, url, tmp_path, workers=1)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def server_port(stack: Stack) -> int:
    """The port of the server a new connection of the test's store lands on."""
    stack.store.engine.dispose()
    with stack.store.engine.connect() as connection:
        return int(connection.scalar(sa.text("SELECT inet_server_port()")))


def test_the_store_carries_on_with_the_standby_once_promoted(
        primary_and_standby: tuple[PostgresServer, PostgresServer], failover_stack: Stack) -> None:
    primary, standby = primary_and_standby
    stack = failover_stack
    assert server_port(stack) == primary.port
    before = stack.invoke("simple_calculation", {"expression": "1 + 1"}).json()["id"]
    stack.wait_for_row(before, lambda row: row.status == "finished")

    primary.stop()
    standby.promote()
    started = time.monotonic()
    while (answer := stack.invoke("simple_calculation", {"expression": "2 + 2"})).status_code != 202:
        assert answer.status_code == 503, answer.text  # refused (not a 500) until a connection lands
        assert time.monotonic() - started < RESUME_WITHIN_SECONDS, answer.text
        time.sleep(0.2)
    after = answer.json()["id"]
    assert stack.wait_until_terminal(after)["result"]["result"] == 4
    row = stack.wait_for_row(after, lambda row: row.status == "finished")
    assert row.result == {"expression": "2 + 2", "result": 4, "operations": 1}
    assert server_port(stack) == standby.port
    listed = {job["id"] for job in stack.get("/jobs", params={"limit": 10}).json()["jobs"]}
    assert {before, after} <= listed  # history from before the failover, on the standby too


def test_a_multi_host_url_reaches_the_first_server_that_takes_writes(
        primary_and_standby: tuple[PostgresServer, PostgresServer], tmp_path: Path) -> None:
    primary, standby = primary_and_standby
    # The standby named first: read-write skips it for the primary.
    url = (f"postgresql://postgres@127.0.0.1:{standby.port},127.0.0.1:{primary.port}/runner_failover"
           f"?target_session_attrs=read-write")
    store = Store(url)
    try:
        store.migrate()
        with store.engine.connect() as connection:
            assert connection.scalar(sa.text("SELECT inet_server_port()")) == primary.port
    finally:
        store.engine.dispose()
