"""What runs inside a worker: the job entry point, and the job context its function sees.

Every job is enqueued as `runner.worker.execution.run_invocation(function_name, payload)`
(runner.rq_seam.job_hash.ENTRY_POINT), so the code a worker imports is never named by a
request: the name is looked up in the registry.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from rq.job import Job, Retry
from rq.timeouts import JobTimeoutException

from runner import tracing
from runner.authoring import context
from runner.authoring.spec import FunctionSpec
from runner.errors import FunctionNotFound, InvalidInput, JobStopped, PermanentError
from runner.journal import entries as journal
from runner.journal.rows import row_values
from runner.rq_seam.bookkeeping import current_job, guarded_by_fence, queue_meta
from runner.rq_seam.dependencies import dependency_ids
from runner.rq_seam.keys import META_FIELD
from runner.rq_seam.scripts import execute_as_script, script_pipeline
from runner.services.dependencies import parent_results
from runner.services.limits import deferral, release_slot, take_slot
from runner.status import JobStatus
from runner.worker.attempts import count_attempt, event_of, fence_of, queue_history
from runner.worker.environment import WorkerEnvironment, current_environment

log = logging.getLogger(__name__)

# Progress is written to Redis on every call, to the history row only when it crosses one of these steps.
STORE_PROGRESS_STEP = 25


def begins_at_start(job: Job) -> bool:
    """Whether the worker counts `job`'s attempt as it starts it (in the start's script call); the
    attempts of functions with a `concurrency` limit begin only once they hold a slot (run_invocation)."""
    registry = current_environment().registry
    function_name = str(job.args[0]) if job.args else ""
    return function_name in registry and not registry.get(function_name).concurrency


def runs_in_slot(job: Job) -> bool:
    """Whether `job`'s function runs many jobs at once (async def, or threads=True: runner.worker.in_flight)."""
    return _runs_in_slot(str(job.args[0]) if job.args else "")


def hash_runs_in_slot(fields: dict[bytes, bytes]) -> bool:
    """`runs_in_slot` for a job claimed but not read yet, from its hash: its meta names its function."""
    try:
        function_name = json.loads(fields.get(META_FIELD.encode()) or b"{}").get("function")
    except ValueError:
        return False
    return isinstance(function_name, str) and _runs_in_slot(function_name)


def _runs_in_slot(function_name: str) -> bool:
    registry = current_environment().registry
    return function_name in registry and registry.get(function_name).runs_in_slots


def run_invocation(function_name: str, payload: dict[str, Any]) -> Any:
    """Run one attempt of a registered function; the entry point of every runner job."""
    job = current_job()
    if job is None:
        raise RuntimeError("run_invocation is only called by a runner worker")
    attempt = _open_attempt(job, function_name)
    if isinstance(attempt, Retry):
        return attempt
    with attempt.running():
        result = attempt.spec.call(payload, {"uploads": attempt.environment.uploads})
        _ensure_json(result)
    return result


async def run_invocation_async(job: Job, deadline: asyncio.Timeout, stopped: Callable[[], bool]) -> Any:
    """Run one attempt of `job`, whose function is `async def`, on this thread's event loop (the job is
    current in the task's context); `deadline` bounds it, `stopped` says whether its cancellation was a stop."""
    function_name, payload = str(job.args[0]), job.args[1]
    if getattr(job, "attempt_begun", False):
        attempt = _open_attempt(job, function_name)
    else:  # a `concurrency` slot to take first: Redis round trips, off the loop
        attempt = await asyncio.to_thread(_open_attempt, job, function_name)
    if isinstance(attempt, Retry):
        return attempt
    with attempt.running():
        try:
            async with deadline:
                result = await attempt.spec.call(payload, {"uploads": attempt.environment.uploads})
        except TimeoutError:
            if not deadline.expired():
                raise
            raise JobTimeoutException(f"Task exceeded maximum timeout value ({job.timeout} seconds)") from None
        except asyncio.CancelledError:
            if not stopped():
                raise
            raise JobStopped() from None
        _ensure_json(result)
    return result


@dataclass
class _Attempt:
    """An attempt about to run: its function, and the concurrency slot it holds, if any."""

    job: Job
    function_name: str
    environment: WorkerEnvironment
    holds_slot: bool
    limit_key: str | None

    @property
    def spec(self) -> FunctionSpec:
        return self.environment.registry.get(self.function_name)

    @contextmanager
    def running(self) -> Iterator[None]:
        """Run the attempt's code inside: its span, its job context, its error recorded, its slot released."""
        job = self.job
        traced = tracing.job_attributes(job.id, self.function_name, job.origin)
        tracing.record_queue_wait(job.meta.get(tracing.TRACEPARENT), job.enqueued_at, traced)
        try:
            with tracing.attempt_span(job.meta.get(tracing.TRACEPARENT), int(job.meta.get("attempts", 1)), traced), \
                    context.running(RunningJob(job, self.environment)):
                yield
        except (PermanentError, InvalidInput, FunctionNotFound) as exc:
            job.retries_left = 0  # never retry input that can never succeed
            job.meta["error"] = error_info(exc)
            raise
        except BaseException as exc:  # recorded (saved with the attempt's end), then re-raised for the retry policy
            job.meta["error"] = error_info(exc)
            raise
        finally:
            if self.holds_slot:
                release_slot(job.connection, self.function_name, job.id, self.limit_key)


def _open_attempt(job: Job, function_name: str) -> _Attempt | Retry:
    """The attempt of `job`, its attempt counted once it holds its `concurrency` slot; a Retry (no
    attempt counted) when every slot is taken."""
    environment = current_environment()
    holds_slot, limit_key = False, None
    if not getattr(job, "attempt_begun", False):
        slot = take_slot(job, environment.registry, function_name)
        if not slot.run:  # every `concurrency` slot is taken: scheduled again shortly, no attempt counted
            job.first_deferral = slot.first_deferral  # type: ignore[attr-defined]
            return deferral()
        _begin_here(job)
        holds_slot, limit_key = slot.holds_slot, slot.limit_key
    return _Attempt(job, function_name, environment, holds_slot, limit_key)


def _begin_here(job: Job) -> None:
    """Count the attempt of a job that now holds its concurrency slot, with its history."""
    count_attempt(job)
    with script_pipeline(job.connection) as pipeline:
        with guarded_by_fence(pipeline, job, fence_of(job)):
            queue_meta(pipeline, job)
            after = queue_history(pipeline, job, JobStatus.STARTED, event_of(job, "started", JobStatus.STARTED),
                                  job.connection)
        after(all(execute_as_script(job.connection, pipeline)))


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
    """The job context (runner.authoring.context) of an RQ job run by this worker.

    Its writes are guarded by the attempt's fence: an attempt that was settled and retried
    elsewhere meanwhile changes nothing."""

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
        milestone = percent // STORE_PROGRESS_STEP != int(previous.get("percent", 0)) // STORE_PROGRESS_STEP
        self._save_meta(journal_row=milestone)

    def parent_results(self) -> dict[str, Any]:
        job = self.job
        return parent_results(job.connection, self.environment.store, dependency_ids(job))

    def save_artifact(self, name: str, content: bytes, media_type: str | None) -> dict[str, Any]:
        job = self.job
        entry = self.environment.artifacts.write(job.id, name, content, media_type)
        artifacts = [item for item in job.meta.get("artifacts", []) if item.get("name") != name]
        job.meta["artifacts"] = [*artifacts, entry]
        self._save_meta(journal_row=False)
        return entry

    def _save_meta(self, *, journal_row: bool) -> None:
        job = self.job
        with script_pipeline(job.connection) as pipeline:
            with guarded_by_fence(pipeline, job, fence_of(job)):
                queue_meta(pipeline, job)
                if journal_row and self.environment.store is not None:
                    journal.append(pipeline, job.id, _progress_values(job), fence=fence_of(job),
                                   traceparent=tracing.traceparent_of(job.meta))
            execute_as_script(job.connection, pipeline)


def _progress_values(job: Job) -> dict[str, Any]:
    values = row_values(job, JobStatus.STARTED)
    return {"progress_percent": values["progress_percent"], "progress_message": values["progress_message"]}
