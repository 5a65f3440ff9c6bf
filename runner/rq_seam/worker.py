"""The runner's base RQ worker: RQ's work loop, with each job's start and end in one script call.

RQ's worker sends a job's start in two round trips and its end in a WATCH transaction kept for
job dependencies, which runner jobs never use. Here each is one script call
(runner.rq_seam.bookkeeping), and the subclass adds its own writes to it through three hooks,
`begin` (start), `succeed` and `end_unsuccessfully`, each queuing commands and returning what to
do once they ran, told whether they did (the fence). A success is held and sent with the
worker's next move: the next job's start when that job is already claimed, else the claim that
looks for it (the subclass calls `take_held`).

Every method of RQ's worker the runner overrides, and why (tests/unit/test_rq_seam.py checks
this list against the classes). Here:
- prepare_execution: the start in one script call, guarded (canceled since claimed, fence); our
  writes join it.
- prepare_job_execution: what it sends goes with prepare_execution; claims replace RQ's
  intermediate queue.
- handle_execution_ended: RQ heartbeats the job in a round trip of its own; the end saves it anyway.
- handle_job_success: the end in one script call, held for the next move, fenced.
- handle_job_failure: a retry, failure or stop in one script call with its history, fenced.
- handle_job_retry: a job that returns Retry (a function waiting for a concurrency slot) goes
  back uncounted.
- set_state: RQ writes `idle` after every job; a known state is not written again.
- request_stop, request_force_stop: a graceful stop finishes within the grace period, then
  requeues uncounted (these two and the next two in runner.rq_seam.stopping).
- handle_payload: the stop-job command names one of the jobs in flight (`stop_in_flight`), which RQ's
  handler, knowing one current job only, would ignore.
- kill_horse: the stop-job command interrupts the job in this process (there is no work horse).
- _start_scheduler: RQ's (in runner.rq_seam.scheduler_start.SchedulerStartingWorker), with a
  scheduler whose process ends quietly when Redis goes away (runner.rq_seam.scheduler_guard.RunnerScheduler);
  with `first_claim_first` (a pool's work process, forked for a job that waits), started after the
  first claim (`start_deferred_scheduler`).
- _pubsub_exception_handler: RQ logs an error every 2 s while Redis is away; the worker says it
  once per retry (runner.worker.redis_outage), so this one retries quietly.

And in runner.worker.runner_worker.RunnerWorker:
- register_birth: writes the dead-worker window next to the heartbeats; registers for claims.
- heartbeat, get_heartbeat_ttl, maintain_heartbeats, set_current_job_working_time: heartbeats
  every third of the dead-worker window, once a second at most.
- dequeue_job_and_maintain_ttl: claims (a killed worker loses no job), wake-up tokens, several
  short jobs per claim.
- execute_job: runs the job in this process, watched by a thread (heartbeats, grace, stop).
- check_for_suspension: RQ asks before every job; once a second is soon enough.
- run_maintenance_tasks, should_run_maintenance_tasks, dequeue_timeout: the recovery duty on
  every idle pass.
- teardown: returns jobs claimed ahead, stops the journal's projector.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.client import Pipeline, PubSub, PubSubWorkerThread
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.registry import StartedJobRegistry
from rq.utils import now
from rq.worker import WorkerStatus

from runner.rq_seam.bookkeeping import (
    RunnerJob,
    guarded_by_fence,
    queue_finish,
    queue_start,
    queue_worker_busy,
    start_guard,
)
from runner.rq_seam.macros import queue_forget
from runner.rq_seam.scripts import execute_as_script, script_pipeline
from runner.rq_seam.stopping import StoppingWorker

log = logging.getLogger(__name__)

# What to do once a job's commands were sent, told whether its guard held (the fence).
AfterSent = Callable[[bool], None]
# How long RQ's pubsub thread waits before it tries Redis again (RQ's own figure).
PUBSUB_RETRY_SECONDS = 2.0


def _nothing(_held: bool) -> None:
    return None


class CanceledBeforeStart(Exception):  # noqa: N818 (a state, not a failure)
    """The job was canceled after this worker claimed it and before it started: it must not run."""


class SeamWorker(StoppingWorker):
    """RQ's in-process worker with one script call per start and per end, and hooks for its subclass."""

    job_class = RunnerJob
    # The subclass's `finished` lifecycle event logs each job's end; RQ's extra line per job is not needed.
    log_result_lifespan = False
    # Recorded in each execution's hash (runner.worker.liveness).
    dead_after: float = 15.0
    # A finished job's commands, held to go out with the worker's next move (see take_held).
    _held: tuple[Pipeline, AfterSent] | None = None

    # Hooks for the subclass

    def begin(self, job: Job, pipeline: Pipeline) -> AfterSent:
        """Queue what else starts with `job` (inside its start's guard); what to do once sent."""
        return _nothing

    def fields_at_start(self, job: Job) -> dict[str, int]:
        """Fields of the worker's hash to write with RQ's when `job`, the last of the jobs started together, starts."""
        return {}

    def succeed(self, job: Job, pipeline: Pipeline) -> AfterSent:
        """Queue what else ends with `job`'s success (inside its fence's guard); what to do once sent."""
        return _nothing

    def end_unsuccessfully(self, job: Job, queue: Queue, pipeline: Pipeline, exc_string: str, *,
                           stopped: bool, execution: Execution | None) -> AfterSent:
        """Queue RQ's bookkeeping and ours for an attempt that raised or was stopped (inside the
        fence's guard); what to do once sent."""
        raise NotImplementedError

    def defer(self, job: Job, queue: Queue, pipeline: Pipeline, delay_seconds: int) -> AfterSent:
        """Queue putting `job` back for `delay_seconds`, its attempt uncounted (inside the fence's guard)."""
        raise NotImplementedError

    # RQ's private state, read through names of ours

    @property
    def ordered_queues(self) -> list[Queue]:
        """The queues in the order the worker serves them now."""
        return list(self._ordered_queues)

    # The held end

    def take_held(self) -> tuple[Pipeline, AfterSent] | None:
        """The held end of the last job, for the caller to send with its own commands (then call its after)."""
        held, self._held = self._held, None
        return held

    def send_held(self) -> None:
        """Send a finished job's held end now (before waiting, stopping or failing)."""
        held = self.take_held()
        if held is not None:
            guards = execute_as_script(self.connection, held[0])
            held[1](all(guards))

    # Overrides (see the table above)

    def prepare_execution(self, job: Job) -> Execution:
        execution = self.prepare_executions([job])[0]
        if execution is None:
            raise CanceledBeforeStart(job.id)
        self.execution = execution
        return execution

    def prepare_executions(self, jobs: list[Job]) -> list[Execution | None]:
        """Start `jobs` in one script call, with the held end if any: each one's execution, or None for a
        job canceled since it was claimed (not started)."""
        held = self.take_held()
        with held[0] if held else script_pipeline(self.connection) as pipeline:
            ends_held = len(pipeline.command_stack) > 0
            starts: list[tuple[Execution, AfterSent]] = []
            for job in jobs:
                fence = getattr(job, "fence", 0) + 1
                heartbeat_ttl = self.get_heartbeat_ttl(job)
                with start_guard(pipeline, job, fence):
                    execution = queue_start(pipeline, job, worker_name=self.name, fence=fence,
                                            heartbeat_ttl=heartbeat_ttl, dead_after=self.dead_after)
                    job.fence = fence  # type: ignore[attr-defined]
                    if job is jobs[-1]:  # what each start would write, written once: the last one's
                        queue_worker_busy(pipeline, self, job, heartbeat_ttl, self.fields_at_start(job))
                    starts.append((execution, self.begin(job, pipeline)))
            guards = execute_as_script(self.connection, pipeline)
        if held:
            held[1](guards[0] if ends_held else True)
        executions: list[Execution | None] = []
        for (execution, after), started in zip(starts, guards[1:] if ends_held else guards, strict=True):
            executions.append(execution if started else None)
            if started:
                after(True)
        return executions

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        self.procline(f"Processing {job.func_name} from {job.origin} since {time.time()}")  # type: ignore[no-untyped-call]

    def handle_execution_ended(self, job: Job, queue: Queue, heartbeat_ttl: int) -> None:
        job.ended_at = job.last_heartbeat = now()

    def handle_job_success(self, job: Job, queue: Queue, started_job_registry: StartedJobRegistry) -> None:
        self.send_held()
        pipeline = script_pipeline(self.connection)
        try:
            after = self.queue_success_end(pipeline, job, self.execution)
        except BaseException:
            pipeline.reset()
            raise
        # Held for the worker's next move, moments away: the next job's start when it is already
        # claimed, else the claim of the next job. One round trip for both.
        self._held = (pipeline, after)

    def handle_job_failure(self, job: Job, queue: Queue, started_job_registry: StartedJobRegistry | None = None,
                           exc_string: str = "") -> None:
        self.send_held()
        stopped = self._stopped_job_id == job.id
        if stopped:
            self._stopped_job_id = None
        with script_pipeline(self.connection) as pipeline:
            after = self.queue_failure_end(pipeline, job, queue, self.execution, exc_string, stopped=stopped)
            guards = execute_as_script(self.connection, pipeline)
        after(all(guards))

    def handle_job_retry(self, job: Job, queue: Queue, retry: Any, started_job_registry: StartedJobRegistry,
                         execution: Execution) -> None:
        self.send_held()
        with script_pipeline(self.connection) as pipeline:
            after = self.queue_retry_end(pipeline, job, queue, execution, retry)
            guards = execute_as_script(self.connection, pipeline)
        after(all(guards))

    # Ends, for the job this worker runs in its main thread (`execution` is self.execution) and for the
    # jobs it runs many at once (runner.worker.in_flight): each queues one fenced section.

    def queue_success_end(self, pipeline: Pipeline, job: Job, execution: Execution | None) -> AfterSent:
        """Queue the end of `job`'s successful `execution`, fenced; what to do once sent."""
        with guarded_by_fence(pipeline, job, getattr(job, "fence", 0)):
            queue_finish(pipeline, self, job, result_ttl=job.get_result_ttl(self.default_result_ttl),
                         execution=execution)
            self._forget_execution(pipeline, job, execution)
            return self.succeed(job, pipeline)

    def queue_failure_end(self, pipeline: Pipeline, job: Job, queue: Queue, execution: Execution | None,
                          exc_string: str, *, stopped: bool) -> AfterSent:
        """Queue the end of `job`'s `execution` that raised or was stopped (retried, failed or stopped), fenced."""
        with guarded_by_fence(pipeline, job, getattr(job, "fence", 0)):
            # What RQ's handle_job_failure counts and cleans up, for any outcome.
            self.increment_failed_job_count(pipeline)
            if job.started_at and job.ended_at:
                self.increment_total_working_time(job.ended_at - job.started_at, pipeline)
            self._forget_execution(pipeline, job, execution)
            return self.end_unsuccessfully(job, queue, pipeline, exc_string, stopped=stopped, execution=execution)

    def queue_retry_end(self, pipeline: Pipeline, job: Job, queue: Queue, execution: Execution | None,
                        retry: Any) -> AfterSent:
        """Queue putting back `job`, whose `execution` returned Retry (uncounted), fenced."""
        delay = int(retry.intervals[0]) if retry.intervals else 0
        with guarded_by_fence(pipeline, job, getattr(job, "fence", 0)):
            self._forget_execution(pipeline, job, execution)
            return self.defer(job, queue, pipeline, delay)

    def _forget_execution(self, pipeline: Pipeline, job: Job, execution: Execution | None) -> None:
        if execution is not None and execution is not self.execution:
            queue_forget(pipeline, job, execution)  # one of the jobs in flight: the worker's state stays
            return
        self.cleanup_execution(job, pipeline=pipeline)
        self.set_state(WorkerStatus.IDLE, pipeline=pipeline)

    def set_state(self, state: str, pipeline: Pipeline | None = None) -> None:
        # A state the worker is known to have is not written again (RQ writes `idle` after every job).
        if pipeline is None and state == self.get_state() == WorkerStatus.IDLE:
            return
        super().set_state(state, pipeline)

    def _pubsub_exception_handler(self, exc: Exception, pubsub: PubSub, pubsub_thread: PubSubWorkerThread) -> None:
        if not isinstance(exc, redis.exceptions.ConnectionError):
            super()._pubsub_exception_handler(exc, pubsub, pubsub_thread)
            return
        log.debug("worker %s: pubsub thread lost Redis (%s); retrying", self.name, exc)
        time.sleep(PUBSUB_RETRY_SECONDS)
