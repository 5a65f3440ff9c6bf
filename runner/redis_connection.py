"""Connecting to Redis: the client every process builds at start, and the errors that mean Redis is away.

REDIS_URL takes redis-py's forms (redis://, rediss://, unix://) and two of Redis Sentinel:
`redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/<service>[/<db>]`, and
`rediss+sentinel://...`, which speaks TLS to the data nodes (the sentinels are asked in the clear).
The password is the data nodes'; `?sentinel_password=` gives the sentinels' when they have one.
A Sentinel client asks the sentinels for the primary before each new connection and drops its
connections when the primary moves (redis-py's `SentinelConnectionPool`), so each process
follows a failover by itself. redis-py's own `from_url` refuses these URLs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

import redis
from redis.driver_info import DriverInfo
from redis.sentinel import MasterNotFoundError, Sentinel

from runner.config import SettingsError, masked_url
from runner.errors import BackendUnavailable, NotReplicated

# MasterNotFoundError (no sentinel knows a primary) is a ConnectionError already; ReadOnlyError is
# what a primary demoted during a failover answers a write, until the client asks the sentinels again.
REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, MasterNotFoundError,
                redis.exceptions.ReadOnlyError)
# The 503's message when Redis could not take an invocation.
NOT_ACCEPTED = "Redis is unavailable; the invocation was not accepted."
# Short enough that the API answers 503 within two seconds when Redis is away.
API_SOCKET_TIMEOUT = 2.0
# Written before WAIT so that the WAIT counts acknowledgements of everything sent before it.
REPLICATION_MARK_KEY = "runner:replication:mark"
SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}
DEFAULT_SENTINEL_PORT = 26379
# Query options of a Sentinel URL: the sentinels' password, and for rediss+sentinel the TLS files.
SENTINEL_OPTIONS = frozenset({"sentinel_password"})
TLS_OPTIONS = frozenset({"ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs"})


@dataclass(frozen=True)
class SentinelURL:
    """What a redis+sentinel:// URL names: the sentinels, the service, and how to talk to its data nodes."""

    sentinels: list[tuple[str, int]]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)
    tls: bool = False
    tls_options: dict[str, str] = field(default_factory=dict)


def is_sentinel_url(url: str) -> bool:
    """Whether `url` names its Redis through sentinels."""
    return url.partition("://")[0].lower() in SENTINEL_SCHEMES


def parse_sentinel_url(url: str) -> SentinelURL:
    """The parts of a redis+sentinel:// or rediss+sentinel:// URL, or SettingsError naming what is wrong."""
    scheme, _, rest = url.partition("://")
    rest, _, query = rest.partition("?")
    credentials, at, rest = rest.rpartition("@")
    hosts, _, path = rest.partition("/")
    username = password = None
    if at:
        user, colon, secret = credentials.partition(":")
        username, password = unquote(user) or None, unquote(secret) if colon else None
    parts = [unquote(part) for part in path.split("/") if part]
    if not parts or len(parts) > 2:
        raise SettingsError(f"REDIS_URL={_shown(url)} must end in /<service-name> or /<service-name>/<db>")
    if len(parts) == 2 and not parts[1].isdigit():
        raise SettingsError(f"REDIS_URL={_shown(url)}: the database {parts[1]!r} is not a number")
    options = dict(parse_qsl(query, keep_blank_values=True))
    tls = SENTINEL_SCHEMES[scheme.lower()]
    allowed = SENTINEL_OPTIONS | (TLS_OPTIONS if tls else frozenset())
    if unknown := sorted(set(options) - allowed):
        known = ", ".join(sorted(allowed))
        raise SettingsError(f"REDIS_URL={_shown(url)}: unknown option {unknown[0]!r} (known: {known})")
    return SentinelURL(
        sentinels=[_address(host, url) for host in hosts.split(",")],
        service=parts[0], db=int(parts[1]) if len(parts) == 2 else 0,
        username=username, password=password, sentinel_password=options.pop("sentinel_password", None) or None,
        tls=tls, tls_options=options,
    )


def _address(host: str, url: str) -> tuple[str, int]:
    # host, host:port, [v6] or [v6]:port
    if host.startswith("["):
        name, bracket, port = host[1:].partition("]")
        port = port.removeprefix(":") if bracket else "x"
    else:
        name, _, port = host.partition(":")
    if not name or (port and not port.isdigit()) or not 0 < int(port or DEFAULT_SENTINEL_PORT) < 65536:
        raise SettingsError(f"REDIS_URL={_shown(url)}: {host!r} is not a sentinel's host[:port]")
    return name, int(port or DEFAULT_SENTINEL_PORT)


def _shown(url: str) -> str:
    return repr(masked_url(url))


def connect_redis(url: str, *, socket_timeout: float | None = API_SOCKET_TIMEOUT) -> redis.Redis:
    """A Redis client for `url` (any form of the module's docstring); connects lazily."""
    if not url:
        raise BackendUnavailable("REDIS_URL is not set.", details={"dependency": "redis"})
    options: dict[str, Any] = {"socket_connect_timeout": API_SOCKET_TIMEOUT, "socket_timeout": socket_timeout,
                               "health_check_interval": 30,
                               # Named here, redis-py does not read its own version from the package metadata
                               # for every new connection (an email-header parse, 3 ms each: a work process
                               # forked at zero opens several).
                               "driver_info": DriverInfo(name="redis-py", lib_version=redis.__version__)}
    if not is_sentinel_url(url):
        return redis.Redis.from_url(url, **options)
    parsed = parse_sentinel_url(url)
    # The sentinels answer at once or not at all: a bounded wait even for a worker's blocking client.
    sentinel = Sentinel(parsed.sentinels, sentinel_kwargs={  # type: ignore[no-untyped-call]
        "socket_connect_timeout": API_SOCKET_TIMEOUT, "socket_timeout": API_SOCKET_TIMEOUT,
        "password": parsed.sentinel_password})
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        parsed.service, db=parsed.db, username=parsed.username, password=parsed.password, ssl=parsed.tls,
        **parsed.tls_options, **options)
    return client


def redis_unavailable(message: str = "Redis is unavailable.") -> BackendUnavailable:
    """The error every caller raises when a Redis command could not be sent."""
    return BackendUnavailable(message, details={"dependency": "redis"})


def check_redis(connection: redis.Redis) -> None:
    """Raise BackendUnavailable unless Redis answers."""
    try:
        connection.ping()
    except REDIS_ERRORS as exc:
        raise redis_unavailable() from exc


def require_replicas(connection: redis.Redis, replicas: int, timeout_ms: int) -> None:
    """Return once `replicas` replicas hold every write sent before this call; NotReplicated after `timeout_ms`.

    WAIT counts acknowledgements of the calling connection's last write; a pooled client may send
    it on another connection than the writes it confirms, so a write of its own goes first, in
    the same round trip. A primary lost meanwhile is NotReplicated too: what was sent may be there.
    """
    try:
        with connection.pipeline(transaction=False) as pipe:
            pipe.set(REPLICATION_MARK_KEY, "1", px=60_000)
            pipe.wait(replicas, timeout_ms)
            acknowledged = int(pipe.execute()[-1])
    except REDIS_ERRORS as exc:
        raise not_replicated(replicas, timeout_ms, None) from exc
    if acknowledged < replicas:
        raise not_replicated(replicas, timeout_ms, acknowledged)


def not_replicated(replicas: int, timeout_ms: int, acknowledged: int | None) -> NotReplicated:
    """The 503 of an invocation whose job the primary holds but `replicas` replicas did not acknowledge."""
    said = "could not be asked" if acknowledged is None else f"acknowledged {acknowledged}"
    return NotReplicated(
        f"The job reached the Redis primary, but of the {replicas} replica(s) required {said} within "
        f"{timeout_ms} ms: it may still run. An invocation retried with the same Idempotency-Key gets this job, "
        "never a second.",
        details={"dependency": "redis", "replicas_required": replicas, "replicas_acknowledged": acknowledged},
    )
