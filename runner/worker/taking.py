"""How a worker takes its next job: from the jobs it claimed ahead, else with a claim that carries
the last job's end, else by waiting for a wake-up token and claiming in the same round trip.

Short jobs are claimed a few at a time (`claim_batch`): their ids sit in the worker's claim list
(runner.worker.claims) until each is started. After a lost connection, the claim list in Redis
is the truth: the worker takes its claims from there, one by one.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

import redis
from redis.client import Pipeline
from rq.exceptions import DeserializationError, NoSuchJobError
from rq.job import Job
from rq.queue import Queue

from runner.redis_connection import REDIS_ERRORS
from runner.rq_seam.bookkeeping import fence_of
from runner.rq_seam.queues import queue_for
from runner.rq_seam.worker import AfterSent
from runner.services.expiry import expire, past_deadline
from runner.worker.claims import (
    MAX_CLAIM_BATCH,
    Claimed,
    claim,
    pending_claim,
    queue_claim,
    read_jobs,
    release_claim,
    wait_for_wake_up,
)
from runner.worker.duties import Duties
from runner.worker.in_flight import InFlight
from runner.worker.redis_outage import RedisOutage, pause

log = logging.getLogger(__name__)

# Longest wait of an idle worker for a wake-up token before it looks at its queues again.
WAKE_WAIT_SECONDS = 0.2
# Jobs a worker with no room for more (runner.worker.in_flight) keeps claimed, to start the moment there
# is, when slots free often (a job claimed ahead must not wait long while another worker idles).
# `make bench-waiting`, 100 ms jobs: the refill of a freed slot 3.3 -> 0.5 ms (p50), 149.5 -> 152.6 jobs/s.
CLAIM_AHEAD_JOBS = 4
# Jobs of a few milliseconds are claimed MAX_CLAIM_BATCH at a time; longer ones one by one, so that no job
# waits behind a long one while another worker is idle.
SHORT_JOB_SECONDS = 0.01


class TakingWorker(Protocol):
    """What a JobTaker needs of its worker (runner.worker.runner_worker.RunnerWorker)."""

    connection: redis.Redis
    name: str
    queues: list[Queue]
    serializer: Any

    @property
    def job_class(self) -> type[Job]: ...

    @property
    def ordered_queues(self) -> list[Queue]: ...

    def take_held(self) -> tuple[Pipeline, AfterSent] | None: ...

    def send_held(self) -> None: ...

    def reorder_queues(self, reference_queue: Queue) -> None: ...

    def get_redis_server_version(self) -> Any: ...

    @property
    def stop_requested(self) -> bool: ...

    @property
    def duties(self) -> Duties: ...

    @property
    def outage(self) -> RedisOutage: ...

    @property
    def in_flight_now(self) -> InFlight | None: ...

    def lost_track_of_claims(self) -> None: ...


class JobTaker:
    """A worker's claims: the jobs it took ahead, and how it takes the next one."""

    def __init__(self, worker: TakingWorker) -> None:
        self.worker = worker
        # How many jobs to claim at once; the worker raises it for short jobs.
        self.claim_batch = 1
        # Jobs claimed with an earlier one, in order, with their hashes; they sit in the claim list too.
        self.ahead: deque[tuple[str, dict[bytes, bytes]]] = deque()
        self._check_own_claims = False

    def take(self, timeout: float | None, max_idle_time: float | None) -> tuple[Job, Queue] | None:
        """The next job, claimed: waits for one (`timeout` None: not at all), doing the worker's chores
        between looks; None when the worker stops, or stayed idle `max_idle_time` seconds."""
        worker = self.worker
        idle_since = time.monotonic()
        while not worker.stop_requested:
            try:
                worker.duties.between_jobs()
                in_flight = worker.in_flight_now
                if in_flight is not None and in_flight.busy:
                    idle_since = time.monotonic()
                    if not in_flight.room and in_flight.deck_size:
                        # The next jobs wait claimed, not behind a claim's round trips.
                        self.claim_ahead(CLAIM_AHEAD_JOBS)
                    if not in_flight.wait_for_room(WAKE_WAIT_SECONDS):
                        continue  # no room: wait for some before taking the next job
                claimed = self.next_job()
                worker.outage.answered()
                if claimed is not None:
                    return claimed
                if timeout is None or (max_idle_time is not None and time.monotonic() - idle_since >= max_idle_time):
                    return None
                # Woken by the token pushed with each job; jobs pushed without one (RQ's own scheduler)
                # are seen within WAKE_WAIT_SECONDS.
                self.wait_for_work(min(WAKE_WAIT_SECONDS, max(0.001, worker.duties.chores_due - time.monotonic())))
            except REDIS_ERRORS as exc:
                worker.lost_track_of_claims()
                pause(worker.outage.failed(exc), lambda: worker.stop_requested)
        return None

    def next_job(self) -> tuple[Job, Queue] | None:
        """The next job to start (claimed, with its queue), or None when every queue is empty.

        A job past its deadline (runner.services.expiry) is canceled instead, its claim released in
        the same transaction, and the next one taken: its hash, read with the claim, says so."""
        while True:
            taken = self._take()
            if taken is None or not self._expired(taken[0]):
                return taken

    def take_ahead(self, most: int, wanted: Callable[[dict[bytes, bytes]], bool]) -> list[tuple[Job, Queue]]:
        """Up to `most` more of the jobs claimed ahead, in order, while `wanted(hash)` says so; no claim is made
        (jobs started together: one script call)."""
        taken: list[tuple[Job, Queue]] = []
        while len(taken) < most and self.ahead and not self._check_own_claims and wanted(self.ahead[0][1]):
            restored = self._restore(*self.ahead.popleft())
            if restored is not None and not self._expired(restored[0]):
                taken.append(restored)
        return taken

    def _expired(self, job: Job) -> bool:
        """Whether `job` was past its deadline, and is now canceled (its claim released with it)."""
        if not past_deadline(job):
            return False
        worker = self.worker
        if expire(worker.connection, job.id, also=partial(release_claim, worker_name=worker.name, job_id=job.id)):
            log.info("worker %s: job %s expired before it started; not run", worker.name, job.id)
            return True
        return False  # it changed meanwhile (canceled, say): starting it decides

    def _take(self) -> tuple[Job, Queue] | None:
        worker = self.worker
        pending = pending_claim(worker.connection, worker.name) if self._check_own_claims else None
        self._check_own_claims = pending is not None
        fields: dict[bytes, bytes] | None = None
        if pending is None:
            if not self.ahead:
                self._claim(self.claim_batch)
                if not self.ahead:
                    return None
            job_id, fields = self.ahead.popleft()
        else:
            worker.send_held()
            job_id = pending
        return self._restore(job_id, fields)

    def claim_ahead(self, most: int) -> None:
        """Claim jobs until `most` wait claimed ahead (none while this worker's own claims are being read)."""
        if len(self.ahead) < most and not self._check_own_claims:
            self._claim(most - len(self.ahead))

    def _claim(self, count: int) -> None:
        worker = self.worker
        held = worker.take_held()  # the last job's end goes out with this claim
        claimed = claim(worker.connection, worker.ordered_queues, worker.name, count, before=held[0] if held else None)
        if held:
            held[1](all(claimed.guards))
        self._keep(claimed)

    def _restore(self, job_id: str, fields: dict[bytes, bytes] | None) -> tuple[Job, Queue] | None:
        worker = self.worker
        try:
            if fields is None:
                fields = read_jobs(worker.connection, [job_id])[0]
            if not fields:
                raise NoSuchJobError(job_id)
            job = worker.job_class(job_id, connection=worker.connection, serializer=worker.serializer)
            job.restore(fields)  # type: ignore[arg-type]
            job.fence = fence_of(fields)  # type: ignore[attr-defined]
        except (NoSuchJobError, DeserializationError) as exc:
            release_claim(worker.connection, worker.name, job_id)
            log.error("worker %s: dropped job %s, which cannot be read (%s)", worker.name, job_id, type(exc).__name__)
            return None
        queue = next((q for q in worker.queues if q.name == job.origin), None) or queue_for(job.origin,
                                                                                             worker.connection)
        worker.reorder_queues(reference_queue=queue)
        job.redis_server_version = worker.get_redis_server_version()
        return job, queue

    def wait_for_work(self, seconds: float) -> None:
        """Block until a job may be waiting (a wake-up token) or `seconds` pass, and claim what waits
        then, in the same round trip (Redis runs the claim the moment the wait ends)."""
        worker = self.worker
        with worker.connection.pipeline(transaction=False) as pipeline:
            wait_for_wake_up(pipeline, worker.ordered_queues, seconds)
            queue_claim(pipeline, worker.connection, worker.ordered_queues, worker.name, self.claim_batch)
            reply = pipeline.execute(raise_on_error=False)[-1]
        if isinstance(reply, Exception):  # the script was lost (Redis restarted): the next claim loads it
            log.info("worker %s: claim after the wait not run (%s); claiming again", worker.name, reply)
            return
        self._keep(Claimed(reply, worker.ordered_queues))

    def _keep(self, claimed: Claimed) -> None:
        # The jobs' hashes in one more round trip: a script may only touch the keys it declares.
        for job_id, fields in zip(claimed.job_ids, read_jobs(self.worker.connection, claimed.job_ids), strict=True):
            self.ahead.append((job_id, fields))

    def job_took(self, seconds: float) -> None:
        """The last job (or jobs started together) took `seconds` on the main thread: after a short one the
        next claims take up to MAX_CLAIM_BATCH, after a longer one a job at a time."""
        self.claim_batch = MAX_CLAIM_BATCH if seconds < SHORT_JOB_SECONDS else 1

    def lost_track(self) -> None:
        """After a lost connection: take claims from the claim list in Redis, one by one."""
        self._check_own_claims = True
        self.ahead.clear()
