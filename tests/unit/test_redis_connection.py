"""REDIS_URL's Sentinel forms: what they name, the client they build, and the mistakes they refuse."""

from __future__ import annotations

import pytest
import redis
from redis.sentinel import SentinelConnectionPool, SentinelManagedConnection, SentinelManagedSSLConnection

from runner.config import SettingsError
from runner.errors import BackendUnavailable, NotReplicated
from runner.redis_connection import REDIS_ERRORS, SentinelURL, connect_redis, not_replicated, parse_sentinel_url


@pytest.mark.parametrize(("url", "expected"), [
    ("redis+sentinel://s1/main", SentinelURL([("s1", 26379)], "main")),
    ("redis+sentinel://s1:5000,s2,10.0.0.3:26380/main/3",
     SentinelURL([("s1", 5000), ("s2", 26379), ("10.0.0.3", 26380)], "main", db=3)),
    ("redis+sentinel://:p%40ss@s1/main", SentinelURL([("s1", 26379)], "main", password="p@ss")),
    ("redis+sentinel://app:secret@s1/main?sentinel_password=watch",
     SentinelURL([("s1", 26379)], "main", username="app", password="secret", sentinel_password="watch")),
    ("redis+sentinel://[::1]:26380,[fe80::2]/main", SentinelURL([("::1", 26380), ("fe80::2", 26379)], "main")),
    ("rediss+sentinel://s1/main?ssl_cert_reqs=none&ssl_ca_certs=/etc/ca.pem",
     SentinelURL([("s1", 26379)], "main", tls=True, tls_options={"ssl_cert_reqs": "none",
                                                                 "ssl_ca_certs": "/etc/ca.pem"})),
])
def test_a_sentinel_url_names_its_sentinels_service_and_database(url: str, expected: SentinelURL) -> None:
    assert parse_sentinel_url(url) == expected


@pytest.mark.parametrize(("url", "message"), [
    ("redis+sentinel://s1", "must end in /<service-name>"),
    ("redis+sentinel://s1/", "must end in /<service-name>"),
    ("redis+sentinel://s1/main/0/extra", "must end in /<service-name>"),
    ("redis+sentinel://s1/main/zero", "is not a number"),
    ("redis+sentinel://s1:port/main", "is not a sentinel's host[:port]"),
    ("redis+sentinel://s1:0/main", "is not a sentinel's host[:port]"),
    ("redis+sentinel://s1,,s2/main", "is not a sentinel's host[:port]"),
    ("redis+sentinel://[::1/main", "is not a sentinel's host[:port]"),
    ("redis+sentinel://s1/main?ssl_ca_certs=/ca.pem", "unknown option 'ssl_ca_certs'"),
    ("redis+sentinel://s1/main?timeout=3", "unknown option 'timeout'"),
])
def test_a_malformed_sentinel_url_is_a_settings_error(url: str, message: str) -> None:
    with pytest.raises(SettingsError, match="REDIS_URL=") as caught:
        connect_redis(url)
    assert message in str(caught.value)


def test_the_password_never_shows_in_a_settings_error() -> None:
    with pytest.raises(SettingsError) as caught:
        connect_redis("redis+sentinel://:hunter2@s1/main/x")
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(("scheme", "connection_class"), [
    ("redis+sentinel", SentinelManagedConnection), ("rediss+sentinel", SentinelManagedSSLConnection),
])
def test_a_sentinel_client_asks_the_sentinels_for_the_primary(scheme: str, connection_class: type) -> None:
    client = connect_redis(f"{scheme}://:secret@127.0.0.1:1,127.0.0.1:2/main/4", socket_timeout=None)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "main" and pool.is_master
    assert pool.connection_class is connection_class
    assert (pool.connection_kwargs["db"], pool.connection_kwargs["password"]) == (4, "secret")
    assert pool.connection_kwargs["socket_timeout"] is None  # a worker's blocking client
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [1, 2]
    # The sentinels are asked with a bounded wait, and without the data nodes' password.
    assert all(s.connection_pool.connection_kwargs["socket_timeout"] == 2.0 for s in sentinels)
    assert all(s.connection_pool.connection_kwargs.get("password") is None for s in sentinels)


def test_no_sentinel_answering_means_redis_is_away() -> None:
    client = connect_redis("redis+sentinel://127.0.0.1:1/main")
    with pytest.raises(REDIS_ERRORS):
        client.ping()


def test_the_other_forms_still_go_to_redis_py() -> None:
    client = connect_redis("redis://127.0.0.1:6390/2")
    assert type(client.connection_pool) is redis.ConnectionPool
    assert client.connection_pool.connection_kwargs["db"] == 2


def test_not_replicated_is_a_503_that_says_the_job_may_still_run() -> None:
    error = not_replicated(2, 500, 1)
    assert isinstance(error, NotReplicated) and isinstance(error, BackendUnavailable)
    assert "may still run" in error.message and "Idempotency-Key" in error.message
    assert error.details == {"dependency": "redis", "replicas_required": 2, "replicas_acknowledged": 1}


def test_rqs_scheduler_process_rebuilds_a_client_that_asks_the_same_sentinels() -> None:
    # RQ's scheduler drops its client before it forks and rebuilds one from the pool's connection
    # class and arguments (rq.connections.parse_connection): with a Sentinel client, these are the
    # Sentinel-managed connections of our pool, so the scheduler follows a failover too.
    from runner.rq_seam.scheduler_guard import RunnerScheduler

    client = connect_redis("redis+sentinel://127.0.0.1:1/main/2", socket_timeout=None)
    scheduler = RunnerScheduler(["default"], connection=client)
    scheduler._connection = None  # what start() does before the fork
    rebuilt = scheduler.connection.connection_pool
    assert rebuilt.connection_class is SentinelManagedConnection
    assert rebuilt.connection_kwargs["connection_pool"] is client.connection_pool.proxy
    assert rebuilt.connection_kwargs["db"] == 2
