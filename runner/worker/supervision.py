"""What makes a runner worker safe to kill: claims, short heartbeats, recovery duty, graceful stop.

- Dequeue moves each job into the worker's claim list (runner.worker.claims), never only into memory.
- The worker heartbeats every third of `dead_after` (RUNNER_WORKER_DEAD_AFTER_SECONDS), and
  writes that window next to its heartbeats so that peers judge it by it (runner.worker.liveness).
- Between jobs and while it watches its own job, it recovers the jobs of dead workers
  (runner.worker.recovery), revives scheduling (runner.worker.scheduler_guard) and repairs SQL rows a dead
  worker left behind (runner.journal.store_repair).
- SIGTERM: take no new job, finish the current one within `grace_seconds`
  (RUNNER_WORKER_GRACE_SECONDS), else kill it and put it back at the front of its queue,
  without counting the attempt. A second SIGTERM does that at once.
- Redis going away does not end the worker: it keeps its job running and reconnects.
- Its work horse and scheduler die with it (runner.worker.process_ties).
"""

from __future__ import annotations

import logging
import signal
import time
from collections import deque
from contextlib import suppress
from types import FrameType
from typing import Any

from redis.client import Pipeline
from rq.exceptions import DeserializationError, NoSuchJobError
from rq.job import Job
from rq.queue import Queue
from rq.utils import now, utcformat
from rq.worker import WorkerStatus
from rq.worker_registration import register as register_worker_key

from runner.config import DEFAULT_WORKER_DEAD_AFTER_SECONDS, DEFAULT_WORKER_GRACE_SECONDS
from runner.errors import BackendUnavailable
from runner.journal.new_rows import settle_journaled_rows
from runner.journal.reconcile import has_pending_writes, replay_pending_writes
from runner.journal.store_repair import repair_stale_rows
from runner.rq_seam.bookkeeping import CanceledBeforeStart, PipelinedBookkeepingMixin
from runner.rq_seam.queues import queue_for
from runner.services.backends import REDIS_ERRORS
from runner.store.sql_store import Store
from runner.worker.claims import (
    claim_and_read,
    forget_claimant,
    pending_claim,
    queue_claim_and_read,
    read_claimed,
    register_claimant,
    release_claim,
    return_claims,
    wait_for_wake_up,
)
from runner.worker.liveness import DEAD_AFTER_FIELD, Liveness
from runner.worker.recovery import WORKER_STOPPED_REASON, StartedEntry, recover_abandoned_jobs, recover_entry
from runner.worker.scheduler_guard import keep_scheduler_running

log = logging.getLogger(__name__)

# Longest wait of an idle worker for a wake-up token before it looks at its queues again.
WAKE_WAIT_SECONDS = 0.2
# How often a busy worker wakes to check heartbeats and its grace period.
MONITOR_TICK_SECONDS = 1
RECOVERY_INTERVAL_SECONDS = 3.0
IDLE_HEARTBEAT_SECONDS = 1.0
SUSPENSION_CHECK_SECONDS = 1.0
# Longest wait between attempts to reach Redis again (short: workers resume soon after Redis does).
RECONNECT_MAX_SECONDS = 5.0
# Heartbeats go every third of the window and at most once a second.
MIN_DEAD_AFTER_SECONDS = 3.0
RECOVERY_PASS_KEY = "runner:recovery:pass:"
REPAIR_PASS_KEY = "runner:store-repair:pass"


class SupervisedWorkerMixin(PipelinedBookkeepingMixin):
    """Crash-safe dequeue, heartbeats, recovery duty and graceful stop for an RQ worker."""

    dead_after: float = DEFAULT_WORKER_DEAD_AFTER_SECONDS
    grace_seconds: float = DEFAULT_WORKER_GRACE_SECONDS
    store: Store | None = None
    _grace_deadline: float | None = None
    _next_recovery: float = 0.0
    _chores_due: float = 0.0
    _next_idle_heartbeat: float = 0.0
    _next_suspension_check: float = 0.0
    # How many jobs to claim at once (see claims.claim_and_read); runner.worker.in_process adapts it.
    claim_batch: int = 1
    _claimed_ahead_queue: deque[tuple[str, dict[bytes, bytes]]] | None = None
    _check_own_claims: bool = False
    _running_job: Job | None = None

    def supervise(self, *, dead_after: float, grace_seconds: float) -> None:
        """Set the dead-worker window and the stop grace period."""
        self.dead_after = max(MIN_DEAD_AFTER_SECONDS, dead_after)
        self.grace_seconds = grace_seconds

    # Registration and heartbeats

    def register_birth(self) -> None:
        super().register_birth()  # type: ignore[no-untyped-call]
        self.connection.hset(self.key, DEAD_AFTER_FIELD, self.dead_after)
        register_claimant(self.connection, self.name)

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        if pipeline is not None:
            super().heartbeat(timeout, pipeline)
            return
        if timeout is None and time.monotonic() < self._next_idle_heartbeat:
            return  # RQ beats after every job; once a second is plenty (the key lives for minutes)
        self._next_idle_heartbeat = time.monotonic() + IDLE_HEARTBEAT_SECONDS
        self.last_heartbeat = now()
        try:
            with self.connection.pipeline() as beat:
                beat.hset(self.key, "last_heartbeat", utcformat(self.last_heartbeat))
                beat.expire(self.key, timeout or self.worker_ttl + 60)
                created, _ = beat.execute()
            if created:
                self._register_again()
        except REDIS_ERRORS as exc:
            log.warning("worker %s: heartbeat not sent, Redis is unavailable (%s)", self.name, exc)

    def _register_again(self) -> None:
        # Peers unregister a worker they have not heard from; one that was only cut off comes back.
        with self.connection.pipeline() as pipeline:
            pipeline.hset(self.key, mapping={**self.serialize(), DEAD_AFTER_FIELD: self.dead_after})
            register_worker_key(self, pipeline)
            pipeline.expire(self.key, self.worker_ttl + 60)
            pipeline.execute()
        register_claimant(self.connection, self.name)
        log.warning("worker %s had been presumed dead by its peers: registered again", self.name)

    def get_heartbeat_ttl(self, job: Job) -> int:
        return max(int(super().get_heartbeat_ttl(job)), int(self.dead_after) + 60)

    def maintain_heartbeats(self, job: Job) -> None:
        # RQ calls this on each monitor tick (every MONITOR_TICK_SECONDS) while the horse runs.
        if self._grace_deadline is not None and time.monotonic() >= self._grace_deadline:
            self._stop_now(f"its job did not end within the {self.grace_seconds:g} s grace period")
        if time.monotonic() >= self._next_heartbeat:
            try:
                super().set_current_job_working_time(self.current_job_working_time)
                super().maintain_heartbeats(job)
                self._next_heartbeat = time.monotonic() + self.heartbeat_seconds  # else: again next tick
            except REDIS_ERRORS as exc:
                log.warning("worker %s: job heartbeat not sent, Redis is unavailable (%s)", self.name, exc)
        self.run_recovery_duty()

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
        idle_since = time.monotonic()
        reconnect_wait = 1.0
        while not self._stop_requested:
            try:
                if time.monotonic() >= self._chores_due:
                    self._chores_due = time.monotonic() + self.dequeue_timeout
                    self.set_state(WorkerStatus.IDLE)
                    self.heartbeat()
                    if self.should_run_maintenance_tasks:
                        self.run_maintenance_tasks()
                claimed = self._claim_job()
                if claimed is not None:
                    return claimed
                if timeout is None or (max_idle_time is not None and time.monotonic() - idle_since >= max_idle_time):
                    return None
                # Woken by the token pushed with each job; jobs pushed without one (RQ's own scheduler)
                # are seen within WAKE_WAIT_SECONDS.
                self.wait_for_work(min(WAKE_WAIT_SECONDS, max(0.001, self._chores_due - time.monotonic())))
            except REDIS_ERRORS as exc:
                log.error("worker %s: Redis is unavailable (%s); retrying in %g s", self.name, exc, reconnect_wait)
                self._lost_track_of_claims()
                time.sleep(reconnect_wait)
                reconnect_wait = min(reconnect_wait * 2, RECONNECT_MAX_SECONDS)
                continue
            reconnect_wait = 1.0
        return None

    def wait_for_work(self, seconds: float) -> None:
        """Block until a job may be waiting (a wake-up token) or `seconds` pass, and claim what waits then."""
        with self.connection.pipeline(transaction=False) as pipeline:
            self.queue_wait_and_claim(pipeline, seconds)
            replies = pipeline.execute(raise_on_error=False)
        self.take_claimed(replies[-1])

    def queue_wait_and_claim(self, pipeline: Pipeline, seconds: float) -> None:
        """Queue the wait, then a claim (read with `take_claimed`): Redis runs the claim the moment the
        wait ends, in the same round trip, instead of waiting for the worker to ask."""
        wait_for_wake_up(pipeline, self._ordered_queues, seconds)
        queue_claim_and_read(pipeline, self.connection, self._ordered_queues, self.name, self.claim_batch)

    def take_claimed(self, reply: Any) -> None:
        """Keep the jobs a queued claim took, to be started next (`_claim_job` takes them first)."""
        if isinstance(reply, Exception):  # the script was lost (Redis restarted): the next claim loads it
            log.info("worker %s: claim after the wait not run (%s); claiming again", self.name, reply)
            return
        _queue, claimed = read_claimed(reply, self._ordered_queues)
        self._claimed_ahead.extend(claimed)

    def before_claiming_with(self, held: Pipeline) -> None:
        """Called when a finished job's held pipeline is about to go out with a claim: add to it."""

    def _claim_job(self) -> tuple[Job, Queue] | None:
        pending = pending_claim(self.connection, self.name) if self._check_own_claims else None
        self._check_own_claims = pending is not None
        data: dict[bytes, bytes] | None = None
        if pending is None:
            if not self._claimed_ahead:
                held = self.take_held()  # the last job's end goes out with this claim
                if held:
                    self.before_claiming_with(held[0])
                _queue, claimed = claim_and_read(self.connection, self._ordered_queues, self.name, self.claim_batch,
                                                 before=held[0] if held else None)
                if held:
                    held[1]()
                self._claimed_ahead.extend(claimed)
                if not claimed:
                    return None
            job_id, data = self._claimed_ahead.popleft()
        else:
            self.send_held()
            job_id = pending
        try:
            if data is None:
                job = self.job_class.fetch(job_id, connection=self.connection, serializer=self.serializer)
            elif not data:
                raise NoSuchJobError(job_id)
            else:  # read with the claim: no round trip of its own
                job = self.job_class(job_id, connection=self.connection, serializer=self.serializer)
                job.restore(data)  # type: ignore[arg-type]
        except (NoSuchJobError, DeserializationError) as exc:
            release_claim(self.connection, self.name, job_id)
            log.error("worker %s: dropped job %s, which cannot be read (%s)", self.name, job_id, type(exc).__name__)
            return None
        queue = next((q for q in self.queues if q.name == job.origin), None) or queue_for(job.origin, self.connection)
        self.reorder_queues(reference_queue=queue)
        job.redis_server_version = self.get_redis_server_version()  # type: ignore[no-untyped-call]
        self.log.debug("Worker %s: %s: %s (%s)", self.name, queue.name, job.description, job.id)
        return job, queue

    @property
    def _claimed_ahead(self) -> deque[tuple[str, dict[bytes, bytes]]]:
        # Jobs claimed with an earlier one (claim_batch > 1), in order; they sit in the claim list too.
        if self._claimed_ahead_queue is None:
            self._claimed_ahead_queue = deque()
        return self._claimed_ahead_queue

    def _lost_track_of_claims(self) -> None:
        # After a lost connection, the claim list in Redis is the truth: take claims from there, one by one.
        self._check_own_claims = True
        self._claimed_ahead.clear()
        self._held = None  # its job is still started in Redis: recovered (and retried) if never finished

    def execute_job(self, job: Job, queue: Queue) -> None:
        if self._stop_requested:
            # The stop came between dequeue and start: the job goes back (or peers return it after we exit).
            with suppress(*REDIS_ERRORS):
                self.send_held()
                return_claims(self.connection, self.name)
            self._claimed_ahead.clear()
            return
        self._running_job = job
        try:
            super().execute_job(job, queue)
        except CanceledBeforeStart:
            with suppress(*REDIS_ERRORS):
                release_claim(self.connection, self.name, job.id)
            self.set_state(WorkerStatus.IDLE)
            self.log.info("Worker %s: job %s was canceled before it started; not run", self.name, job.id)
        except REDIS_ERRORS as exc:
            # The job stays claimed or registered as started: it is resumed, or recovered by a peer.
            log.error("worker %s: lost Redis around job %s (%s)", self.name, job.id, exc)
            self._lost_track_of_claims()
        finally:
            self._running_job = None

    def check_for_suspension(self, burst: bool) -> None:
        # RQ asks before every job; a suspension taking effect within a second is soon enough.
        if time.monotonic() < self._next_suspension_check:
            return
        self._next_suspension_check = time.monotonic() + SUSPENSION_CHECK_SECONDS
        try:
            super().check_for_suspension(burst)
        except REDIS_ERRORS as exc:
            log.warning("worker %s: cannot check for suspension, Redis is unavailable (%s)", self.name, exc)

    # Recovery duty

    def run_maintenance_tasks(self) -> None:
        self.run_recovery_duty()
        if super().should_run_maintenance_tasks:  # RQ's own chores (registry cleanup), every ten minutes
            try:
                super().run_maintenance_tasks()  # type: ignore[no-untyped-call]
            except REDIS_ERRORS as exc:
                log.warning("worker %s: RQ maintenance skipped, Redis is unavailable (%s)", self.name, exc)

    def run_recovery_duty(self) -> None:
        """Recover dead workers' jobs, keep scheduling alive and repair stale rows (rate-limited)."""
        if time.monotonic() < self._next_recovery:
            return
        self._next_recovery = time.monotonic() + min(RECOVERY_INTERVAL_SECONDS, self.heartbeat_seconds)
        queue_names = self.queue_names()
        # Peers serving the same queues take turns: about one pass a second between them.
        turn = RECOVERY_PASS_KEY + ",".join(sorted(queue_names))
        try:
            if not self.connection.set(turn, self.name, nx=True, px=1000):
                return
            liveness = Liveness.observe(self.connection, self.dead_after)
            # Our own job may look silent after a lost connection; it is running, not abandoned.
            running = {self.execution.id} if self._running_job is not None and self.execution else set()
            recover_abandoned_jobs(self.connection, queue_names, liveness, own_name=self.name, store=self.store,
                                   running=running)
            if not self._stop_requested:
                keep_scheduler_running(self, self.connection, liveness)
            if self.store is not None and self.connection.set(REPAIR_PASS_KEY, self.name, nx=True,
                                                                ex=max(1, int(self.dead_after))):
                # A row still `started` whose end waits in the deferred writes is not stale: replay
                # first (busy workers never reach the idle-time replay), and repair only once none
                # wait, or the repair would emit that job's end a second time.
                replay_pending_writes(self.store, self.connection)
                if not has_pending_writes(self.connection):
                    repair_stale_rows(self.store, self.connection, self.dead_after)
                # Rows an API process journaled and died before committing (runner.journal.new_rows).
                settle_journaled_rows(self.store, self.connection)
        except REDIS_ERRORS as exc:
            log.warning("worker %s: recovery pass skipped, Redis is unavailable (%s)", self.name, exc)
        except BackendUnavailable as exc:
            log.warning("worker %s: store repair skipped: %s", self.name, exc.message)

    # Stopping

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        self._shutdown_requested_date = now()
        self.handle_warm_shutdown_request()  # type: ignore[no-untyped-call]
        signal.signal(signal.SIGINT, self.request_force_stop)
        signal.signal(signal.SIGTERM, self.request_force_stop)
        self._stop_requested = True
        self._grace_deadline = time.monotonic() + self.grace_seconds
        if self._running_job is not None:
            self.log.info("Worker %s: finishing job %s (at most %g s), then exiting",
                          self.name, self._running_job.id, self.grace_seconds)
            with suppress(*REDIS_ERRORS):
                self.set_shutdown_requested_date()  # type: ignore[no-untyped-call]
        if self.scheduler:
            self.stop_scheduler()  # type: ignore[no-untyped-call]

    def request_force_stop(self, signum: int, frame: FrameType | None) -> None:
        if self._shutdown_requested_date and (now() - self._shutdown_requested_date).total_seconds() < 1:
            return  # the same stop, delivered twice (process group and pool)
        self._stop_now("a second stop signal arrived")

    def _stop_now(self, why: str) -> None:
        """End the current job, put it back at the front of its queue uncounted, and exit."""
        job, execution = self._running_job, self.execution
        if job is not None:
            self.log.warning("Worker %s: stopping now, %s: job %s goes back to its queue", self.name, why, job.id)
        self._end_running_job()
        if job is not None and execution is not None:
            entry = StartedEntry(job.origin, job.id, execution.id)
            try:
                recover_entry(self.connection, entry, store=self.store, reason=WORKER_STOPPED_REASON,
                              count_attempt=False)
            except REDIS_ERRORS as exc:
                log.error("job %s could not be requeued (%s): peers will recover it", job.id, exc)
        self._exit_now()

    def _end_running_job(self) -> None:
        # A forking worker kills its work horse; one that runs jobs in-process cannot (runner.worker.in_process).
        if self.horse_pid:
            self.kill_horse()
            self.wait_for_horse()
            self._horse_pid = 0

    def _exit_now(self) -> None:
        raise SystemExit(0)

    def teardown(self) -> None:
        if self.is_horse:
            return
        if self.scheduler:
            self.stop_scheduler()  # type: ignore[no-untyped-call]
        with suppress(*REDIS_ERRORS):
            self.send_held()
            return_claims(self.connection, self.name)  # jobs claimed ahead and never started
        with suppress(*REDIS_ERRORS):
            self.register_death()  # type: ignore[no-untyped-call]
            forget_claimant(self.connection, self.name)
        with suppress(*REDIS_ERRORS):
            self.unsubscribe()  # type: ignore[no-untyped-call]
