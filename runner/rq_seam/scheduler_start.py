"""When a worker starts RQ's scheduler process: at once, or (a pool's work process) after its first claim.

The scheduler is RQ's, whose process ends quietly when Redis goes away
(runner.rq_seam.scheduler_guard.RunnerScheduler).
"""

from __future__ import annotations

from rq import SimpleWorker
from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT

from runner.rq_seam.scheduler_guard import RunnerScheduler


class SchedulerStartingWorker(SimpleWorker):
    """RQ's in-process worker, starting RunnerScheduler, possibly after its first claim."""

    # Claim first, then start the scheduler (and the subclass's chores): a work process a pool forks at
    # zero takes the job that woke it ~20 ms sooner (runner.worker.pool; `make bench`, cold start).
    first_claim_first: bool = False
    _deferred_scheduler: tuple[str | None, str, str] | None = None
    _claims_before_scheduler = 1

    def _start_scheduler(self, burst: bool = False, logging_level: str | None = "INFO",
                         date_format: str = DEFAULT_LOGGING_DATE_FORMAT,
                         log_format: str = DEFAULT_LOGGING_FORMAT) -> None:
        if self.first_claim_first and not burst:
            self._deferred_scheduler = (logging_level, date_format, log_format)
            return
        self.scheduler = RunnerScheduler(
            self.queues, connection=self.connection, serializer=self.serializer, date_format=date_format,
            logging_level=logging_level if logging_level is not None else self.log.level, log_format=log_format,
        )
        self.scheduler.acquire_locks()  # type: ignore[no-untyped-call]
        if not self.scheduler.acquired_locks:
            return
        if not burst:
            self.scheduler.start()
            return
        try:  # a burst worker enqueues what is due once, in this process
            self.scheduler.register_birth()
            self.scheduler.enqueue_scheduled_jobs()  # type: ignore[no-untyped-call]
        finally:
            self.scheduler.release_locks()  # type: ignore[no-untyped-call]
            self.scheduler.register_death()

    @property
    def deferring_start(self) -> bool:
        """Whether the scheduler waits for the first claim (`first_claim_first`)."""
        return self._deferred_scheduler is not None

    def start_deferred_scheduler(self) -> None:
        """Called before each claim: start a deferred scheduler once the first claim is made."""
        if self._deferred_scheduler is None:
            return
        if self._claims_before_scheduler:
            self._claims_before_scheduler -= 1
            return
        (logging_level, date_format, log_format), self._deferred_scheduler = self._deferred_scheduler, None
        self.first_claim_first = False
        self._start_scheduler(False, logging_level, date_format, log_format)

