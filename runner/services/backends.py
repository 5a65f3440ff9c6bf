"""Connections to Redis and the store, built at process start and passed down (never at import)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import redis

from runner.config import Settings
from runner.errors import BackendUnavailable
from runner.rq_seam import fast_paths as rq_fast_paths
from runner.rq_seam.scripts import EncodedCommands, run_encoded
from runner.services.group_commit import GroupCommit
from runner.store.files import ArtifactStore, UploadStore
from runner.store.sql_store import Store

if TYPE_CHECKING:
    from runner.journal.new_rows import NewRows

REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
# Short enough that the API answers 503 within two seconds when Redis is away.
API_SOCKET_TIMEOUT = 2.0


@dataclass(frozen=True)
class Backends:
    """The live connections a process works with."""

    connection: redis.Redis
    store: Store
    settings: Settings

    def __post_init__(self) -> None:
        from runner.journal.new_rows import JournaledRows  # it needs this module's REDIS_ERRORS

        # Rows written behind (runner.journal.new_rows) wait in this Redis: the store's reads and updates see them.
        self.store.pending_rows = JournaledRows(self.connection)

    @cached_property
    def uploads(self) -> UploadStore:
        """Where uploaded files are kept."""
        settings = self.settings
        return UploadStore(settings.effective_upload_dir, settings.upload_ttl, settings.uploads_max_total_bytes)

    @cached_property
    def artifacts(self) -> ArtifactStore:
        """Where the files jobs write are kept."""
        return ArtifactStore(self.settings.effective_artifact_dir)

    @cached_property
    def job_sends(self) -> GroupCommit[EncodedCommands]:
        """New jobs' commands (`encode_commands`) on their way to Redis: threads sending at once share a call."""
        # A failed call may have run in part: sending its jobs again could queue some twice.
        return GroupCommit(functools.partial(run_encoded, self.connection), retry_alone=lambda error: False)

    @cached_property
    def new_rows(self) -> NewRows:
        """This process's new rows, written behind while invocations stream in (runner.journal.new_rows)."""
        from runner.journal.new_rows import NewRows  # it needs this module's REDIS_ERRORS

        return NewRows(self.store, self.connection)

    def validation_context(self) -> dict[str, object]:
        """What input validation may consult (stored uploads)."""
        return {"uploads": self.uploads}


def connect_redis(url: str, *, socket_timeout: float | None = API_SOCKET_TIMEOUT) -> redis.Redis:
    """A Redis client for `url` (redis://, rediss:// or unix://); connects lazily."""
    if not url:
        raise BackendUnavailable("REDIS_URL is not set.", details={"dependency": "redis"})
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=API_SOCKET_TIMEOUT,
        socket_timeout=socket_timeout,
        health_check_interval=30,
    )


def open_backends(settings: Settings, *, socket_timeout: float | None = API_SOCKET_TIMEOUT) -> Backends:
    """Redis client and store for these settings."""
    rq_fast_paths.install()
    return Backends(
        connection=connect_redis(settings.redis_url, socket_timeout=socket_timeout),
        store=Store(settings.effective_database_url),
        settings=settings,
    )


def redis_unavailable(message: str = "Redis is unavailable.") -> BackendUnavailable:
    """The error every caller raises when a Redis command could not be sent."""
    return BackendUnavailable(message, details={"dependency": "redis"})


NOT_ACCEPTED = "Redis is unavailable; the invocation was not accepted."


def check_redis(connection: redis.Redis) -> None:
    """Raise BackendUnavailable unless Redis answers."""
    try:
        connection.ping()
    except REDIS_ERRORS as exc:
        raise redis_unavailable() from exc
