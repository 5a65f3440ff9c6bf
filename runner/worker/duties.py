"""What every worker does for the fleet besides its own jobs, between jobs and while one runs.

- Recovery: settle the jobs of workers that stopped heartbeating (runner.worker.recovery), and
  keep some scheduler serving each queue (runner.rq_seam.scheduler_guard). Peers serving the
  same queues take turns: about one pass a second between them.
- History: run the journal's projector in a thread (runner.journal.projector), mark rows
  whose job Redis lost (runner.worker.lost_jobs), and, when RUNNER_HISTORY_DAYS is set, prune
  rows of jobs that ended before then (runner.store.retention): one worker of the fleet every
  PRUNE_INTERVAL_SECONDS, a bounded pass each, passes close together while a backlog lasts.
- Schedules: run their due ticks in another thread (runner.worker.schedule_ticker), one worker
  of the fleet at a time.
- Flows: cancel the jobs past their deadline that nobody started (runner.services.expiry), and
  release or cancel the deferred jobs whose parents ended (runner.services.dependencies). One
  worker of the fleet at a time, every FLOWS_INTERVAL_SECONDS: the most a job waits for that.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Protocol

import redis
from rq.executions import Execution
from rq.job import Job
from rq.worker import WorkerStatus

from runner import tracing
from runner.errors import BackendUnavailable
from runner.journal.projector import start_projector_thread, stop_projector_thread
from runner.redis_connection import REDIS_ERRORS
from runner.rq_seam.scheduler_guard import SchedulingWorker, keep_scheduler_running
from runner.services.backends import Backends
from runner.services.dependencies import settle_waiting
from runner.services.expiry import expire_due
from runner.store.models import utcnow
from runner.store.retention import Retention, cutoff_for, prune_history
from runner.store.sql_store import Store
from runner.worker.environment import current_environment
from runner.worker.liveness import Liveness
from runner.worker.lost_jobs import mark_lost_jobs
from runner.worker.recovery import recover_abandoned_jobs
from runner.worker.schedule_ticker import start_ticker_thread, stop_ticker_thread

log = logging.getLogger(__name__)

RECOVERY_INTERVAL_SECONDS = 3.0
FLOWS_INTERVAL_SECONDS = 0.5
FLOWS_PASS_KEY = "runner:flows:pass"
RECOVERY_PASS_KEY = "runner:recovery:pass:"
LOST_JOBS_PASS_KEY = "runner:lost-jobs:pass"
PRUNE_PASS_KEY = "runner:history:prune:pass"
PRUNE_INTERVAL_SECONDS = 600
# A pass deletes this many rows at most (a second or so of batches: it may run while a job runs),
# and the next follows in PRUNE_BACKLOG_SECONDS when rows were left.
PRUNE_PASS_ROWS = 5000
PRUNE_BACKLOG_SECONDS = 3
# How long a stopping worker's projector may spend applying what waits before it hands over.
PROJECTOR_STOP_SECONDS = 5.0


class BusySlots(Protocol):
    """The count of busy slots of runner.worker.in_flight.InFlight."""

    @property
    def busy(self) -> int: ...


class DutifulWorker(SchedulingWorker, Protocol):
    """What Duties needs of its worker (runner.worker.runner_worker.RunnerWorker)."""

    name: str
    connection: redis.Redis
    execution: Execution | None
    dead_after: float
    store: Store | None
    backends: Backends | None

    @property
    def heartbeat_seconds(self) -> float: ...

    @property
    def running_job(self) -> Job | None: ...

    @property
    def in_flight_now(self) -> BusySlots | None: ...

    @property
    def stop_requested(self) -> bool: ...

    def queue_names(self) -> list[str]: ...

    @property
    def dequeue_timeout(self) -> int: ...

    @property
    def should_run_maintenance_tasks(self) -> bool: ...

    def set_state(self, state: str, pipeline: Any = None) -> None: ...

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None: ...

    def run_maintenance_tasks(self) -> None: ...

    def start_deferred_scheduler(self) -> None: ...


class Duties:
    """One worker's share of the fleet's chores."""

    def __init__(self, worker: DutifulWorker) -> None:
        self.worker = worker
        self._next_pass = 0.0
        self._next_flows_pass = 0.0
        # When an idle worker next writes its state and heartbeat, and looks at its maintenance.
        self.chores_due = 0.0
        self._projector: tuple[threading.Thread, threading.Event] | None = None
        self._ticker: tuple[threading.Thread, threading.Event] | None = None
        # Set when RUNNER_HISTORY_DAYS is (runner.worker.run.build_worker): this worker takes turns pruning.
        self.retention: Retention | None = None

    def between_jobs(self) -> None:
        """An idle worker's chores before each look for a job: flows (rate-limited: expired and deferred jobs
        wait for them), and every dequeue timeout its state, heartbeat and maintenance; the deferred scheduler."""
        worker = self.worker
        self.settle_flows()
        if time.monotonic() >= self.chores_due:
            self.chores_due = time.monotonic() + worker.dequeue_timeout
            in_flight = worker.in_flight_now
            if in_flight is None or not in_flight.busy:  # jobs in slots keep it busy: their last end says idle
                worker.set_state(WorkerStatus.IDLE)
            worker.heartbeat()
            if worker.should_run_maintenance_tasks:
                worker.run_maintenance_tasks()
        worker.start_deferred_scheduler()

    @property
    def due(self) -> bool:
        """Whether a pass is due (they are a few seconds apart)."""
        return time.monotonic() >= self._next_pass

    def run(self) -> None:
        """Recover dead workers' jobs, keep scheduling alive and mark lost jobs (rate-limited)."""
        worker = self.worker
        self.settle_flows()
        if not self.due:
            return
        self._next_pass = time.monotonic() + min(RECOVERY_INTERVAL_SECONDS, worker.heartbeat_seconds)
        connection = worker.connection
        turn = RECOVERY_PASS_KEY + ",".join(sorted(worker.queue_names()))
        try:
            if not connection.set(turn, worker.name, nx=True, px=1000):
                return
            liveness = Liveness.observe(connection, worker.dead_after)
            # Our own job may look silent after a lost connection; it is running, not abandoned.
            running = {worker.execution.id} if worker.running_job is not None and worker.execution else set()
            recover_abandoned_jobs(connection, worker.queue_names(), liveness, own_name=worker.name, running=running)
            if not worker.stop_requested:
                keep_scheduler_running(worker, connection, liveness)
            if worker.store is not None and connection.set(LOST_JOBS_PASS_KEY, worker.name, nx=True,
                                                           ex=max(1, int(worker.dead_after))):
                mark_lost_jobs(worker.store, connection, worker.dead_after)
            if worker.store is not None and self.retention is not None and connection.set(
                    PRUNE_PASS_KEY, worker.name, nx=True, ex=PRUNE_INTERVAL_SECONDS):
                self._prune_history(worker.store, self.retention)
        except REDIS_ERRORS as exc:  # the worker says Redis is away, once per retry (runner.worker.redis_outage)
            log.debug("worker %s: recovery pass skipped, Redis is unavailable (%s)", worker.name, exc)
        except BackendUnavailable as exc:
            log.warning("worker %s: history not checked (lost jobs, pruning): %s", worker.name, exc.message)

    def _prune_history(self, store: Store, retention: Retention) -> None:
        worker = self.worker
        outcome = prune_history(store, retention.artifacts, cutoff_for(retention.days, utcnow()),
                                most_rows=PRUNE_PASS_ROWS)
        if outcome.rows:
            log.info("worker %s: pruned %d jobs that ended over %d days ago (and the artifacts of %d)",
                     worker.name, outcome.rows, retention.days, outcome.artifact_folders)
        if not outcome.complete:
            worker.connection.expire(PRUNE_PASS_KEY, PRUNE_BACKLOG_SECONDS)

    def settle_flows(self) -> None:
        """Expire and settle what waits (rate-limited, and one worker of the fleet at a time)."""
        if time.monotonic() < self._next_flows_pass:
            return
        self._next_flows_pass = time.monotonic() + FLOWS_INTERVAL_SECONDS
        worker = self.worker
        connection = worker.connection
        try:
            if not connection.set(FLOWS_PASS_KEY, worker.name, nx=True, px=int(FLOWS_INTERVAL_SECONDS * 1000)):
                return
            expire_due(connection)
            settle_waiting(connection, worker.store)
        except REDIS_ERRORS as exc:  # said by the loop that takes jobs
            log.debug("worker %s: flows pass skipped, Redis is unavailable (%s)", worker.name, exc)
        except BackendUnavailable as exc:
            log.warning("worker %s: flows pass cut short: %s", worker.name, exc.message)

    def start_threads(self) -> None:
        """Apply the journal, and run schedules' ticks, from threads of this process whenever this
        worker holds their leases."""
        worker = self.worker
        if worker.store is not None and self._projector is None:
            self._projector = start_projector_thread(worker.connection, worker.store, f"worker:{worker.name}")
        if worker.backends is not None and self._ticker is None:
            self._ticker = start_ticker_thread(worker.backends, current_environment().registry,
                                               f"worker:{worker.name}")

    def stop_threads(self) -> None:
        """Stop the ticker, then the projector thread, after applying what waits (briefly); hand the leases over."""
        worker, ticker, self._ticker = self.worker, self._ticker, None
        if ticker is not None:
            stop_ticker_thread(*ticker, worker.connection, f"worker:{worker.name}")
        projector, self._projector = self._projector, None
        if projector is not None and worker.store is not None:
            thread, stop = projector
            stop_projector_thread(thread, stop, worker.connection, worker.store, f"worker:{worker.name}",
                                  PROJECTOR_STOP_SECONDS)
        # Their last spans (those writes, an attempt put back): a work process ends with os._exit, which
        # skips the SDK's own flush at exit.
        tracing.flush()
