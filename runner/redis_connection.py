"""Connecting to Redis: the client every process builds at start, and the errors that mean Redis is away."""

from __future__ import annotations

import redis
from redis.driver_info import DriverInfo

from runner.errors import BackendUnavailable

REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
# The 503's message when Redis could not take an invocation.
NOT_ACCEPTED = "Redis is unavailable; the invocation was not accepted."
# Short enough that the API answers 503 within two seconds when Redis is away.
API_SOCKET_TIMEOUT = 2.0


def connect_redis(url: str, *, socket_timeout: float | None = API_SOCKET_TIMEOUT) -> redis.Redis:
    """A Redis client for `url` (redis://, rediss:// or unix://); connects lazily."""
    if not url:
        raise BackendUnavailable("REDIS_URL is not set.", details={"dependency": "redis"})
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=API_SOCKET_TIMEOUT,
        socket_timeout=socket_timeout,
        health_check_interval=30,
        # Named here, redis-py does not read its own version from the package metadata for every new
        # connection (an email-header parse, 3 ms each: a work process forked at zero opens several).
        driver_info=DriverInfo(name="redis-py", lib_version=redis.__version__),
    )


def redis_unavailable(message: str = "Redis is unavailable.") -> BackendUnavailable:
    """The error every caller raises when a Redis command could not be sent."""
    return BackendUnavailable(message, details={"dependency": "redis"})


def check_redis(connection: redis.Redis) -> None:
    """Raise BackendUnavailable unless Redis answers."""
    try:
        connection.ping()
    except REDIS_ERRORS as exc:
        raise redis_unavailable() from exc
