"""tests/servers.py (and the runner's EmbeddedRedis under RedisServer) with real redis-server and PostgreSQL."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
import redis

from tests.servers import (
    PostgresServer,
    RedisServer,
    find_postgres_bin,
    find_redis_server,
    free_port,
)


def _require(found: object, what: str) -> None:
    """Skip when ``what`` is missing, unless RUNNER_REQUIRE_SERVICES=1 (then fail)."""
    if found is not None:
        return
    if os.environ.get("RUNNER_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{what} not found but RUNNER_REQUIRE_SERVICES=1")
    pytest.skip(f"{what} not installed")


def _pid_alive(pid: int) -> bool:
    """Return True if a process with this PID exists (and is not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _redis_client(url: str) -> redis.Redis:
    """A redis-py client that fails fast."""
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)


def _pg_select_1(url: str) -> int:
    """Connect with psycopg2 and run ``select 1``."""
    conn = psycopg2.connect(url, connect_timeout=5)
    try:
        cur = conn.cursor()
        cur.execute("select 1")
        return int(cur.fetchone()[0])
    finally:
        conn.close()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A started RedisServer, stopped afterwards."""
    _require(find_redis_server(), "redis-server")
    with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def pg_server(tmp_path: Path) -> Iterator[PostgresServer]:
    """A started PostgresServer, stopped and removed afterwards."""
    _require(find_postgres_bin(), "PostgreSQL server binaries")
    with PostgresServer(tmp_path / "pg") as server:
        yield server


def test_free_port_is_bindable() -> None:
    """free_port() returns a port we can bind on 127.0.0.1."""
    port = free_port()
    assert 0 < port < 65536
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_redis_start_and_ping(redis_server: RedisServer) -> None:
    """A started server answers PING and stores data; its log is in the directory."""
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    client = _redis_client(redis_server.url)
    assert client.ping() is True
    client.set("k", "v")
    assert client.get("k") == b"v"
    assert (redis_server.directory / "redis.log").stat().st_size > 0


def test_redis_default_has_no_persistence(redis_server: RedisServer) -> None:
    """Default config: no RDB snapshots, no AOF, bound to 127.0.0.1."""
    config = _redis_client(redis_server.url).config_get("*")
    assert config["save"] == ""
    assert config["appendonly"] == "no"
    assert config["bind"] == "127.0.0.1"


def test_redis_restart_same_url(redis_server: RedisServer) -> None:
    """start() on a running server changes nothing; restart() gives a new process on the same URL."""
    url = redis_server.url
    old_pid = redis_server.pid
    redis_server.start()
    assert redis_server.pid == old_pid
    redis_server.restart()
    assert redis_server.url == url
    assert redis_server.pid != old_pid
    assert _redis_client(url).ping() is True


def test_redis_appendonly_survives_restart(tmp_path: Path) -> None:
    """With appendonly=True, data survives a restart."""
    _require(find_redis_server(), "redis-server")
    with RedisServer(tmp_path / "aof", appendonly=True) as server:
        client = _redis_client(server.url)
        assert client.config_get("appendonly")["appendonly"] == "yes"
        client.set("durable", "yes")
        server.restart()
        assert _redis_client(server.url).get("durable") == b"yes"


def test_redis_stop_really_stops(redis_server: RedisServer) -> None:
    """After stop() the process is gone and connections fail."""
    pid = redis_server.pid
    assert pid is not None
    redis_server.stop()
    assert redis_server.pid is None
    assert not _pid_alive(pid)
    with pytest.raises(redis.exceptions.ConnectionError):
        _redis_client(redis_server.url).ping()
    redis_server.stop()  # idempotent


def test_redis_start_failure_reports_log(tmp_path: Path) -> None:
    """A start failure raises RuntimeError carrying the log tail."""
    _require(find_redis_server(), "redis-server")
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        server = RedisServer(tmp_path / "busy", port=blocker.getsockname()[1])
        with pytest.raises(RuntimeError, match="(?i)address already in use"):
            server.start(timeout=5)
        assert server.pid is None


def test_postgres_start_and_select(pg_server: PostgresServer) -> None:
    """A started cluster accepts connections and runs queries."""
    assert pg_server.url == f"postgresql://postgres@127.0.0.1:{pg_server.port}/postgres"
    assert _pg_select_1(pg_server.url) == 1
    assert (pg_server.directory / "postgres.log").exists()


def test_postgres_data_dir_is_private_tmp(pg_server: PostgresServer) -> None:
    """Data lives in /tmp/runner-pg-*, owned by postgres when root."""
    assert pg_server.base_dir is not None
    assert pg_server.base_dir.name.startswith("runner-pg-")
    if os.geteuid() == 0:
        assert pg_server.base_dir.owner() == "postgres"


def test_postgres_create_database_is_separate(pg_server: PostgresServer) -> None:
    """create_database() returns the URL of a distinct, usable database."""
    url = pg_server.create_database("runner_test_db")
    assert url == f"postgresql://postgres@127.0.0.1:{pg_server.port}/runner_test_db"
    conn = psycopg2.connect(url, connect_timeout=5)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("select current_database()")
            assert cur.fetchone()[0] == "runner_test_db"
            cur.execute("create table only_here (x int)")
            cur.execute("insert into only_here values (42)")
    finally:
        conn.close()
    conn = psycopg2.connect(pg_server.url, connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute("select to_regclass('only_here')")
            assert cur.fetchone()[0] is None
    finally:
        conn.close()
    with pytest.raises(RuntimeError, match="already exists"):
        pg_server.create_database("runner_test_db")


def test_postgres_restart_keeps_url_and_data(pg_server: PostgresServer) -> None:
    """restart() keeps the URL and the data."""
    url = pg_server.create_database("keep")
    conn = psycopg2.connect(url, connect_timeout=5)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("create table t (x int)")
            cur.execute("insert into t values (7)")
    finally:
        conn.close()
    old_pid = pg_server.pid
    server_url = pg_server.url
    pg_server.restart()
    assert pg_server.url == server_url
    assert pg_server.pid != old_pid
    assert _pg_select_1(pg_server.url) == 1
    conn = psycopg2.connect(url, connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute("select x from t")
            assert cur.fetchone()[0] == 7
    finally:
        conn.close()


def test_postgres_stop_really_stops(pg_server: PostgresServer) -> None:
    """After stop() the postmaster is gone, connections fail, and start() revives it."""
    pid = pg_server.pid
    assert pid is not None
    pg_server.stop()
    assert pg_server.pid is None
    assert not _pid_alive(pid)
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(pg_server.url, connect_timeout=2)
    pg_server.stop()  # idempotent
    # A later start() brings the same cluster back on the same URL.
    pg_server.start()
    assert _pg_select_1(pg_server.url) == 1


def test_postgres_close_removes_tmp_dir(tmp_path: Path) -> None:
    """Leaving the context manager removes the temp data dir."""
    _require(find_postgres_bin(), "PostgreSQL server binaries")
    server = PostgresServer(tmp_path / "pg")
    with server:
        base = server.base_dir
        assert base is not None and base.is_dir()
    assert not base.exists()
    assert server.pid is None
    server.close()  # idempotent


def test_postgres_start_failure_reports_log(tmp_path: Path) -> None:
    """A start failure raises RuntimeError carrying the log tail and cleans up."""
    _require(find_postgres_bin(), "PostgreSQL server binaries")
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        server = PostgresServer(tmp_path / "pg", port=blocker.getsockname()[1])
        with pytest.raises(RuntimeError, match="log tail") as excinfo:
            server.start(timeout=15)
    assert "could not" in str(excinfo.value).lower()
    assert server.pid is None
    assert server.base_dir is None
