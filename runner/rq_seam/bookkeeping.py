"""RQ's per-job bookkeeping in one Redis round trip to start a job, and none of its own to finish it.

RQ's own worker sends the start in two round trips (its parent's, then its horse's), and
the success in a WATCH transaction kept for job dependencies, which runner jobs never use.
Here each is one pipeline, and whoever adds to a job's start or end (the attempt count, the
SQL row's journal entry, metrics) queues its writes into that pipeline through two hooks,
`begin_attempt` and `end_successful_attempt`, instead of paying a round trip of its own.
A success is held and sent with the worker's next move: the next job's start when that job is
already claimed (jobs are claimed a few at a time), else the claim that looks for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import redis
from redis.client import Pipeline
from rq.executions import Execution
from rq.job import Job, JobStatus, _job_stack
from rq.queue import Queue
from rq.registry import StartedJobRegistry
from rq.results import Result
from rq.utils import now, utcformat
from rq.worker import BaseWorker, WorkerStatus

from runner.config import DEFAULT_WORKER_DEAD_AFTER_SECONDS
from runner.rq_seam.scripts import execute_as_script, skip_rest_if
from runner.worker.claims import release_claim
from runner.worker.liveness import DEAD_AFTER_FIELD

AfterExecute = Callable[[], None]


def _nothing() -> None:
    return None


def _send(connection: redis.Redis, pipeline: Pipeline, after: AfterExecute) -> None:
    execute_as_script(connection, pipeline)
    after()


class CanceledBeforeStart(Exception):  # noqa: N818 (a state, not a failure)
    """The job was canceled after this worker claimed it and before it started: it must not run."""


class RunnerJob(Job):
    """An RQ job whose key is made persistent in the pipeline that starts it (RQ's `perform` spends a round trip)."""

    persisted_at_start = False

    def perform(self) -> Any:  # noqa: D102 (RQ's, minus the PERSIST sent with prepare_execution)
        if not self.persisted_at_start:
            return super().perform()
        _job_stack.push(self)
        try:
            self._result = self._execute()
        finally:
            assert self is _job_stack.pop()
        return self._result

    def _handle_success(self, result_ttl: int, pipeline: Pipeline, worker_name: str = "",
                        execution_id: str | None = None, execution_started_at: datetime | None = None,
                        execution_ended_at: datetime | None = None) -> None:
        # RQ saves every field of the job here, its payload compressed anew; since the start
        # saved them, only these three changed (RQ's rule kept: the user's meta is not touched).
        self._status = JobStatus.FINISHED
        assert self.ended_at is not None and self.last_heartbeat is not None
        pipeline.hset(self.key, mapping={"status": JobStatus.FINISHED.value, "ended_at": utcformat(self.ended_at),
                                         "last_heartbeat": utcformat(self.last_heartbeat)})
        Result.create(self, Result.Type.SUCCESSFUL, return_value=self._result, ttl=result_ttl,
                      worker_name=worker_name, pipeline=pipeline, execution_id=execution_id,
                      execution_started_at=execution_started_at, execution_ended_at=execution_ended_at)
        if result_ttl != 0:
            self.finished_job_registry.add(self, result_ttl, pipeline)


class PipelinedBookkeepingMixin(BaseWorker):
    """Starts and finishes each job in one round trip apiece."""

    job_class = RunnerJob
    # Our `finished` lifecycle event logs each job's end; RQ's extra line per job is not needed.
    log_result_lifespan = False

    dead_after: float = DEFAULT_WORKER_DEAD_AFTER_SECONDS
    _next_heartbeat: float = 0.0
    # A finished job's pipeline, held to go out with the next job's start (see handle_job_success).
    _held: tuple[Pipeline, AfterExecute] | None = None

    @property
    def heartbeat_seconds(self) -> float:
        """How often a busy worker proves it is alive."""
        return max(1.0, self.dead_after / 3)

    def begin_attempt(self, job: Job, pipeline: Pipeline) -> AfterExecute:
        """Queue what else starts with `job`; return what to do once the pipeline has executed."""
        return _nothing

    def end_successful_attempt(self, job: Job, pipeline: Pipeline) -> AfterExecute:
        """Queue what else ends with `job`'s success; return what to do once the pipeline has executed."""
        return _nothing

    def send_held(self) -> None:
        """Send a finished job's held pipeline now (before waiting, stopping or failing)."""
        held, self._held = self._held, None
        if held is not None:
            _send(self.connection, *held)

    def take_held(self) -> tuple[Pipeline, AfterExecute] | None:
        """The held end of the last job, for the caller to send with its own commands (then call its after)."""
        held, self._held = self._held, None
        return held

    def prepare_execution(self, job: Job) -> Execution:
        # One transaction moves the job from this worker's claim list to the started registry,
        # and does what RQ's prepare_job_execution would do in a round trip of its own.
        ttl = self.get_heartbeat_ttl(job)
        held, self._held = self._held, None
        with held[0] if held else self.connection.pipeline() as pipeline:
            # Canceled since it was claimed (claimed ahead with another job): the last job's end
            # still goes, this job's start does not.
            skip_rest_if(pipeline, job.key, "status", JobStatus.CANCELED.value)
            execution = Execution.create(job, ttl, pipeline=pipeline, worker_name=self.name)
            pipeline.hset(execution.key, DEAD_AFTER_FIELD, self.dead_after)
            release_claim(pipeline, self.name, job.id)
            # What RQ's set_state, set_current_job_id, set_current_job_working_time and heartbeat
            # write, as one command; job.prepare_for_execution sets the job's heartbeat too.
            self._state = WorkerStatus.BUSY
            self.current_job_working_time = 0
            self.last_heartbeat = now()
            pipeline.hset(self.key, mapping={"state": WorkerStatus.BUSY.value, "current_job": job.id,
                                             "current_job_working_time": 0,
                                             "last_heartbeat": utcformat(self.last_heartbeat)})
            pipeline.expire(self.key, ttl)
            job.prepare_for_execution(self.name, pipeline=pipeline)
            if isinstance(job, RunnerJob):
                pipeline.persist(job.key)  # what Job.perform would do on its own
                job.persisted_at_start = True
            after = self.begin_attempt(job, pipeline)
            started = execute_as_script(self.connection, pipeline)
        if held:
            held[1]()
        if not started:
            raise CanceledBeforeStart(job.id)
        self.execution = execution
        after()
        self._next_heartbeat = time.monotonic() + self.heartbeat_seconds
        return self.execution

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        # Sent with prepare_execution; runner workers never use RQ's intermediate queue.
        self.procline(f"Processing {job.func_name} from {job.origin} since {time.time()}")  # type: ignore[no-untyped-call]

    def handle_execution_ended(self, job: Job, queue: Queue, heartbeat_ttl: int) -> None:
        # RQ heartbeats the job here in a round trip of its own; the pipeline that records the
        # end (success or failure) saves the job with this heartbeat anyway.
        job.ended_at = job.last_heartbeat = now()

    def handle_job_success(self, job: Job, queue: Queue, started_job_registry: StartedJobRegistry) -> None:
        assert job.started_at is not None and job.ended_at is not None
        result_ttl = job.get_result_ttl(self.default_result_ttl)
        self.send_held()
        pipeline = self.connection.pipeline()
        try:
            self.increment_successful_job_count(pipeline=pipeline)
            self.increment_total_working_time(job.ended_at - job.started_at, pipeline)
            if result_ttl != 0:
                execution = self.execution
                job._handle_success(
                    result_ttl,
                    pipeline=pipeline,
                    worker_name=self.name,
                    execution_id=execution.id if execution else None,
                    execution_started_at=execution.created_at if execution else None,
                    execution_ended_at=job.ended_at,
                )
            if result_ttl > 0:  # RQ's job.cleanup also expires dependency keys, which runner jobs never have
                pipeline.expire(job.key, result_ttl)
            else:
                job.cleanup(result_ttl, pipeline=pipeline, remove_from_queue=False)
            self.cleanup_execution(job, pipeline=pipeline)
            self.set_state(WorkerStatus.IDLE, pipeline=pipeline)
            after = self.end_successful_attempt(job, pipeline)
        except BaseException:
            pipeline.reset()
            raise
        # Held for the worker's next move, moments away: the next job's start when it is already
        # claimed, else the claim of the next job (runner.worker.supervision). One round trip for both.
        self._held = (pipeline, after)
        self.log.debug("Successfully completed job %s in %ss on worker %s", job.id, job.ended_at - job.started_at,
                       self.name)

    def set_state(self, state: str, pipeline: Pipeline | None = None) -> None:
        # A state the worker is known to have is not written again (RQ writes `idle` after every job).
        if pipeline is None and state == self._state == WorkerStatus.IDLE:
            return
        super().set_state(state, pipeline)
