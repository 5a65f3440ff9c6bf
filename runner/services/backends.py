"""Connections to Redis and the store, built at process start and passed down (never at import)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import redis

from runner.config import Settings
from runner.redis_connection import API_SOCKET_TIMEOUT, connect_redis, require_replicas
from runner.rq_seam.scripts import EncodedCommands, run_encoded
from runner.services.group_commit import GroupCommit
from runner.store.files import ArtifactStore, UploadStore
from runner.store.sql_store import Store


@dataclass(frozen=True)
class Backends:
    """The live connections a process works with."""

    connection: redis.Redis
    store: Store
    settings: Settings

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
        return GroupCommit(self._send_jobs)

    def _send_jobs(self, batches: list[EncodedCommands]) -> None:
        run_encoded(self.connection, batches)
        if self.settings.redis_min_replicas:  # one WAIT for the group: NotReplicated for each of its jobs
            require_replicas(self.connection, self.settings.redis_min_replicas, self.settings.redis_replica_timeout_ms)

    def validation_context(self) -> dict[str, object]:
        """What input validation may consult (stored uploads)."""
        return {"uploads": self.uploads}


def open_backends(settings: Settings, *, socket_timeout: float | None = API_SOCKET_TIMEOUT) -> Backends:
    """Redis client and store for these settings."""
    return Backends(
        connection=connect_redis(settings.redis_url, socket_timeout=socket_timeout),
        store=Store(settings.effective_database_url),
        settings=settings,
    )
