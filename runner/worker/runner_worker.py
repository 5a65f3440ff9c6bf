"""The worker `python -m runner worker` runs: RQ's loop, made safe to kill and cheap per job.

- Jobs are claimed into the worker's claim list (runner.worker.claims), short ones a few at a
  time, and taken by runner.worker.taking; an idle worker waits on a wake-up token.
- Jobs run in this long-lived process, one after another, watched by a thread (heartbeats, grace
  period: runner.worker.in_process); jobs of `async def` and `threads=True` functions run many at
  once, up to `slots` (runner.worker.in_flight). The process above contains crashes and hangs
  (runner.worker.process_supervisor).
- Each start and end is one script call (runner.rq_seam.worker) carrying the attempt's history
  into the journal (runner.worker.attempts); the fleet's chores run between jobs and in threads
  (runner.worker.duties: recovery, projector, schedules, flows).
- SIGTERM: no new job; jobs running may finish within `grace_seconds`, else they go back to the
  front of their queues, uncounted. A second SIGTERM does that at once. Redis going away does not
  end the worker: it reconnects, saying so once per retry (runner.worker.redis_outage).
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import suppress
from functools import cached_property
from typing import Any

from redis.client import Pipeline
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.utils import now
from rq.worker import WorkerStatus

from runner.config import DEFAULT_WORKER_DEAD_AFTER_SECONDS, DEFAULT_WORKER_GRACE_SECONDS, DEFAULT_WORKER_SLOTS
from runner.redis_connection import REDIS_ERRORS
from runner.rq_seam.keys import DEAD_AFTER_FIELD, WORKER_SLOTS_BUSY_FIELD, WORKER_SLOTS_FIELD
from runner.rq_seam.registration import beat_or_register_again
from runner.rq_seam.worker import AfterSent, CanceledBeforeStart, SeamWorker
from runner.services.backends import Backends
from runner.store.sql_store import Store
from runner.worker import attempts
from runner.worker.claims import forget_claimant, register_claimant, release_claim, return_claims
from runner.worker.duties import Duties
from runner.worker.execution import begins_at_start, hash_runs_in_slot, runs_in_slot
from runner.worker.in_flight import InFlight
from runner.worker.in_process import JobWatch
from runner.worker.redis_outage import RedisOutage
from runner.worker.taking import JobTaker

log = logging.getLogger(__name__)

# How long an idle worker blocks on Redis before it looks at its chores.
IDLE_WAKEUP_SECONDS = 2
IDLE_HEARTBEAT_SECONDS = 1.0
SUSPENSION_CHECK_SECONDS = 1.0
# Heartbeats go every third of the window and at most once a second.
MIN_DEAD_AFTER_SECONDS = 3.0


class RunnerWorker(SeamWorker):
    """Claims, in-process jobs, heartbeats, recovery duty, graceful stop and the journal's projector."""

    grace_seconds: float = DEFAULT_WORKER_GRACE_SECONDS
    store: Store | None = None
    # Set by runner.worker.run.build_worker: the connections the schedule ticker invokes through.
    backends: Backends | None = None
    # Set by runner.worker.run.build_worker: says when Redis is away, and when to try again.
    outage: RedisOutage
    _next_heartbeat: float = 0.0
    _next_idle_heartbeat: float = 0.0
    _next_suspension_check: float = 0.0
    # Jobs of async def and threads=True functions run at once (RUNNER_WORKER_SLOTS).
    slots: int = DEFAULT_WORKER_SLOTS
    # The jobs in flight (`in_flight`), once a job in a slot started here.
    in_flight_now: InFlight | None = None

    def supervise(self, *, dead_after: float = DEFAULT_WORKER_DEAD_AFTER_SECONDS,
                  grace_seconds: float = DEFAULT_WORKER_GRACE_SECONDS, slots: int = DEFAULT_WORKER_SLOTS) -> None:
        """Set the dead-worker window, the stop grace period and the slots for jobs run at once."""
        self.dead_after = max(MIN_DEAD_AFTER_SECONDS, dead_after)
        self.grace_seconds = grace_seconds
        self.slots = slots

    @property
    def heartbeat_seconds(self) -> float:
        """How often a busy worker proves it is alive."""
        return max(1.0, self.dead_after / 3)

    @cached_property
    def duties(self) -> Duties:
        """Recovery, scheduling and the projector, done between jobs and while one runs."""
        return Duties(self)

    @cached_property
    def watch(self) -> JobWatch:
        """The thread that watches the running job."""
        return JobWatch(self)

    @cached_property
    def taker(self) -> JobTaker:
        """The jobs this worker claimed, and how it takes the next."""
        return JobTaker(self)

    @property
    def in_flight(self) -> InFlight:
        """The jobs of async def and threads=True functions this worker runs at once."""
        if self.in_flight_now is None:
            self.in_flight_now = InFlight(self, self.slots)
        return self.in_flight_now

    @property
    def running_job(self) -> Job | None:
        """The job being run now, if any."""
        return self.watch.job

    # Registration and heartbeats

    def register_birth(self) -> None:
        super().register_birth()  # type: ignore[no-untyped-call]
        with self.connection.pipeline() as pipeline:
            pipeline.hset(self.key, mapping={DEAD_AFTER_FIELD: self.dead_after, WORKER_SLOTS_FIELD: self.slots,
                                             WORKER_SLOTS_BUSY_FIELD: 0})
            register_claimant(pipeline, self.name)
            pipeline.execute()
        self.duties.start_threads()

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        if pipeline is not None:
            super().heartbeat(timeout, pipeline)
            return
        if timeout is None and time.monotonic() < self._next_idle_heartbeat:
            return  # RQ beats after every job; once a second is plenty (the key lives for minutes)
        self._next_idle_heartbeat = time.monotonic() + IDLE_HEARTBEAT_SECONDS
        self.last_heartbeat = beat_at = now()
        try:
            if beat_or_register_again(self, beat_at, timeout or self.worker_ttl + 60, self.worker_ttl + 60):
                register_claimant(self.connection, self.name)
                log.warning("worker %s had been presumed dead by its peers: registered again", self.name)
        except REDIS_ERRORS as exc:  # the loop that takes jobs says Redis is away, once per retry
            log.debug("worker %s: heartbeat not sent, Redis is unavailable (%s)", self.name, exc)

    def get_heartbeat_ttl(self, job: Job) -> int:
        return max(int(super().get_heartbeat_ttl(job)), int(self.dead_after) + 60)

    def maintain_heartbeats(self, job: Job) -> None:
        # Called by the watch thread every tick while a job runs.
        self.watch.check_grace_period()
        if time.monotonic() >= self._next_heartbeat:
            try:
                super().set_current_job_working_time(self.current_job_working_time)
                super().maintain_heartbeats(job)
                self._next_heartbeat = time.monotonic() + self.heartbeat_seconds
                self.outage.answered()
            except REDIS_ERRORS as exc:  # tried again within a heartbeat interval, so peers hear from us in time
                self._next_heartbeat = time.monotonic() + self.outage.failed(exc, most=self.heartbeat_seconds)
        self.duties.run()

    def set_current_job_working_time(self, current_job_working_time: float, pipeline: Any = None) -> None:
        self.current_job_working_time = current_job_working_time
        if pipeline is not None or not current_job_working_time:
            # Running totals travel with the heartbeats; the reset at the end is written at once.
            with suppress(*REDIS_ERRORS):
                super().set_current_job_working_time(current_job_working_time, pipeline)

    # Taking jobs

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        self.procline("Listening on " + ",".join(self.queue_names()))  # type: ignore[no-untyped-call]
        return self.taker.take(timeout, max_idle_time)

    def lost_track_of_claims(self) -> None:
        """After a lost connection: claims are read again from Redis; the held end is dropped."""
        self.taker.lost_track()
        self._held = None  # its job is still started in Redis: recovered (and retried) if never finished

    def check_for_suspension(self, burst: bool) -> None:
        # RQ asks before every job; a suspension taking effect within a second is soon enough.
        if time.monotonic() < self._next_suspension_check:
            return
        self._next_suspension_check = time.monotonic() + SUSPENSION_CHECK_SECONDS
        try:
            super().check_for_suspension(burst)
        except REDIS_ERRORS as exc:  # said by the loop that takes jobs
            log.debug("worker %s: cannot check for suspension, Redis is unavailable (%s)", self.name, exc)

    # Running jobs

    def execute_job(self, job: Job, queue: Queue) -> None:
        if self.stop_requested:
            # The stop came between dequeue and start: the job goes back (or peers return it after we exit).
            with suppress(*REDIS_ERRORS):
                self.send_held()
                return_claims(self.connection, self.name)
            self.taker.ahead.clear()
            return
        began = time.monotonic()
        try:
            if runs_in_slot(job):  # with the jobs claimed after it that run in slots too: one start
                more = self.taker.take_ahead(self.in_flight.room - 1, hash_runs_in_slot)
                for canceled in self.in_flight.start([(job, queue), *more]):
                    self._not_started(canceled)
                return
            with self.watch.watching(job):
                super().execute_job(job, queue)
        except CanceledBeforeStart:
            self._not_started(job)
            self.set_state(WorkerStatus.IDLE)
        except REDIS_ERRORS as exc:
            # The job stays claimed or registered as started: it is resumed, or recovered by a peer.
            log.error("worker %s: lost Redis around job %s (%s)", self.name, job.id, exc)
            self.lost_track_of_claims()
        finally:
            self.taker.job_took(time.monotonic() - began)

    def _not_started(self, job: Job) -> None:
        with suppress(*REDIS_ERRORS):
            release_claim(self.connection, self.name, job.id)
        self.log.info("Worker %s: job %s was canceled before it started; not run", self.name, job.id)

    # Hooks of SeamWorker: what an attempt writes besides RQ's bookkeeping

    def begin(self, job: Job, pipeline: Pipeline) -> AfterSent:
        release_claim(pipeline, self.name, job.id)
        if not getattr(job, "in_slot", 0):
            self._next_heartbeat = time.monotonic() + self.heartbeat_seconds
        if not attempts.is_invocation(job) or not begins_at_start(job):
            return super().begin(job, pipeline)
        job.attempt_begun = True  # type: ignore[attr-defined]
        return attempts.queue_begin(pipeline, job, self.connection)

    def fields_at_start(self, job: Job) -> dict[str, int]:
        ordinal = getattr(job, "in_slot", 0)  # the slots taken by the jobs started with it, counted
        return {WORKER_SLOTS_BUSY_FIELD: min(self.slots, self.in_flight.busy + ordinal)} if ordinal else {}

    def succeed(self, job: Job, pipeline: Pipeline) -> AfterSent:
        return attempts.queue_success(pipeline, job, self.connection)

    def end_unsuccessfully(self, job: Job, queue: Queue, pipeline: Pipeline, exc_string: str, *,
                           stopped: bool, execution: Execution | None) -> AfterSent:
        return attempts.queue_unsuccessful(pipeline, job, queue, self.connection, exc_string, stopped=stopped,
                                           worker_name=self.name, execution=execution)

    def defer(self, job: Job, queue: Queue, pipeline: Pipeline, delay_seconds: int) -> AfterSent:
        return attempts.queue_deferral(pipeline, job, queue, self.connection, delay_seconds)

    # Maintenance between jobs: the recovery duty, every few seconds

    @property
    def dequeue_timeout(self) -> int:
        return IDLE_WAKEUP_SECONDS

    @property
    def should_run_maintenance_tasks(self) -> bool:
        return not self.deferring_start and (self.duties.due or bool(super().should_run_maintenance_tasks))

    def run_maintenance_tasks(self) -> None:
        self.duties.run()
        if super().should_run_maintenance_tasks:  # RQ's own chores (registry cleanup), every ten minutes
            try:
                super().run_maintenance_tasks()  # type: ignore[no-untyped-call]
            except REDIS_ERRORS as exc:  # said by the loop that takes jobs
                log.debug("worker %s: RQ maintenance skipped, Redis is unavailable (%s)", self.name, exc)

    # Stopping

    def stop_requested_now(self) -> None:
        self.watch.start_grace_period(self.grace_seconds)
        job = self.running_job
        in_flight = self.in_flight_now.busy if self.in_flight_now is not None else 0
        if job is not None or in_flight:
            what = f"job {job.id}" if job is not None else f"{in_flight} job(s) in flight"
            self.log.info("Worker %s: finishing %s (at most %g s), then exiting", self.name, what, self.grace_seconds)
            with suppress(*REDIS_ERRORS):
                self.note_stop_requested()

    def second_stop_requested(self) -> None:
        self.watch.stop_now("a second stop signal arrived")

    def interrupt_job(self) -> None:
        self.watch.interrupt(self.stopped_job_id)

    def stop_in_flight(self, job_id: str) -> bool:
        return self.in_flight_now is not None and self.in_flight_now.stop(job_id)

    def teardown(self) -> None:
        if self.in_flight_now is not None:  # within the grace period when stopping, else until they end
            self.in_flight_now.drain(self.watch.grace_deadline)
            self.in_flight_now.close()
        if self.scheduler:
            self.stop_scheduler()  # type: ignore[no-untyped-call]
        with suppress(*REDIS_ERRORS):
            self.send_held()
            return_claims(self.connection, self.name)  # jobs claimed ahead and never started
        self.duties.stop_threads()
        with suppress(*REDIS_ERRORS):
            self.register_death()  # type: ignore[no-untyped-call]
            forget_claimant(self.connection, self.name)
        with suppress(*REDIS_ERRORS):
            self.unsubscribe()  # type: ignore[no-untyped-call]

    def exit_now(self) -> None:
        """End the process from the watch thread (the job may still hold the main thread), after goodbyes."""
        with suppress(Exception):
            if self.in_flight_now is not None:
                self.in_flight_now.put_back_all()
            self.teardown()
        logging.shutdown()
        os._exit(0)
