"""RQ's bookkeeping of a job at each moment of its life, as commands queued in one pipeline.

Each function queues what RQ's own code would write when a job starts, succeeds, fails, is
retried, stopped, deferred or put back on its queue, without sending it: the caller adds its own
writes (the journal entry, metrics) and sends all of it as one script call
(runner.rq_seam.scripts), so a job's change and its history are written together or not at all.
A start or end costs one round trip, where RQ's worker spends several.

Fencing: a job's hash counts the executions started (`runner_fence`). Everything an execution
writes later is guarded by that count, so an attempt that its worker kept running after it was
presumed dead and retried elsewhere (a paused or cut-off worker) changes nothing in Redis, and
no event or callback follows it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast
from uuid import uuid4

import redis
from redis.client import Pipeline
from rq.exceptions import DeserializationError
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.results import Result
from rq.serializers import JSONSerializer
from rq.utils import now, utcformat
from rq.worker import BaseWorker, WorkerStatus

from runner.rq_seam.keys import FENCE_FIELD, META_FIELD, STATUS_FIELD, job_key
from runner.rq_seam.macros import queue_start_writes, queue_success_writes
from runner.rq_seam.scripts import DIFFERS, EQUALS, guard

R = TypeVar("R")
_running: ContextVar[Job | None] = ContextVar("runner_rq_job", default=None)


def current_job() -> Job | None:
    """The RQ job this worker thread is running, or None."""
    return _running.get()


class RunnerJob(Job):
    """An RQ job performed as RQ does, minus two things: the PERSIST of its key (sent with the start)
    and RQ's job stack (`current_job` stands in). `outcome` keeps what it returned."""

    outcome: Any = None

    def perform(self) -> Any:  # noqa: D102
        token = _running.set(self)
        try:
            self.outcome = self.func(*self.args, **self.kwargs)
        finally:
            _running.reset(token)
        return self.outcome

    async def perform_async(self, attempt: Callable[[Job], Awaitable[Any]]) -> Any:
        """Perform the job of an `async def` function: await `attempt(job)`, the job current in this task."""
        token = _running.set(self)
        try:
            self.outcome = await attempt(self)
        finally:
            _running.reset(token)
        return self.outcome


@contextmanager
def changing_job(connection: redis.Redis, job_id: str) -> Iterator[tuple[Pipeline, RunnerJob | None, int]]:
    """A transaction on one job: the pipeline (watching the job's hash, in MULTI), the job as read then
    (None when Redis does not hold it, or it is no runner job) and its fence; what the block queues runs at
    its end (`pipeline.reset()` to leave the job as it is). Raises redis.WatchError when it changed meanwhile."""
    with connection.pipeline() as pipeline:
        pipeline.watch(job_key(job_id))  # type: ignore[no-untyped-call]
        fields = cast(dict[bytes, bytes], pipeline.hgetall(job_key(job_id)))
        job: RunnerJob | None = None
        if fields:
            job = RunnerJob(job_id, connection=connection, serializer=JSONSerializer)
            try:
                job.restore(fields)  # type: ignore[arg-type]
            except DeserializationError:
                job = None
        pipeline.multi()
        yield pipeline, job, fence_of(fields)
        pipeline.execute()


def retried_on_change(change: Callable[[], R]) -> R:
    """`change()`, again for as long as a job it watched changed meanwhile (redis.WatchError)."""
    while True:
        try:
            return change()
        except redis.WatchError:
            continue


def fence_of(fields: dict[bytes, bytes]) -> int:
    """How many executions of a job have started, from its hash (0 when none)."""
    raw = fields.get(FENCE_FIELD.encode())
    return int(raw) if raw else 0


def is_latest(job: Job, fence: int) -> tuple[str, str, str, str]:
    """The guard condition: `job` has started no execution since the `fence`th."""
    return (job.key, FENCE_FIELD, EQUALS, str(fence))


@contextmanager
def guarded_by_fence(pipeline: Pipeline, job: Job, fence: int) -> Iterator[None]:
    """Commands queued inside run only if the `fence`th execution is still the job's latest."""
    with guard(pipeline, is_latest(job, fence)):
        yield


@contextmanager
def start_guard(pipeline: Pipeline, job: Job, fence: int) -> Iterator[None]:
    """The guard of a start: the job is not canceled, and its latest execution is the one before."""
    with guard(pipeline, (job.key, STATUS_FIELD, DIFFERS, JobStatus.CANCELED.value), is_latest(job, fence - 1)):
        yield


def queue_start(pipeline: Pipeline, job: Job, *, worker_name: str, fence: int, heartbeat_ttl: int,
                dead_after: float) -> Execution:
    """Queue the start of `job` as its `fence`th execution (call inside `start_guard`); its execution.

    What RQ's Execution.create and Job.prepare_for_execution write, with the PERSIST of the job's key that
    Job.perform would send on its own (RunnerJob does not), as one command (runner.rq_seam.macros)."""
    execution = Execution(uuid4().hex, job.id, connection=job.connection, worker_name=worker_name)
    queue_start_writes(pipeline, job, execution, fence=fence, heartbeat_ttl=heartbeat_ttl, dead_after=dead_after,
                       started=now())
    return execution


def queue_worker_busy(pipeline: Pipeline, worker: BaseWorker, job: Job, heartbeat_ttl: int,
                      also: dict[str, int]) -> None:
    """Queue what RQ's set_state, set_current_job_id, set_current_job_working_time and heartbeat write
    when the worker starts `job` (once for the jobs started together: the last one is its current job),
    in one HSET with the fields `also` sets."""
    worker.set_state(WorkerStatus.BUSY, pipeline=pipeline)
    worker.current_job_working_time = 0
    worker.last_heartbeat = now()
    fields: dict[str, str | int] = {"current_job": job.id, "current_job_working_time": 0,
                                    "last_heartbeat": utcformat(worker.last_heartbeat), **also}
    pipeline.hset(worker.key, mapping=fields)  # type: ignore[arg-type]
    pipeline.expire(worker.key, heartbeat_ttl)


def queue_finish(pipeline: Pipeline, worker: BaseWorker, job: Job, *, result_ttl: int,
                 execution: Execution | None) -> None:
    """Queue what RQ writes when a job's `execution` succeeded (call inside `guarded_by_fence`), but for
    the execution's removal (`queue_forget_execution`, or RQ's cleanup for the worker's own)."""
    assert job.started_at is not None and job.ended_at is not None and job.last_heartbeat is not None
    if result_ttl > 0:
        queue_success_writes(pipeline, job, worker.key, result_ttl=result_ttl)
    else:  # a result kept forever (-1) or not at all (0): RQ's own calls
        worker.increment_successful_job_count(pipeline=pipeline)
        worker.increment_total_working_time(job.ended_at - job.started_at, pipeline)
        if result_ttl != 0:
            job.set_status(JobStatus.FINISHED, pipeline=pipeline)
            pipeline.hset(job.key, mapping={"ended_at": utcformat(job.ended_at),
                                            "last_heartbeat": utcformat(job.last_heartbeat)})
            job.finished_job_registry.add(job, result_ttl, pipeline)
        job.cleanup(result_ttl, pipeline=pipeline, remove_from_queue=False)
    if result_ttl != 0:
        Result.create(job, Result.Type.SUCCESSFUL, return_value=getattr(job, "outcome", None), ttl=result_ttl,
                      worker_name=worker.name, pipeline=pipeline, execution_id=execution.id if execution else None,
                      execution_started_at=execution.created_at if execution else None,
                      execution_ended_at=job.ended_at)


def queue_meta(pipeline: Pipeline, job: Job) -> None:
    """Queue the save of the job's meta (progress, attempts, error, artifacts)."""
    pipeline.hset(job.key, META_FIELD, job.serializer.dumps(job.meta))


def queue_requeue(pipeline: Pipeline, job: Job, queue: Queue, *, at_front: bool = False) -> None:
    """Queue `job` on `queue` again, its whole hash saved (from a registry, or after an attempt)."""
    job.started_at = job.ended_at = None
    # RQ's enqueue_job minus its dependency check (a WATCH, refused inside this pipeline's MULTI): a
    # job that waited for others goes back only once they ended (runner.services.dependencies).
    pipeline.sadd(queue.redis_queues_keys, queue.key)
    queue._enqueue_job(job, pipeline=pipeline, at_front=at_front)


def queue_schedule(pipeline: Pipeline, job: Job, queue: Queue, when: datetime) -> None:
    """Queue `job` in `queue`'s scheduled registry until `when`, its whole hash saved."""
    queue.schedule_job(job, when, pipeline=pipeline)


def queue_retry(pipeline: Pipeline, job: Job, queue: Queue) -> str:
    """Queue RQ's retry of a failed attempt (one retry spent; at once, or after the backoff); the status it gets.

    RQ's own `Job.retry` writes a scheduled retry's status outside the pipeline: here all goes in it."""
    interval = job.get_retry_interval()
    job.retries_left = int(job.retries_left or 0) - 1
    if interval:
        queue_schedule(pipeline, job, queue, now() + timedelta(seconds=interval))
        return JobStatus.SCHEDULED.value
    queue_requeue(pipeline, job, queue, at_front=job.enqueue_at_front_on_retry)
    return JobStatus.QUEUED.value


def queue_failure(pipeline: Pipeline, job: Job, exc_string: str, *, status: str = JobStatus.FAILED.value,
                  worker_name: str = "", execution: Execution | None = None) -> None:
    """Queue what RQ writes when an attempt ends the job for good (failed, or stopped)."""
    job.ended_at = job.ended_at or now()
    job.set_status(JobStatus(status), pipeline=pipeline)
    pipeline.hset(job.key, "ended_at", utcformat(job.ended_at))
    queue_meta(pipeline, job)
    job.failed_job_registry.add(job, ttl=job.failure_ttl, exc_string=exc_string, pipeline=pipeline)
    Result.create_failure(job, job.failure_ttl, exc_string=exc_string, worker_name=worker_name, pipeline=pipeline,
                          execution_id=execution.id if execution else None,
                          execution_started_at=execution.created_at if execution else None,
                          execution_ended_at=job.ended_at)


def queue_forget_execution(pipeline: Pipeline, job: Job, execution_id: str) -> None:
    """Queue the removal of an execution of `job` (its record, its place in the started registry), in a
    transaction (MULTI) as well as a script call: RQ's own calls (runner.rq_seam.macros.queue_forget, the same
    writes as one command, is for script calls)."""
    Execution(execution_id, job.id, connection=job.connection).delete(job=job, pipeline=pipeline)
