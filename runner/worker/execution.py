"""What runs inside a worker: the job entry point, the job context functions see, and the attempt count.

Every job is enqueued as `runner.worker.execution.run_invocation(function_name, payload)`, so the
code a worker imports is never named by a request: the name is looked up in the registry.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import redis
from redis.client import Pipeline
from rq import get_current_job
from rq.job import Job

from runner.authoring import context
from runner.authoring.registry import Registry
from runner.errors import FunctionNotFound, InvalidInput, PermanentError, UploadNotFound
from runner.journal.reconcile import flush_write_behind, stage_write, write_or_defer
from runner.services.lifecycle import JobEvent, emit, emit_into
from runner.services.limits import WAITING_FOR_SLOT, SlotDecision, deferral, release_slot, take_slot
from runner.store.database import as_utc
from runner.store.files import ArtifactStore, UploadStore
from runner.store.models import utcnow
from runner.store.sql_store import Store

log = logging.getLogger(__name__)

# Progress is written to Redis on every call, to SQL only when it crosses one of these steps.
STORE_PROGRESS_STEP = 25
HISTORY_FLUSH_SECONDS = 5.0


@dataclass
class WorkerEnvironment:
    """The registry and store of this worker process (installed at worker start)."""

    registry: Registry
    store: Store | None
    uploads: UploadStore = field(default_factory=lambda: UploadStore(Path(".runner/uploads")))
    artifacts: ArtifactStore = field(default_factory=lambda: ArtifactStore(Path(".runner/artifacts")))

    def upload_path(self, upload_id: str) -> Path:
        """The file behind an upload id; PermanentError when it is gone."""
        try:
            return self.uploads.path(upload_id)
        except UploadNotFound as exc:
            raise PermanentError(exc.message) from None

    def history(self, since: datetime | None, until: datetime | None,
                function: str | None) -> Iterator[dict[str, Any]]:
        """The invocation rows created in [since, until), oldest first."""
        if self.store is None:
            raise PermanentError("This worker has no store to read the history from.")
        # This worker's own row updates (the running job's start, say) may still wait to be committed.
        flush_write_behind(HISTORY_FLUSH_SECONDS)
        for record in self.store.history(since=since, until=until, function=function):
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


_environment: WorkerEnvironment | None = None


def install_environment(environment: WorkerEnvironment | None) -> None:
    """Make the worker's registry and store known to the jobs it runs (None to forget them)."""
    global _environment
    _environment = environment
    context.install_environment(environment)


def _current_environment() -> WorkerEnvironment:
    # A plain `rq worker` never installed one: run without a store rather than crash.
    global _environment
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


def begin_attempt(job: Job, connection: redis.Redis, pipeline: Pipeline) -> Callable[[], None] | None:
    """Count the attempt that starts now, its writes queued in the pipeline that starts the job.

    The worker calls this as it starts a runner job, so the attempt costs no round trip of its
    own; run_invocation then finds it begun. Not for functions with a `concurrency` limit,
    whose attempt begins only once a slot is taken (run_invocation does it): None then.
    Returns what to do once the pipeline has executed.
    """
    environment = _current_environment()
    function_name = str(job.args[0]) if job.args else ""
    if function_name not in environment.registry or environment.registry.get(function_name).concurrency:
        return None
    attempt, event = _count_attempt(job, function_name)
    pipeline.hset(job.key, "meta", job.serializer.dumps(job.meta))
    commit = _stage_store_write(environment, job, connection, pipeline, status="started", attempts=attempt,
                                started_at=utcnow(), error=None)
    emit_into(pipeline, event)
    job.runner_attempt_begun = True  # type: ignore[attr-defined]

    def after() -> None:
        commit()
        emit(connection, event, after_emit_into=True)

    return after


def _count_attempt(job: Job, function_name: str) -> tuple[int, JobEvent]:
    attempt = int(job.meta.get("attempts", 0)) + 1
    job.meta.update(attempts=attempt, progress={"percent": 0, "message": "started"})
    job.meta.pop("error", None)
    return attempt, JobEvent("started", job.id, function_name, job.origin, attempt=attempt, status="started")


def run_invocation(function_name: str, payload: dict[str, Any]) -> Any:
    """Run one attempt of a registered function; the entry point of every runner job."""
    job = get_current_job()
    if job is None:
        raise RuntimeError("run_invocation is only called by a worker")
    environment = _current_environment()
    holds_slot = False
    if not getattr(job, "runner_attempt_begun", False):
        slot = _begin_here(job, environment, function_name)
        if slot is None:
            return deferral()
        holds_slot = slot.holds_slot
    try:
        spec = environment.registry.get(function_name)
        with context.running(RunningJob(job, environment)):
            result = spec.call(payload, {"uploads": environment.uploads})
        _ensure_json(result)
    except (PermanentError, InvalidInput, FunctionNotFound) as exc:
        job.retries_left = 0  # never retry input that can never succeed
        record_error(job, exc)
        raise
    except BaseException as exc:  # recorded, then re-raised for RQ's retry policy
        record_error(job, exc)
        raise
    finally:
        if holds_slot:
            release_slot(job.connection, function_name, job.id)
    return result


def _begin_here(job: Job, environment: WorkerEnvironment, function_name: str) -> SlotDecision | None:
    """Take a concurrency slot and count the attempt; None when every slot is taken (deferred, uncounted)."""
    slot = take_slot(job, environment.registry, function_name)
    if not slot.run:  # every `concurrency` slot is taken: scheduled again shortly, no attempt counted
        if slot.first_deferral:
            _store_write(environment, job, status="scheduled", progress_message=WAITING_FOR_SLOT)
        return None
    attempt, event = _count_attempt(job, function_name)
    job.save_meta()
    _store_write(environment, job, status="started", attempts=attempt, started_at=utcnow(), error=None)
    emit(job.connection, event)
    return slot


def record_error(job: Job, exc: BaseException) -> None:
    """Keep the error's type and message in job.meta for the job view."""
    job.meta["error"] = error_info(exc)
    job.save_meta()


def error_info(exc: BaseException) -> dict[str, str]:
    """The type and message of an exception, as shown to users."""
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return {"type": type(exc).__name__, "message": str(message)[:2000]}


def _ensure_json(result: Any) -> None:
    try:
        json.dumps(result, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PermanentError(f"The function returned a value that is not JSON: {exc}") from None


@dataclass
class RunningJob:
    """The job context (runner.authoring.context) of an RQ job run by this worker."""

    job: Job
    environment: WorkerEnvironment

    @property
    def job_id(self) -> str:
        return str(self.job.id)

    @property
    def attempt(self) -> int:
        return int(self.job.meta.get("attempts", 1))

    def report_progress(self, percent: int, message: str) -> None:
        job = self.job
        previous = job.meta.get("progress") or {}
        job.meta["progress"] = {"percent": percent, "message": message}
        job.save_meta()
        before = int(previous.get("percent", 0)) // STORE_PROGRESS_STEP
        if percent // STORE_PROGRESS_STEP != before:
            _store_write(self.environment, job, progress_percent=percent, progress_message=message)

    def save_artifact(self, name: str, content: bytes, media_type: str | None) -> dict[str, Any]:
        job = self.job
        entry = self.environment.artifacts.write(job.id, name, content, media_type)
        artifacts = [item for item in job.meta.get("artifacts", []) if item.get("name") != name]
        job.meta["artifacts"] = [*artifacts, entry]
        job.save_meta()
        return entry


def _stage_store_write(environment: WorkerEnvironment, job: Job, connection: redis.Redis, pipeline: Pipeline,
                       **values: Any) -> Callable[[], None]:
    if environment.store is None:
        return lambda: None
    after, _journaled = stage_write(environment.store, connection, pipeline, job.id, **values)
    return after


def _store_write(environment: WorkerEnvironment, job: Job, **values: Any) -> None:
    # The job must not fail because history could not be written: the write waits in Redis.
    if environment.store is not None:
        write_or_defer(environment.store, job.connection, job.id, **values)
