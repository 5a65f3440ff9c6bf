"""Killed workers: their jobs are retried per policy (or failed with WorkerDied) once; nothing is dropped.

A worker's death is staged for real up to the moment of the kill (claim, started registry,
the horse's bookkeeping); then time is moved past the dead-worker window, and recovery runs.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import fakeredis
import pytest
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.worker import WorkerStatus

from runner import current_attempt
from runner.authoring.registry import Registry, make_spec
from runner.config import Settings
from runner.errors import BackendUnavailable
from runner.journal.entries import JOURNAL_KEY
from runner.rq_seam.keys import DEAD_AFTER_FIELD, execution_key
from runner.rq_seam.queues import queue_for
from runner.rq_seam.scheduler_guard import break_lock, scheduler_is_silent
from runner.rq_seam.worker import SeamWorker
from runner.services.backends import Backends
from runner.services.invocation import enqueue_invocation
from runner.store.models import InvocationRecord, utcnow
from runner.store.sql_store import Store
from runner.worker.attempts import WORKER_DIED
from runner.worker.claims import CLAIMANTS_KEY, claim, claim_key, claimants, release_claim, return_claims
from runner.worker.duties import RECOVERY_PASS_KEY
from runner.worker.environment import install_environment
from runner.worker.liveness import Liveness
from runner.worker.lost_jobs import JOB_LOST, mark_lost_jobs
from runner.worker.recovery import (
    StartedEntry,
    find_abandoned,
    recover_abandoned_jobs,
    recover_entry,
    settle_dead_workers,
)
from runner.worker.run import build_worker
from runner.worker.runner_worker import RunnerWorker
from tests.history import insert_rows, update_row
from tests.unit.conftest import rq_job, stored_row

QUEUE = "default"
DEAD_AFTER = 15.0
calls: list[int] = []


def counted() -> dict[str, int]:
    """Succeeds, remembering which attempt ran."""
    calls.append(current_attempt())
    return {"attempt": current_attempt()}


@pytest.fixture
def registry() -> Registry:
    registry = Registry()
    for retries, backoff, name in ((0, None, "once"), (2, None, "twice_more"), (2, [30], "later")):
        registry.add(make_spec(counted, queue=QUEUE, timeout=10, retries=retries, backoff=backoff, name=name))
    return registry


@pytest.fixture
def new_worker(backends: Backends, registry: Registry) -> Iterator[Callable[[], RunnerWorker]]:
    def build() -> RunnerWorker:
        return build_worker([QUEUE], backends, registry)

    calls.clear()
    yield build
    install_environment(None)


def later(seconds: float = DEAD_AFTER + 1) -> Liveness:
    """A moment `seconds` from now, Redis up for ever."""
    return Liveness(now=time.time() + seconds, redis_up_since=-math.inf, default_dead_after=DEAD_AFTER)


def invoke(backends: Backends, registry: Registry, name: str) -> str:
    return enqueue_invocation(registry.get(name), {}, backends).id


def take(worker: RunnerWorker) -> tuple[Job, Queue]:
    """Start `worker` and have it take one job off its queue (claimed, not started)."""
    worker.register_birth()
    claimed = worker.dequeue_job_and_maintain_ttl(None)
    assert claimed is not None
    return claimed


def take_and_die(worker: RunnerWorker, attempt_began: bool = True) -> StartedEntry:
    """Do what a worker does up to the function call, then stop (as if SIGKILLed)."""
    job, _queue = take(worker)
    if not attempt_began:  # killed before the attempt began: as for a function that waits for a slot
        def begin_only(job: Job, pipeline: Any) -> Any:
            release_claim(pipeline, worker.name, job.id)
            return SeamWorker.begin(worker, job, pipeline)

        worker.begin = begin_only  # type: ignore[method-assign]
    # The worker starts the job and begins its attempt in one script call.
    execution = worker.prepare_execution(job)
    if not attempt_began:  # its status not yet `started`: recovery reads that the attempt never began
        worker.connection.hset(job.key, "status", JobStatus.QUEUED.value)
    return StartedEntry(QUEUE, job.id, execution.id)


def events(caplog: pytest.LogCaptureFixture, job_id: str) -> list[dict[str, Any]]:
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "runner.events"]
    return [line for line in lines if line["job_id"] == job_id]


# Claims: a job taken off its queue is always somewhere in Redis


def test_a_claimed_job_moves_to_the_started_registry_in_one_step(
    connection: fakeredis.FakeRedis, backends: Backends, registry: Registry, new_worker: Callable[[], Any]
) -> None:
    job_id = invoke(backends, registry, "once")
    worker = new_worker()
    claimed = take(worker)
    assert claimed[0].id == job_id
    assert connection.lrange(claim_key(worker.name), 0, -1) == [job_id.encode()]
    assert queue_for(QUEUE, connection).count == 0
    worker.prepare_execution(claimed[0])
    assert connection.llen(claim_key(worker.name)) == 0
    assert job_id in StartedJobRegistry(QUEUE, connection=connection).get_job_ids(cleanup=False)
    assert connection.hget(execution_key(job_id, worker.execution.id), DEAD_AFTER_FIELD) == b"15.0"


def test_claims_of_a_dead_worker_go_back_to_the_front_once(
    connection: fakeredis.FakeRedis, backends: Backends, registry: Registry
) -> None:
    first, second = invoke(backends, registry, "once"), invoke(backends, registry, "once")
    queue = queue_for(QUEUE, connection)
    claimed = claim(connection, [queue], "gone")
    assert (claimed.queue, claimed.job_ids) == (queue, [first])
    assert return_claims(connection, "gone") == [first]
    assert return_claims(connection, "gone") == []  # a second recoverer finds nothing to do
    assert queue.get_job_ids() == [first, second]


def test_burst_worker_leaves_no_claims_behind(
    connection: fakeredis.FakeRedis, backends: Backends, registry: Registry, new_worker: Callable[[], Any]
) -> None:
    ids = [invoke(backends, registry, "once") for _ in range(3)]
    worker = new_worker()
    assert worker.work(burst=True)
    assert [rq_job(connection, job_id).get_status() for job_id in ids] == [JobStatus.FINISHED] * 3
    assert connection.llen(claim_key(worker.name)) == 0
    assert worker.name not in claimants(connection)  # a clean exit forgets the worker


# Abandoned executions


def test_a_silent_execution_is_abandoned_a_beating_one_is_not(
    connection: fakeredis.FakeRedis, backends: Backends, registry: Registry, new_worker: Callable[[], Any]
) -> None:
    invoke(backends, registry, "once")
    entry = take_and_die(new_worker())
    assert find_abandoned(connection, [QUEUE], later(DEAD_AFTER - 1)) == []
    assert find_abandoned(connection, [QUEUE], later()) == [entry]
    # Redis restarted a moment ago: nobody could heartbeat while it was down.
    restarted = Liveness(now=time.time() + 100, redis_up_since=time.time() + 95, default_dead_after=DEAD_AFTER)
    assert find_abandoned(connection, [QUEUE], restarted) == []


def test_each_worker_is_judged_by_its_own_window(
    connection: fakeredis.FakeRedis, backends: Backends, registry: Registry, new_worker: Callable[[], Any]
) -> None:
    invoke(backends, registry, "once")
    worker = new_worker()
    worker.supervise(dead_after=60, grace_seconds=1)
    take_and_die(worker)
    assert find_abandoned(connection, [QUEUE], later(30)) == []
    assert len(find_abandoned(connection, [QUEUE], later(61))) == 1


def test_a_job_with_retries_left_is_retried_and_the_attempt_counted(
    connection: fakeredis.FakeRedis,
    backends: Backends,
    registry: Registry,
    store: Store,
    new_worker: Callable[[], Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="runner.events")
    job_id = invoke(backends, registry, "twice_more")
    entry = take_and_die(new_worker())
    recovery = recover_entry(connection, entry)
    assert recovery is not None
    assert (recovery.event, recovery.status, recovery.attempt) == ("retried", "queued", 1)
    message = "The worker running this job died (attempt 1 of 3)."
    assert recovery.error == {"type": WORKER_DIED, "message": message}
    job = rq_job(connection, job_id)
    assert (job.get_status(), job.retries_left, job.meta["attempts"]) == (JobStatus.QUEUED, 1, 1)
    assert queue_for(QUEUE, connection).get_job_ids() == [job_id]
    assert StartedJobRegistry(QUEUE, connection=connection).get_job_ids(cleanup=False) == []
    assert not connection.exists(execution_key(job_id, entry.execution_id))
    record = stored_row(store, job_id)
    assert (record.status, record.attempts, record.error) == ("queued", 1, recovery.error)
    retried = events(caplog, job_id)[-1]
    assert (retried["event"], retried["attempt"], retried["error"]["type"]) == ("retried", 1, WORKER_DIED)
    # The next worker runs it: the attempt count goes on from where it was.
    assert new_worker().work(burst=True)
    assert calls == [2]
    record = stored_row(store, job_id)
    assert (record.status, record.attempts, record.result) == ("finished", 2, {"attempt": 2})


def test_a_retry_with_backoff_waits_in_the_scheduled_registry(
    connection: fakeredis.FakeRedis, backends: Backends, registry: Registry, store: Store, new_worker: Any
) -> None:
    job_id = invoke(backends, registry, "later")
    recovery = recover_entry(connection, take_and_die(new_worker()))
    assert recovery is not None and recovery.status == "scheduled"
    scheduled = ScheduledJobRegistry(QUEUE, connection=connection)
    assert scheduled.get_job_ids() == [job_id]
    assert 25 < scheduled.get_scheduled_time(job_id).timestamp() - time.time() <= 30
    assert stored_row(store, job_id).status == "scheduled"


def test_a_job_without_retries_left_fails_with_worker_died(
    connection: fakeredis.FakeRedis,
    backends: Backends,
    registry: Registry,
    store: Store,
    new_worker: Callable[[], Any],
    client: Any,
) -> None:
    job_id = invoke(backends, registry, "once")
    recovery = recover_entry(connection, take_and_die(new_worker()))
    assert recovery is not None and (recovery.event, recovery.status) == ("failed", "failed")
    error = {"type": WORKER_DIED, "message": "The worker running this job died (attempt 1 of 1)."}
    assert job_id in FailedJobRegistry(QUEUE, connection=connection).get_job_ids()
    view = client.get(f"/jobs/{job_id}").get_json()
    assert (view["status"], view["attempts"], view["error"]) == ("failed", 1, error)
    assert view["ended_at"] is not None
    record = stored_row(store, job_id)
    assert (record.status, record.attempts, record.error) == ("failed", 1, error)
    assert record.ended_at is not None
    assert queue_for(QUEUE, connection).count == 0


def test_an_execution_is_recovered_once_when_workers_race(
    connection: fakeredis.FakeRedis, backends: Backends, registry: Registry, store: Store, new_worker: Any
) -> None:
    job_id = invoke(backends, registry, "twice_more")
    entry = take_and_die(new_worker())
    outcomes = [recover_entry(connection, entry) for _ in range(3)]
    assert [outcome is not None for outcome in outcomes] == [True, False, False]
    assert queue_for(QUEUE, connection).get_job_ids() == [job_id]
    assert rq_job(connection, job_id).retries_left == 1


def test_an_attempt_that_never_began_is_requeued_uncounted(
    connection: fakeredis.FakeRedis, backends: Backends, registry: Registry, store: Store, new_worker: Any
) -> None:
    other = invoke(backends, registry, "once")
    job_id = invoke(backends, registry, "twice_more")
    queue_for(QUEUE, connection).remove(other)  # so that `job_id` is taken first
    queue_for(QUEUE, connection).enqueue_job(rq_job(connection, other))
    entry = take_and_die(new_worker(), attempt_began=False)
    assert entry.job_id == job_id
    recovery = recover_entry(connection, entry)
    assert recovery is not None and (recovery.counted, recovery.attempt, recovery.error) == (False, 0, None)
    job = rq_job(connection, job_id)
    assert (job.retries_left, job.meta["attempts"]) == (2, 0)
    assert queue_for(QUEUE, connection).get_job_ids() == [job_id, other]  # back at the front


def test_a_stopped_attempt_is_put_back_at_the_front_without_counting(
    connection: fakeredis.FakeRedis, backends: Backends, registry: Registry, store: Store, new_worker: Any
) -> None:
    job_id = invoke(backends, registry, "twice_more")
    entry = take_and_die(new_worker())
    waiting = invoke(backends, registry, "once")
    recovery = recover_entry(connection, entry, reason="worker stopped", count_attempt=False)
    assert recovery is not None and (recovery.status, recovery.attempt, recovery.counted) == ("queued", 0, False)
    job = rq_job(connection, job_id)
    assert (job.retries_left, job.meta["attempts"], job.get_status()) == (2, 0, JobStatus.QUEUED)
    assert queue_for(QUEUE, connection).get_job_ids() == [job_id, waiting]
    assert (stored_row(store, job_id).status, stored_row(store, job_id).attempts) == ("queued", 0)


def test_the_next_worker_recovers_a_dead_workers_job_in_its_maintenance(
    connection: fakeredis.FakeRedis, backends: Backends, registry: Registry, store: Store, new_worker: Any
) -> None:
    job_id = invoke(backends, registry, "twice_more")
    entry = take_and_die(new_worker())
    long_ago = time.time() - DEAD_AFTER - 5
    connection.hset(execution_key(job_id, entry.execution_id), "last_heartbeat", long_ago)
    connection.delete(RECOVERY_PASS_KEY + QUEUE)  # the dead worker's own pass a moment ago
    assert new_worker().work(burst=True)
    assert calls == [2]
    record = stored_row(store, job_id)
    assert (record.status, record.attempts) == ("finished", 2)


# Dead workers: their claims come back, their registrations go


def test_a_dead_workers_claim_is_returned_and_it_is_unregistered(
    connection: fakeredis.FakeRedis, backends: Backends, registry: Registry, new_worker: Callable[[], Any]
) -> None:
    job_id = invoke(backends, registry, "once")
    dead, alive = new_worker(), new_worker()
    dead.register_birth()
    alive.register_birth()
    assert dead.dequeue_job_and_maintain_ttl(None) is not None  # then killed before it started the job
    assert settle_dead_workers(connection, later(1), alive.name) == []
    assert settle_dead_workers(connection, later(), alive.name) == [dead.name]
    assert queue_for(QUEUE, connection).get_job_ids() == [job_id]
    assert not connection.exists(dead.key)
    assert dead.key.encode() not in connection.smembers("rq:workers")
    assert connection.smembers(CLAIMANTS_KEY) == {alive.name.encode()}


def test_a_worker_presumed_dead_registers_again_when_it_is_heard_from(
    connection: fakeredis.FakeRedis, new_worker: Callable[[], Any]
) -> None:
    worker = new_worker()
    worker.register_birth()
    settle_dead_workers(connection, later(), "someone else")
    assert not connection.exists(worker.key)
    worker.heartbeat()
    assert worker.key.encode() in connection.smembers("rq:workers")
    assert connection.hget(worker.key, DEAD_AFTER_FIELD) == b"15.0"
    assert worker.name in claimants(connection)


def test_recovery_pass_ignores_live_workers(
    connection: fakeredis.FakeRedis, backends: Backends, registry: Registry, store: Store, new_worker: Any
) -> None:
    job_id = invoke(backends, registry, "once")
    worker = new_worker()
    take_and_die(worker)
    assert recover_abandoned_jobs(connection, [QUEUE], later(1), own_name="peer") == []
    assert rq_job(connection, job_id).get_status() == JobStatus.STARTED
    assert connection.exists(worker.key)


# Graceful stop


def test_a_stop_between_dequeue_and_start_puts_the_job_back(
    connection: fakeredis.FakeRedis, backends: Backends, registry: Registry, new_worker: Callable[[], Any]
) -> None:
    job_id = invoke(backends, registry, "once")
    worker = new_worker()
    claimed = take(worker)
    worker._stop_requested = True  # RQ's own flag, as its signal handler sets it
    worker.execute_job(*claimed)
    assert calls == []
    assert queue_for(QUEUE, connection).get_job_ids() == [job_id]
    assert worker.dequeue_job_and_maintain_ttl(1) is None  # a stopping worker takes nothing new
    assert queue_for(QUEUE, connection).get_job_ids() == [job_id]
    assert worker.get_state() != WorkerStatus.BUSY


# Rows whose job Redis lost


def test_a_started_row_whose_job_redis_lost_is_marked_failed(
    connection: fakeredis.FakeRedis, backends: Backends, registry: Registry, store: Store, new_worker: Any,
) -> None:
    running, lost = invoke(backends, registry, "once"), invoke(backends, registry, "once")
    assert new_worker().work(burst=True)
    for job_id in (running, lost):  # rows that still say started, as while their jobs run
        update_row(store, job_id, status="started", result=None, ended_at=None)
    rq_job(connection, running).set_status(JobStatus.STARTED)
    connection.delete(Job.key_for(lost))  # Redis restarted without persistence, say
    time.sleep(0.01)
    assert mark_lost_jobs(store, connection, 0) == 1
    assert stored_row(store, running).status == "started"
    assert (stored_row(store, lost).status, stored_row(store, lost).error) == ("failed", JOB_LOST)
    assert stored_row(store, lost).ended_at is not None
    assert mark_lost_jobs(store, connection, 0) == 0


def test_a_row_whose_end_waits_in_the_journal_is_not_taken_for_lost(
    connection: fakeredis.FakeRedis, backends: Backends, registry: Registry, store: Store, new_worker: Any,
    caplog: pytest.LogCaptureFixture, closed_port: int,
) -> None:
    # The worker ran the job while the database was away: its history waits in the journal, and
    # Redis has since forgotten the job; the row, once in, must come from the journal, not be lost.
    caplog.set_level(logging.INFO, logger="runner.events")
    job_id = invoke(backends, registry, "once")
    insert_rows(store, InvocationRecord(id=job_id, function="once", queue=QUEUE, status="started", input={},
                                        attempts=1, created_at=utcnow() - timedelta(hours=1),
                                        updated_at=utcnow() - timedelta(hours=1)))
    worker = new_worker()
    worker.store = Store(f"postgresql://postgres@127.0.0.1:{closed_port}/none")
    assert worker.work(burst=True)
    assert connection.xlen(JOURNAL_KEY) >= 2  # the new row, its start and its end wait
    connection.delete(Job.key_for(job_id))
    with pytest.raises(BackendUnavailable):  # the journal cannot be applied: nothing is marked lost
        mark_lost_jobs(worker.store, connection, 1)
    assert connection.xlen(JOURNAL_KEY) >= 2
    assert mark_lost_jobs(Store(store.url), connection, 1) == 0  # the database is back: applied first, not lost
    assert connection.xlen(JOURNAL_KEY) == 0
    assert stored_row(store, job_id).status == "finished"
    assert [line["event"] for line in events(caplog, job_id)].count("finished") == 1


def test_recent_started_rows_are_left_alone(store: Store, connection: fakeredis.FakeRedis) -> None:
    insert_rows(store, InvocationRecord(id="fresh", function="f", queue=QUEUE, status="started", input={}, attempts=1,
                               progress_percent=0, progress_message="", created_at=utcnow(), updated_at=utcnow()))
    assert mark_lost_jobs(store, connection, DEAD_AFTER) == 0
    assert stored_row(store, "fresh").status == "started"


# Schedulers


def test_only_the_lock_of_the_silent_holder_is_broken(connection: fakeredis.FakeRedis) -> None:
    connection.set("rq:scheduler-lock:q", "dead-one")
    assert not break_lock(connection, "rq:scheduler-lock:q", "someone-else")
    assert break_lock(connection, "rq:scheduler-lock:q", "dead-one")
    assert connection.get("rq:scheduler-lock:q") is None
    connection.hset("rq:scheduler:live-one", "last_heartbeat", "2100-01-01T00:00:00.000000Z")
    assert not scheduler_is_silent(connection, "live-one", later())
    assert scheduler_is_silent(connection, "dead-one", later())


def test_a_workers_own_running_job_is_not_taken_for_abandoned(
    connection: fakeredis.FakeRedis, backends: Backends, registry: Registry, store: Store, new_worker: Any
) -> None:
    job_id = invoke(backends, registry, "once")
    worker = new_worker()
    entry = take_and_die(worker)  # alive after all, but cut off from Redis for longer than its window
    assert recover_abandoned_jobs(connection, [QUEUE], later(), own_name=worker.name,
                                  running={entry.execution_id}) == []
    assert rq_job(connection, job_id).get_status() == JobStatus.STARTED


def test_a_waiting_worker_claims_from_one_queue_or_polls_several(
    connection: fakeredis.FakeRedis, backends: Backends, registry: Registry
) -> None:
    job_id = invoke(backends, registry, "once")
    single = build_worker([QUEUE], backends, registry)  # waits on its queue (BLMOVE)
    single.register_birth()
    claimed = single.dequeue_job_and_maintain_ttl(1)
    assert claimed is not None and claimed[0].id == job_id
    assert connection.lrange(claim_key(single.name), 0, -1) == [job_id.encode()]
    several = build_worker(["demo_tasks", QUEUE], backends, registry)
    several.register_birth()
    started = time.monotonic()
    assert several.dequeue_job_and_maintain_ttl(1, max_idle_time=1) is None  # nothing to take: it gives up idle
    assert 0.9 < time.monotonic() - started < 3
    install_environment(None)


@pytest.mark.parametrize(("raw", "dead_after", "heartbeat"), [("6", 6.0, 2.0), ("1", 3.0, 1.0), ("", 15.0, 5.0)])
def test_the_window_and_grace_period_come_from_the_environment(
    backends: Backends, registry: Registry, raw: str, dead_after: float, heartbeat: float
) -> None:
    settings = Settings.from_env({"RUNNER_WORKER_DEAD_AFTER_SECONDS": raw, "RUNNER_WORKER_GRACE_SECONDS": "2.5"})
    worker = build_worker([QUEUE], Backends(backends.connection, backends.store, settings), registry)
    install_environment(None)
    assert (worker.dead_after, worker.heartbeat_seconds, worker.grace_seconds) == (dead_after, heartbeat, 2.5)
    assert worker.job_monitoring_interval == 1  # a busy worker checks its heartbeat and grace period every second
