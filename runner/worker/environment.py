"""The worker process's environment: the registry of functions, the store, uploads and artifacts its jobs
see (installed once at worker start; runner.authoring.context reads it for function authors)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import redis

from runner.authoring import context
from runner.authoring.registry import Registry
from runner.errors import PermanentError, UploadNotFound
from runner.journal.reads import read_history
from runner.store.database import as_utc
from runner.store.files import ArtifactStore, UploadStore
from runner.store.history_summary import summarize_history
from runner.store.sql_store import Store


@dataclass
class WorkerEnvironment:
    """The registry and store of this worker process (installed at worker start)."""

    registry: Registry
    store: Store | None
    uploads: UploadStore = field(default_factory=lambda: UploadStore(Path(".runner/uploads")))
    artifacts: ArtifactStore = field(default_factory=lambda: ArtifactStore(Path(".runner/artifacts")))
    connection: redis.Redis | None = None

    def upload_path(self, upload_id: str) -> Path:
        """The file behind an upload id; PermanentError when it is gone."""
        try:
            return self.uploads.path(upload_id)
        except UploadNotFound as exc:
            raise PermanentError(exc.message) from None

    def history(self, since: datetime | None, until: datetime | None,
                function: str | None) -> Iterator[dict[str, Any]]:
        """The invocation rows created in [since, until), oldest first."""
        for record in self._history_store().history(since=since, until=until, function=function):
            yield {
                "id": record.id,
                "function": record.function,
                "queue": record.queue,
                "status": record.status,
                "attempts": record.attempts,
                "created_at": as_utc(record.created_at),
                "started_at": as_utc(record.started_at),
                "ended_at": as_utc(record.ended_at),
            }


    def summary(self, since: datetime | None, until: datetime | None, function: str | None,
                leave_out: str | None) -> list[dict[str, Any]]:
        """Per-function totals of the rows created in [since, until), computed by the database."""
        return [asdict(totals) for totals in summarize_history(self._history_store(), since=since, until=until,
                                                                function=function, leave_out=leave_out)]

    def _history_store(self) -> Store:
        if self.store is None:
            raise PermanentError("This worker has no store to read the history from.")
        # The running job's own start, say, may wait in the journal.
        return self.store if self.connection is None else read_history(self.connection, self.store)


_environment: WorkerEnvironment | None = None


def install_environment(environment: WorkerEnvironment | None) -> None:
    """Make the worker's registry and store known to the jobs it runs (None to forget them)."""
    global _environment
    _environment = environment
    context.install_environment(environment)


def current_environment() -> WorkerEnvironment:
    """This worker's environment; a plain `rq worker` never installed one: run without a store."""
    if _environment is None:
        from runner.config import Settings

        settings = Settings.from_env()
        install_environment(WorkerEnvironment(
            Registry.discover(settings.functions_package),
            None,
            UploadStore(settings.effective_upload_dir),
            ArtifactStore(settings.effective_artifact_dir),
        ))
    assert _environment is not None
    return _environment
