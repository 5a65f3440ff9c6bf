"""How a runner worker stops: the stop signals (graceful, then forced), the stop-job command, and the
hooks through which the subclass acts on them (runner.worker.runner_worker.RunnerWorker).

Each override here is listed, with its reason, in runner.rq_seam.worker's table.
"""

from __future__ import annotations

import signal
from datetime import datetime
from types import FrameType
from typing import Any

from rq.command import parse_payload
from rq.utils import now

from runner.rq_seam.scheduler_start import SchedulerStartingWorker


class StoppingWorker(SchedulerStartingWorker):
    """RQ's in-process worker, stopping as the runner does."""

    # Hooks for the subclass

    def stop_requested_now(self) -> None:
        """Called on the first stop signal: the subclass starts its grace period."""

    def second_stop_requested(self) -> None:
        """Called on a second stop signal: the subclass ends the job now."""

    def interrupt_job(self) -> None:
        """Called by the stop-job command for the job this worker runs."""

    def stop_in_flight(self, job_id: str) -> bool:
        """Called by the stop-job command first: stop `job_id` if it is one of the jobs this worker runs
        many at once (whether it was)."""
        return False

    # RQ's private state, read through names of ours

    @property
    def stop_requested(self) -> bool:
        """Whether the worker was asked to stop (it takes no new job)."""
        return bool(self._stop_requested)

    @property
    def stopped_job_id(self) -> str | None:
        """The job the stop-job command named, if any."""
        return self._stopped_job_id  # type: ignore[no-any-return]

    def note_stop_requested(self) -> None:
        """Record the stop's time in Redis (shown by RQ's tools)."""
        self.set_shutdown_requested_date()  # type: ignore[no-untyped-call]

    # Overrides

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        self._shutdown_requested_date = now()
        self.handle_warm_shutdown_request()  # type: ignore[no-untyped-call]
        signal.signal(signal.SIGINT, self.request_force_stop)
        signal.signal(signal.SIGTERM, self.request_force_stop)
        self._stop_requested = True
        self.stop_requested_now()
        if self.scheduler:
            self.stop_scheduler()  # type: ignore[no-untyped-call]

    def request_force_stop(self, signum: int, frame: FrameType | None) -> None:
        requested: datetime | None = self._shutdown_requested_date
        if requested and (now() - requested).total_seconds() < 1:
            return  # the same stop, delivered twice (process group and pool)
        self.second_stop_requested()

    def handle_payload(self, message: dict[str, Any]) -> None:
        payload = parse_payload(message)
        if payload.get("command") == "stop-job" and self.stop_in_flight(str(payload.get("job_id", ""))):
            return
        super().handle_payload(message)  # type: ignore[no-untyped-call]

    def kill_horse(self, sig: signal.Signals = signal.SIGKILL) -> None:
        self.interrupt_job()
