"""Jobs of `async def` and `threads=True` functions: up to RUNNER_WORKER_SLOTS at once in one work process.

The main thread stays RQ's loop: it claims and starts each job (one script call, as for any job)
and hands its code to the event loop or to a thread pool (runner.worker.slot_code), then goes on
claiming while slots are free. When slots free often, a few jobs wait started "on deck": the slot
that frees begins the next one at once, in the thread its job ended in. Only the code runs
elsewhere; each promise still holds per job:
- its end (success, retry, failure, stop) is one fenced script call, sent by an ender thread, the
  ends of the moment batched in one call;
- its timeout fires for it alone: the loop's own timeout for a coroutine, an exception raised in
  its thread for a threaded job; a job that ignores it (a loop blocked by CPU work, a thread stuck
  in C) is settled anyway after ABANDON_AFTER_SECONDS, and its slot stays taken until its code returns;
- `POST /jobs/<id>/cancel` stops it alone (the stop-job command names it);
- a watch thread heartbeats every execution in flight, so peers judge each by its own silence;
- SIGTERM: no new job (those on deck go back); those in flight may end within the grace period, the
  rest go back to their queues uncounted (`drain`); a crash of the process settles all of them
  through the supervisor.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any, Protocol

from redis.client import Pipeline
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.utils import now
from rq.worker import WorkerStatus

from runner.errors import JobStopped
from runner.redis_connection import REDIS_ERRORS
from runner.rq_seam.bookkeeping import RunnerJob
from runner.rq_seam.keys import WORKER_SLOTS_BUSY_FIELD
from runner.worker.environment import current_environment
from runner.worker.event_loop import LoopThread
from runner.worker.execution import error_info
from runner.worker.flight_watch import STOPPED, FlightWatch, FlyingJob
from runner.worker.recovery import WORKER_STOPPED_REASON, StartedEntry, recover_entry
from runner.worker.slot_code import SlotCode
from runner.worker.slot_ends import EndingWorker, EndSender, Outcome
from runner.worker.slot_pace import SlotPace

log = logging.getLogger(__name__)

# A job on deck (runner.worker.slot_pace) that waited this long (the slots' jobs turned long) goes back to its
# queue, uncounted, for an idler worker.
DECK_WAIT_MOST_SECONDS = 1.0
WAITED_REASON = "waited on deck for a slot"
# How long a stopping worker waits for the ends already queued to be sent.
ENDS_SENT_WAIT_SECONDS = 5.0


class SlotWorker(EndingWorker, Protocol):
    """What InFlight needs of its worker (runner.worker.runner_worker.RunnerWorker)."""

    execution: Execution | None
    log: logging.Logger

    @property
    def key(self) -> str: ...

    @property
    def heartbeat_seconds(self) -> float: ...

    def prepare_executions(self, jobs: list[Job]) -> list[Execution | None]: ...

    def get_heartbeat_ttl(self, job: Job) -> int: ...

    def handle_exception(self, job: Job, *exc_info: Any) -> None: ...

    def set_state(self, state: str, pipeline: Pipeline | None = None) -> None: ...

    def set_current_job_id(self, job_id: str | None = None, pipeline: Pipeline | None = None) -> None: ...


class InFlight:
    """The jobs this work process runs many at once, and the threads that run and end them."""

    def __init__(self, worker: SlotWorker, capacity: int) -> None:
        self.worker = worker
        self.capacity = max(1, capacity)
        self._jobs: dict[str, FlyingJob] = {}
        self._deck: deque[FlyingJob] = deque()  # started, waiting for a slot; in `_jobs` too
        self._changed = threading.Condition()
        # The worker's hash is written by the end sender and the watch's heartbeat, each with a count of
        # busy slots taken as it writes: one at a time, so that an older count never lands after a newer one.
        self.hash_writes = threading.Lock()
        self.ends = EndSender(worker, also=self.slots_busy_now, sent=self._ends_sent, lock=self.hash_writes)
        self.code = SlotCode(self.capacity, handle_exception=worker.handle_exception, returned=self._code_returned)
        self.watch = FlightWatch(worker, self)
        self.pace = SlotPace()

    @property
    def loop(self) -> LoopThread | None:
        """The event loop of async jobs, once the first job in a slot started."""
        return self.code.loop

    def flying(self) -> list[FlyingJob]:
        """The jobs in flight now."""
        return list(self._jobs.values())

    def find(self, job_id: str) -> FlyingJob | None:
        """The job `job_id` if it is in flight here."""
        return self._jobs.get(job_id)

    def give_up(self, flying: FlyingJob, error: BaseException) -> bool:
        """Settle `flying` with `error` though its code still runs (it ignored its end); whether it was unsettled."""
        with self._changed:
            if flying.settled:
                return False
            flying.settled = True
        flying.job.meta["error"] = error_info(error)
        self.ends.put(flying, (None, f"{type(error).__name__}: {error}"))
        return True

    @property
    def busy(self) -> int:
        """Slots taken: jobs whose code has not returned yet."""
        return sum(1 for flying in list(self._jobs.values()) if flying.code_running)

    @property
    def deck_size(self) -> int:
        """How many started jobs may wait on deck for a slot now (runner.worker.slot_pace)."""
        return self.pace.deck_size(self.capacity)

    @property
    def free(self) -> int:
        """Slots free for the next job."""
        return self.capacity - self.busy

    @property
    def room(self) -> int:
        """How many jobs to start now: the free slots, and the places left on deck."""
        return self.free + max(0, self.deck_size - len(self._deck))

    def wait_for_room(self, timeout: float) -> bool:
        """Wait up to `timeout` for `room`; whether there is some."""
        with self._changed:
            return self._changed.wait_for(lambda: self.room > 0, timeout)

    # The main thread

    def start(self, jobs: list[tuple[Job, Queue]]) -> list[Job]:
        """Start `jobs` (claimed, at most `room`) in one script call and run their code in slots, those past
        the free slots once one frees; the jobs canceled since they were claimed, not started."""
        for ordinal, (job, _queue) in enumerate(jobs, start=1):
            job.in_slot = ordinal  # type: ignore[attr-defined]  # its place among the slots taken (RunnerWorker.begin)
        executions = self.worker.prepare_executions([job for job, _queue in jobs])
        started_at = now()
        self._ensure_threads()
        canceled = []
        for (job, queue), execution in zip(jobs, executions, strict=True):
            if execution is None:
                canceled.append(job)
                continue
            job.started_at = started_at
            on_loop = current_environment().registry.get(str(job.args[0])).is_async
            flying = FlyingJob(job, queue, execution, on_loop, deadline=float("inf"), code_running=False)
            with self._changed:
                self._jobs[job.id] = flying
                begins = self.free > 0 and not self._deck
                if begins:
                    flying.code_running = True  # its slot, taken
                else:
                    self._deck.append(flying)
            if begins:
                self._begin(flying)
        return canceled

    def _begin(self, flying: FlyingJob) -> None:
        """Run the code of `flying`, whose slot is taken for it: on the loop, or in a thread of the pool."""
        job = flying.job
        assert isinstance(job, RunnerJob)
        timeout = job.timeout if job.timeout and job.timeout > 0 else None
        flying.began = time.monotonic()
        flying.deadline = flying.began + timeout if timeout else float("inf")
        if flying.ending == STOPPED:  # stopped between its slot's handover and now: it never runs
            self._code_returned(flying, (None, self.code.failed(job, JobStopped())))
            return
        self.code.run(flying, timeout)

    def _ensure_threads(self) -> None:
        if self.code.made:
            return
        self.code.make()
        for target, name in ((self.ends.run, "runner-slot-ends"), (self.watch.run, "runner-slot-watch")):
            threading.Thread(target=target, name=name, daemon=True).start()

    def stop(self, job_id: str) -> bool:
        """The stop-job command named `job_id`: stop it if it is in flight here (whether it was)."""
        with self._changed:
            waiting = next((flying for flying in self._deck if flying.job.id == job_id), None)
            if waiting is not None:
                self._deck.remove(waiting)
                waiting.ending = STOPPED
        if waiting is not None:  # its code never ran: it ends stopped now
            return self.give_up(waiting, JobStopped())
        return self.watch.ask_to_end(job_id, STOPPED)

    def slots_busy_now(self, pipeline: Pipeline) -> None:
        """Queue the count of jobs in flight into the worker's hash (holding `hash_writes`); with none left,
        the worker is idle again, with no current job, as the end of a plain job leaves it."""
        busy = self.busy
        pipeline.hset(self.worker.key, WORKER_SLOTS_BUSY_FIELD, busy)
        if not busy:
            self.worker.set_state(WorkerStatus.IDLE, pipeline=pipeline)
            self.worker.set_current_job_id(None, pipeline=pipeline)

    # When the code returned

    def _code_returned(self, flying: FlyingJob, outcome: Outcome) -> None:
        self.pace.freed(time.monotonic() - flying.began)
        with self._changed:
            flying.code_running = False
            first = not flying.settled
            flying.settled = True
            if not first:
                self._jobs.pop(flying.job.id, None)  # its end was sent already: the slot is free
            successor = self._deck.popleft() if self._deck else None
            if successor is not None:
                successor.code_running = True  # the slot passes to it
            self._changed.notify_all()
        if successor is not None:
            self._begin(successor)
        if first:
            self.ends.put(flying, outcome)

    def _ends_sent(self, jobs: list[FlyingJob]) -> None:
        with self._changed:
            for flying in jobs:
                if not flying.code_running:
                    self._jobs.pop(flying.job.id, None)
            self._changed.notify_all()

    # Stopping

    def drain(self, until: float | None) -> None:
        """Put back the jobs on deck, let those in flight end until `until` (monotonic; None: no limit), then
        put back the rest on their queues uncounted; returns once every end is sent."""
        self.return_waiting(0.0, WORKER_STOPPED_REASON)
        with self._changed:
            self._changed.wait_for(lambda: not self._unsettled() or (until is not None and time.monotonic() >= until),
                                   None if until is None else max(0.0, until - time.monotonic()))
        self.put_back_all()

    def return_waiting(self, longer_than: float | None = None, reason: str = WAITED_REASON) -> None:
        """Put the jobs that waited on deck `longer_than` seconds (DECK_WAIT_MOST_SECONDS) back on their
        queues, uncounted."""
        longer_than = DECK_WAIT_MOST_SECONDS if longer_than is None else longer_than
        moment = time.monotonic()
        with self._changed:
            going = [flying for flying in self._deck if moment - flying.began >= longer_than]
            for flying in going:
                self._deck.remove(flying)
                self._jobs.pop(flying.job.id, None)
                flying.settled = True
        for flying in going:
            self._put_back(flying, reason)

    def put_back_all(self) -> None:
        """Put every job in flight back on its queue, uncounted (a stop past its grace period)."""
        self.return_waiting(0.0, WORKER_STOPPED_REASON)
        for flying in self._unsettled():
            with self._changed:
                if flying.settled:
                    continue
                flying.settled = True
            self._put_back(flying, WORKER_STOPPED_REASON)
        with self._changed:  # a job in flight whose code returned has its end queued: sent before we go
            self._changed.wait_for(lambda: all(flying.code_running for flying in self._jobs.values()),
                                   ENDS_SENT_WAIT_SECONDS)

    def _put_back(self, flying: FlyingJob, reason: str) -> None:
        self.worker.log.warning("Worker %s: job %s goes back to its queue (%s)", self.worker.name, flying.job.id,
                                reason)
        try:
            recover_entry(self.worker.connection, StartedEntry(flying.job.origin, flying.job.id, flying.execution.id),
                          reason=reason, count_attempt=False)
        except REDIS_ERRORS as exc:
            log.error("job %s could not be requeued (%s): peers will recover it", flying.job.id, exc)

    def close(self) -> None:
        """After `drain`: end the loop, the pool, the ender and the watch (a stopping worker's last step)."""
        if not self.code.made:
            return
        self.watch.close()
        self.ends.close()
        self.code.close()

    def _unsettled(self) -> list[FlyingJob]:
        return [flying for flying in list(self._jobs.values()) if not flying.settled]
