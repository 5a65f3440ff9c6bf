"""The worker: an RQ worker that keeps the SQL row in step with each job, and is safe to kill.

Safety (claims, heartbeats, recovery of dead workers' jobs, graceful stop) lives in
runner.worker.supervision; running jobs in a long-lived process in runner.worker.in_process, contained by
runner.worker.process_supervisor; this module keeps the SQL store in step and assembles the worker.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from redis.client import Pipeline
from rq import SimpleWorker, Worker
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.worker import BaseWorker

from runner.authoring.registry import Registry
from runner.config import Settings
from runner.errors import BackendUnavailable
from runner.journal.reconcile import (
    PENDING_WRITES_KEY,
    install_write_behind,
    replay_pending_writes,
    stage_write,
    write_or_defer,
)
from runner.journal.write_behind import RowWrite, WriteBehind, adopt_journal
from runner.rq_seam.bookkeeping import AfterExecute
from runner.rq_seam.job_hash import ENTRY_POINT
from runner.rq_seam.queues import queue_for
from runner.services.backends import REDIS_ERRORS, Backends, open_backends
from runner.services.fleet import default_queues
from runner.services.job_views import announce_ends, error_from_text
from runner.services.lifecycle import JobEvent, emit, emit_into, load_listeners
from runner.status import TERMINAL_STATUSES
from runner.store.models import utcnow
from runner.store.sql_store import Store
from runner.worker.execution import WorkerEnvironment, begin_attempt, install_environment
from runner.worker.in_process import DeadlineSlot, InProcessWorkerMixin
from runner.worker.process_supervisor import ProcessSupervisor
from runner.worker.process_ties import tie_children_to_this_process
from runner.worker.supervision import MONITOR_TICK_SECONDS, SupervisedWorkerMixin

log = logging.getLogger(__name__)

# How long an idle worker blocks on Redis before it looks at its maintenance chores.
IDLE_WAKEUP_SECONDS = 2
REPLAY_INTERVAL_SECONDS = 3.0
# How long a stopping worker waits for the database to take its last row updates.
WRITE_BEHIND_STOP_SECONDS = 5.0


@dataclass
class _Ending:
    """A job's success waiting to go out with the next claim: the row write journaled in its pipeline."""

    pipeline: Pipeline
    write: RowWrite
    settled: bool = False  # committed ahead of the pipeline (settle_before): not for the writer thread


class StoreSyncMixin(BaseWorker):
    """Writes the SQL row when a job succeeds, fails or is retried (on top of any RQ worker)."""

    store: Store | None = None
    _last_replay: float = 0.0
    # Row updates go through a write-behind journal (runner.journal.write_behind) instead of one commit each.
    uses_write_behind = False
    _write_behind: WriteBehind | None = None
    # The last job's success, until its held pipeline goes out with a claim (see before_claiming_with).
    _ending: _Ending | None = None

    def register_birth(self) -> None:
        super().register_birth()  # type: ignore[no-untyped-call]
        if self.uses_write_behind and self.store is not None:
            self._write_behind = WriteBehind(self.store, self.connection, self.name, deferred_key=PENDING_WRITES_KEY,
                                             on_committed=self._announce_ended_rows, is_urgent=_ends_job)
            self._write_behind.start()
            install_write_behind(self._write_behind)

    def _announce_ended_rows(self, writes: Sequence[RowWrite], pipeline: Pipeline) -> None:
        announce_ends(pipeline, {write.job_id for write in writes if _ends_job(write)})

    def wait_for_work(self, seconds: float) -> None:
        # Out of jobs: commit the rows of the last ones here and now, and send their journal
        # cleanup (and the waiters' tokens) with the wait and the claim after it: no thread
        # switch, one round trip.
        writer = self._write_behind
        wait_and_claim = self.queue_wait_and_claim  # type: ignore[attr-defined]
        replies = writer.settle_here(lambda pipeline: wait_and_claim(pipeline, seconds)) if writer else None
        if replies is None:
            super().wait_for_work(seconds)  # type: ignore[misc]
        else:
            self.take_claimed(replies[-1])  # type: ignore[attr-defined]

    def teardown(self) -> None:
        writer, self._write_behind = self._write_behind, None
        if writer is not None:
            install_write_behind(None)
            writer.stop(WRITE_BEHIND_STOP_SECONDS)
            with suppress(*REDIS_ERRORS):  # what the database did not take in time waits for replay
                adopt_journal(self.connection, self.name, PENDING_WRITES_KEY)
        super().teardown()  # type: ignore[no-untyped-call]

    def begin_attempt(self, job: Job, pipeline: Pipeline) -> AfterExecute:
        after = begin_attempt(job, self.connection, pipeline) if _is_invocation(job) else None
        return after or super().begin_attempt(job, pipeline)  # type: ignore[misc]

    def end_successful_attempt(self, job: Job, pipeline: Pipeline) -> AfterExecute:
        if not _is_invocation(job):
            return super().end_successful_attempt(job, pipeline)  # type: ignore[misc, no-any-return]
        last = job.meta.get("progress") or {}
        commit = self._stage_ending(
            job,
            pipeline,
            status=JobStatus.FINISHED.value,
            result=getattr(job, "_result", None),
            error=None,
            progress_percent=100,
            progress_message=str(last.get("message") or "") if last.get("percent") == 100 else "finished",
            attempts=int(job.meta.get("attempts", 1)),
            artifacts=job.meta.get("artifacts", []),
            ended_at=utcnow(),
        )
        event = self._event(job, "finished", JobStatus.FINISHED.value)
        emit_into(pipeline, event)

        def after() -> None:
            commit()
            emit(self.connection, event, after_emit_into=True)

        return after

    def handle_job_failure(
        self,
        job: Job,
        queue: Queue,
        started_job_registry: StartedJobRegistry | None = None,
        exc_string: str = "",
    ) -> None:
        # When the work horse died, this runs in the parent, whose copy of meta predates the
        # attempt: refresh it so the attempt count is not rolled back when RQ saves the job.
        job.get_meta(refresh=True)
        if not job.meta.get("error"):
            job.meta["error"] = error_from_text(exc_string)
            job.save_meta()
        as_of = utcnow()
        super().handle_job_failure(job, queue, started_job_registry=started_job_registry, exc_string=exc_string)
        status = job.get_status(refresh=False)
        status_word = status.value if isinstance(status, JobStatus) else str(status)
        ended = status_word in (JobStatus.FAILED.value, JobStatus.STOPPED.value)
        self._record(
            job,
            as_of,
            status=status_word,
            error=job.meta.get("error"),
            attempts=int(job.meta.get("attempts", 1)),
            artifacts=job.meta.get("artifacts", []),
            ended_at=utcnow() if ended else None,
        )
        event = status_word if status_word in (JobStatus.FAILED.value, JobStatus.STOPPED.value) else "retried"
        self._emit(job, event, status_word)

    def _emit(self, job: Job, event: str, status: str) -> None:
        if _is_invocation(job):
            emit(self.connection, self._event(job, event, status))

    def _event(self, job: Job, event: str, status: str) -> JobEvent:
        duration = (job.ended_at - job.started_at).total_seconds() if job.ended_at and job.started_at else None
        return JobEvent(
                event=event,
                job_id=job.id,
                function=str(job.meta.get("function") or job.func_name),
                queue=job.origin,
                attempt=int(job.meta.get("attempts", 1)),
                duration_seconds=duration,
                error=job.meta.get("error") if event != "finished" else None,
            status=status,
            callback_url=job.meta.get("callback_url"),
        )

    def _stage_ending(self, job: Job, pipeline: Pipeline, **values: Any) -> AfterExecute:
        # As of before the pipeline moves the job on: a retry that another worker already started wins.
        if self.store is None:
            return lambda: None
        after, journaled = stage_write(self.store, self.connection, pipeline, job.id, as_of=utcnow(), **values)
        if journaled is None:
            return after
        ending = self._ending = _Ending(pipeline, journaled)  # before_claiming_with may commit it first
        return lambda: None if ending.settled else after()

    def before_claiming_with(self, held: Pipeline) -> None:
        # No job is claimed ahead, so the worker may be about to go idle: commit the last job's row
        # (and what else is pending) first, so the claim that sends its end also wakes its waiters.
        # A busy worker does this once per claimed batch; its writer thread batches the rest.
        ending, self._ending = self._ending, None
        if self._write_behind is not None and ending is not None and ending.pipeline is held:
            ending.settled = self._write_behind.settle_before(held, ending.write)

    def _record(self, job: Job, as_of: datetime, **values: Any) -> None:
        # As of before Redis moved the job on: a retry that another worker already started wins.
        if self.store is not None and _is_invocation(job):
            write_or_defer(self.store, self.connection, job.id, as_of=as_of, **values)

    # RQ runs maintenance between dequeue attempts; we also replay deferred store writes there,
    # every few seconds, so the history catches up soon after the database returns. The next
    # class in line (SupervisedWorkerMixin) decides when RQ's own, rarer chores are due.
    @property
    def dequeue_timeout(self) -> int:
        return IDLE_WAKEUP_SECONDS

    @property
    def should_run_maintenance_tasks(self) -> bool:
        due = time.monotonic() - self._last_replay >= REPLAY_INTERVAL_SECONDS
        return bool(super().should_run_maintenance_tasks) or due

    def run_maintenance_tasks(self) -> None:
        self._last_replay = time.monotonic()
        try:
            if self.store is not None:
                replay_pending_writes(self.store, self.connection)  # an empty list costs one LPOP
        except REDIS_ERRORS as exc:
            log.warning("deferred store writes not replayed, Redis is unavailable (%s)", exc)
        super().run_maintenance_tasks()  # type: ignore[no-untyped-call]


class RunnerWorker(StoreSyncMixin, InProcessWorkerMixin, SimpleWorker):
    """The worker `python -m runner worker` runs: jobs in its long-lived process, synced, supervised."""

    uses_write_behind = True


class RunnerForkingWorker(StoreSyncMixin, SupervisedWorkerMixin, Worker):
    """RQ's forking worker (a work horse per job), synced and supervised; slower, kept for comparison."""


class RunnerSimpleWorker(StoreSyncMixin, SupervisedWorkerMixin, SimpleWorker):
    """RQ's in-process worker, synced; for tests and short jobs (it cannot heartbeat during a job)."""


def _ends_job(write: RowWrite) -> bool:
    return write.values.get("status") in TERMINAL_STATUSES


def _is_invocation(job: Job) -> bool:
    # Callback deliveries and other jobs on our queues have no row and are no function's event.
    return job.func_name == ENTRY_POINT


def build_worker(
    queue_names: Sequence[str],
    backends: Backends,
    registry: Registry,
    worker_class: type[StoreSyncMixin] = RunnerWorker,
    name: str | None = None,
) -> StoreSyncMixin:
    """A worker on these queues whose jobs see this registry and store."""
    install_environment(
        WorkerEnvironment(registry=registry, store=backends.store, uploads=backends.uploads,
                          artifacts=backends.artifacts)
    )
    queues = [queue_for(name, backends.connection) for name in queue_names]
    settings = backends.settings
    worker = worker_class(queues, name=name, connection=backends.connection, serializer=JSONSerializer,
                          job_monitoring_interval=MONITOR_TICK_SECONDS,
                          worker_ttl=max(1, int(settings.worker_dead_after_seconds)))
    worker.store = backends.store
    if isinstance(worker, SupervisedWorkerMixin):
        worker.supervise(dead_after=settings.worker_dead_after_seconds, grace_seconds=settings.worker_grace_seconds)
    return worker


def run_worker(queue_names: Sequence[str], settings: Settings, *, burst: bool = False) -> int:
    """Start a worker (scheduler on, so retries with intervals run) and work until stopped; its exit code."""
    registry = Registry.discover(settings.functions_package)  # imported once, before the work process forks
    load_listeners()  # likewise the lifecycle listeners (runner.services.callbacks brings http.client and ssl)
    backends = open_backends(settings)
    backends.store.migrate()
    queues = list(queue_names) or default_queues(registry)

    def work(name: str, slot: DeadlineSlot) -> int:
        # The worker blocks on Redis for new jobs; no socket timeout, so an idle worker is not an error.
        worker = build_worker(queues, open_backends(settings, socket_timeout=None), registry, name=name)
        assert isinstance(worker, RunnerWorker)
        if worker.store is not None:  # connected now, not at the first job (a database away waits)
            with suppress(BackendUnavailable):
                worker.store.ping()
        worker.deadline_slot = slot
        worker.pid = os.getppid()  # registered as the worker command's pid: the one to signal
        tie_children_to_this_process()
        worker.work(burst=burst, with_scheduler=True, logging_level=settings.log_level)
        # RQ's loop also ends on an unexpected error: then a fresh work process takes over.
        return 0 if burst or worker._stop_requested else 1

    supervisor = ProcessSupervisor(work, queue_names=queues, connection=backends.connection, store=backends.store,
                                   grace_seconds=settings.worker_grace_seconds)
    return supervisor.run()
