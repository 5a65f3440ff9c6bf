"""The journal: every history write as a stream entry, applied to SQL by one projector, in order, once, fenced."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest
from rq.job import Job

from runner import current_attempt
from runner.authoring.registry import Registry, make_spec
from runner.errors import BackendUnavailable
from runner.journal import entries as journal
from runner.journal.projector import Projector, fold, start_projector_thread, stop_projector_thread
from runner.journal.reads import read_history
from runner.rq_seam.queues import queue_for
from runner.services.backends import Backends
from runner.services.invocation import enqueue_invocation
from runner.store.models import utcnow
from runner.store.sql_store import Store
from runner.worker.environment import install_environment
from runner.worker.liveness import Liveness
from runner.worker.recovery import find_abandoned, recover_entry
from runner.worker.run import build_worker
from runner.worker.runner_worker import RunnerWorker
from tests.unit.conftest import rq_job

QUEUE = "default"
NEW_ROW = {"function": "f", "queue": "q", "status": "queued", "input": {}, "progress_percent": 0,
           "progress_message": "queued", "attempts": 0}


def entry(job_id: str, position: int, fence: int = 0, new: bool = False, **values: Any) -> journal.Entry:
    return journal.Entry(position * journal.POSITION_SCALE, job_id, fence, new, values)


def plain_store(store: Store) -> Store:
    """The same database, read without applying the journal first."""
    return Store(store.url)


# Folding a batch


def test_a_short_jobs_new_row_start_and_end_fold_into_one_insert() -> None:
    [change] = fold([entry("j", 1, new=True, **NEW_ROW, created_at=utcnow()),
                     entry("j", 2, fence=1, status="started", attempts=1),
                     entry("j", 3, fence=1, status="finished", result=42)])
    assert change.insert and (change.fence, change.position) == (1, 3 * journal.POSITION_SCALE)
    assert (change.values["status"], change.values["attempts"], change.values["result"]) == ("finished", 1, 42)
    assert change.values["function"] == "f"


def test_a_write_of_an_older_attempt_after_a_newer_ones_is_left_out_of_the_fold() -> None:
    [change] = fold([entry("j", 1, fence=1, status="started", attempts=1),
                     entry("j", 2, fence=2, status="started", attempts=2),
                     entry("j", 3, fence=1, status="finished", result="late")])  # attempt 1's worker was cut off
    assert (change.fence, change.values["status"], change.values["attempts"]) == (2, "started", 2)
    assert "result" not in change.values


def test_each_job_gets_its_own_change() -> None:
    changes = fold([entry("a", 1, new=True, **NEW_ROW), entry("b", 2, new=True, **NEW_ROW),
                    entry("a", 3, fence=1, status="started")])
    assert sorted((change.job_id, change.values["status"]) for change in changes) == [("a", "started"),
                                                                                     ("b", "queued")]


# Applying the journal


def append(connection: fakeredis.FakeRedis, job_id: str, values: dict[str, Any], *, fence: int = 0,
           new: bool = False) -> None:
    with connection.pipeline() as pipeline:
        journal.append(pipeline, job_id, values, fence=fence, new=new)
        pipeline.execute()


def test_entries_are_applied_oldest_first_in_one_batch_then_deleted(
    connection: fakeredis.FakeRedis, store: Store
) -> None:
    append(connection, "j", {**NEW_ROW, "created_at": utcnow()}, new=True)
    append(connection, "j", {"status": "started", "attempts": 1}, fence=1)
    append(connection, "j", {"status": "finished", "result": {"x": 1}}, fence=1)
    projector = Projector(connection, plain_store(store))
    assert projector.apply_batch() == 3
    assert connection.xlen(journal.JOURNAL_KEY) == 0
    row = plain_store(store).get("j")
    assert row is not None and (row.status, row.attempts, row.result, row.fence) == ("finished", 1, {"x": 1}, 1)
    assert projector.apply_batch() == 0


def test_while_the_database_is_away_entries_wait_in_order(
    connection: fakeredis.FakeRedis, store: Store, closed_port: int
) -> None:
    append(connection, "j", {**NEW_ROW, "created_at": utcnow()}, new=True)
    append(connection, "j", {"status": "started", "attempts": 1}, fence=1)
    away = Store(f"postgresql://postgres@127.0.0.1:{closed_port}/none")
    with pytest.raises(BackendUnavailable):
        Projector(connection, away).apply_batch()
    assert connection.xlen(journal.JOURNAL_KEY) == 2  # nothing lost, nothing reordered
    append(connection, "j", {"status": "finished"}, fence=1)
    assert Projector(connection, plain_store(store)).catch_up(100) == 3
    assert plain_store(store).get("j").status == "finished"  # type: ignore[union-attr]


def test_a_batch_applied_again_after_a_newer_one_changes_nothing(
    connection: fakeredis.FakeRedis, store: Store
) -> None:
    # A projector died after its commit and before its delete; the next one applies the batch again.
    append(connection, "j", {**NEW_ROW, "created_at": utcnow()}, new=True)
    append(connection, "j", {"status": "started", "attempts": 1}, fence=1)
    found = connection.xrange(journal.JOURNAL_KEY)
    first_batch = [journal.decode(stream_id, fields[b"e"]) for stream_id, fields in found]
    Projector(connection, plain_store(store)).apply_batch()
    append(connection, "j", {"status": "finished"}, fence=1)
    Projector(connection, plain_store(store)).apply_batch()
    plain_store(store).apply(fold(first_batch))  # the old batch, late
    assert plain_store(store).get("j").status == "finished"  # type: ignore[union-attr]


def test_one_projector_holds_the_lease_until_it_gives_it_back(connection: fakeredis.FakeRedis, store: Store) -> None:
    first, second = Projector(connection, store, name="a"), Projector(connection, store, name="b")
    assert first.hold_lease() and first.hold_lease()  # taken, then renewed
    assert not second.hold_lease()
    first.release_lease()
    assert second.hold_lease() and not first.hold_lease()


def test_a_projector_thread_applies_entries_as_they_arrive(connection: fakeredis.FakeRedis, store: Store) -> None:
    thread, stop = start_projector_thread(connection, plain_store(store), "test")
    try:
        append(connection, "j", {**NEW_ROW, "created_at": utcnow()}, new=True)
        deadline = time.monotonic() + 5
        while plain_store(store).get("j") is None:
            assert time.monotonic() < deadline, "the projector thread never applied the entry"
            time.sleep(0.01)
    finally:
        stop_projector_thread(thread, stop, connection, plain_store(store), "test", 1.0)
    assert not thread.is_alive()
    assert connection.get(journal.LEASE_KEY) is None  # handed back at exit


def test_a_read_of_history_applies_what_waits(connection: fakeredis.FakeRedis, store: Store) -> None:
    append(connection, "j", {**NEW_ROW, "created_at": utcnow()}, new=True)
    assert plain_store(store).get("j") is None
    assert read_history(connection, plain_store(store)).get("j") is not None


# Fencing: an attempt that was settled and retried elsewhere while it ran changes nothing


calls: list[int] = []


def counted() -> dict[str, int]:
    calls.append(current_attempt())
    return {"attempt": current_attempt()}


@pytest.fixture
def retrying_registry() -> Registry:
    registry = Registry()
    registry.add(make_spec(counted, queue=QUEUE, timeout=10, retries=2, backoff=None, name="twice_more"))
    return registry


@pytest.fixture
def new_worker(backends: Backends, retrying_registry: Registry) -> Iterator[Callable[[], RunnerWorker]]:
    calls.clear()
    yield lambda: build_worker([QUEUE], backends, retrying_registry)
    install_environment(None)


def test_a_worker_presumed_dead_cannot_end_the_job_its_successor_runs(
    connection: fakeredis.FakeRedis, backends: Backends, retrying_registry: Registry, store: Store,
    new_worker: Callable[[], RunnerWorker], caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="runner.events")
    job_id = enqueue_invocation(retrying_registry.get("twice_more"), {}, backends).id
    cut_off = new_worker()
    cut_off.register_birth()
    job, queue = cut_off.dequeue_job_and_maintain_ttl(None) or (None, None)
    assert job is not None and queue is not None
    cut_off.prepare_execution(job)  # attempt 1 starts; then its worker goes silent (paused, cut off)
    later = Liveness(now=time.time() + 60, redis_up_since=float("-inf"), default_dead_after=15)
    [abandoned] = find_abandoned(connection, [QUEUE], later)
    assert recover_entry(connection, abandoned) is not None  # retried: attempt 2 is queued
    successor = new_worker()
    successor.register_birth()
    next_job, next_queue = successor.dequeue_job_and_maintain_ttl(None) or (None, None)
    assert next_job is not None and next_queue is not None and next_job.id == job_id
    successor.prepare_execution(next_job)  # attempt 2 runs
    # Attempt 1 comes back and reports its end: nothing of it may land.
    cut_off.perform_job(job, queue)
    cut_off.send_held()
    assert rq_job(connection, job_id).get_status() == "started"
    assert rq_job(connection, job_id).latest_result() is None
    ended = [json.loads(r.getMessage()) for r in caplog.records if r.name == "runner.events"]
    events = [line["event"] for line in ended if line["job_id"] == job_id]
    assert events == ["accepted", "started", "retried", "started"]
    row = store.get(job_id)
    assert row is not None and (row.status, row.attempts, row.result) == ("started", 2, None)
    # Attempt 2 ends as usual.
    successor.perform_job(next_job, next_queue)
    successor.send_held()
    row = store.get(job_id)
    assert row is not None and (row.status, row.attempts, row.result) == ("finished", 2, {"attempt": 2})
    assert calls == [1, 2]
    for worker in (cut_off, successor):
        worker.teardown()
    assert queue_for(QUEUE, connection).count == 0


def test_a_superseded_attempts_progress_changes_nothing(
    connection: fakeredis.FakeRedis, backends: Backends, retrying_registry: Registry, store: Store,
    new_worker: Callable[[], RunnerWorker],
) -> None:
    job_id = enqueue_invocation(retrying_registry.get("twice_more"), {}, backends).id
    worker = new_worker()
    worker.register_birth()
    job, _queue = worker.dequeue_job_and_maintain_ttl(None) or (None, None)
    assert job is not None
    worker.prepare_execution(job)
    connection.hset(Job.key_for(job_id), "runner_fence", 5)  # another attempt started since
    from runner.worker.environment import current_environment
    from runner.worker.execution import RunningJob

    RunningJob(job, current_environment()).report_progress(50, "halfway")
    assert rq_job(connection, job_id).meta["progress"] == {"percent": 0, "message": "started"}
    worker.teardown()
