"""Claiming jobs: a few at a time, never more than half of what waits, read with the claim, and wake-up tokens."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
from redis.client import Pipeline
from rq import Queue
from rq.serializers import JSONSerializer

import runner.journal.write_behind
import runner.worker.supervision
from runner.authoring.registry import Registry
from runner.journal.write_behind import journal_key
from runner.rq_seam.job_hash import ENTRY_POINT
from runner.rq_seam.queues import queue_for, wake_key
from runner.services.backends import Backends
from runner.services.control import cancel_job
from runner.services.invocation import enqueue_invocation
from runner.services.job_views import ended_key, get_job_view
from runner.worker.claims import claim_and_read, claim_key, wait_for_wake_up
from runner.worker.execution import install_environment
from runner.worker.main import RunnerSimpleWorker, build_worker

WORKER = "w1"


def fill(connection: fakeredis.FakeRedis, name: str, count: int) -> tuple[Queue, list[str]]:
    queue = queue_for(name, connection)
    ids = [queue.enqueue("runner.worker.execution.run_invocation", "noop", {}).id for _ in range(count)]
    return queue, ids


@pytest.mark.parametrize(("waiting", "most", "taken"), [(1, 8, 1), (2, 8, 1), (3, 8, 1), (4, 8, 2), (16, 8, 8),
                                                        (40, 8, 8), (40, 1, 1)])
def test_takes_at_most_half_of_what_waits(connection: fakeredis.FakeRedis, waiting: int, most: int,
                                          taken: int) -> None:
    queue, ids = fill(connection, "q", waiting)
    found_queue, claimed = claim_and_read(connection, [queue], WORKER, most)
    assert found_queue.name == "q"
    assert [job_id for job_id, _data in claimed] == ids[:taken]
    assert [raw.decode() for raw in connection.lrange(claim_key(WORKER), 0, -1)] == ids[:taken]
    assert queue.get_job_ids() == ids[taken:]


def test_each_claim_comes_with_its_job(connection: fakeredis.FakeRedis) -> None:
    queue, ids = fill(connection, "q", 4)
    _queue, claimed = claim_and_read(connection, [queue], WORKER, 8)
    for job_id, data in claimed:
        job = queue.job_class(job_id, connection=connection, serializer=JSONSerializer)
        job.restore(data)
        assert (job.id, job.func_name, list(job.args)) == (job_id, ENTRY_POINT, ["noop", {}])


def test_the_first_non_empty_queue_wins(connection: fakeredis.FakeRedis) -> None:
    first, second = queue_for("first", connection), queue_for("second", connection)
    _, later = fill(connection, "second", 2)
    found_queue, claimed = claim_and_read(connection, [first, second], WORKER, 8)
    assert (found_queue.name, [job_id for job_id, _ in claimed]) == ("second", later[:1])
    assert claim_and_read(connection, [first], WORKER, 8) == (first, [])


def test_every_push_leaves_one_wake_up_token(connection: fakeredis.FakeRedis) -> None:
    fill(connection, "q", 3)
    assert connection.lrange(wake_key("q"), 0, -1) == [b"1"]


def test_a_claim_that_leaves_jobs_behind_wakes_another_worker(connection: fakeredis.FakeRedis) -> None:
    queue, _ids = fill(connection, "q", 3)
    connection.delete(wake_key("q"))
    claim_and_read(connection, [queue], WORKER, 8)  # takes 1 of 3
    assert connection.llen(wake_key("q")) == 1
    connection.delete(wake_key("q"))
    claim_and_read(connection, [queue], WORKER, 8)  # takes 1 of 2
    claim_and_read(connection, [queue], WORKER, 8)  # takes the last: nobody to wake
    assert connection.llen(wake_key("q")) == 1


def test_an_idle_worker_wakes_when_a_job_is_pushed(connection: fakeredis.FakeRedis) -> None:
    queue = queue_for("q", connection)
    pusher = threading.Timer(0.2, lambda: queue.enqueue("runner.worker.execution.run_invocation", "noop", {}))
    started = time.monotonic()
    pusher.start()
    wait_for_wake_up(connection, [queue_for("other", connection), queue], 5)
    waited = time.monotonic() - started
    pusher.join()
    assert 0.15 < waited < 4
    assert claim_and_read(connection, [queue], WORKER, 8)[1]


def test_a_job_canceled_after_a_batch_claim_never_starts(
    connection: fakeredis.FakeRedis, backends: Backends, registry: Registry
) -> None:
    spec = registry.get("simple_calculation")
    ids = [enqueue_invocation(spec, {"expression": f"{n}+1"}, backends).id for n in range(4)]
    worker = build_worker([spec.queue], backends, registry, RunnerSimpleWorker)
    worker.claim_batch = 8
    worker.register_birth()
    try:
        first, queue = worker.dequeue_job_and_maintain_ttl(None) or (None, None)
        assert first is not None and queue is not None and first.id == ids[0]  # ids[1] is claimed with it
        cancel_job(ids[1], backends)
        worker.execute_job(first, queue)
        second, queue = worker.dequeue_job_and_maintain_ttl(None) or (None, None)
        assert second is not None and queue is not None and second.id == ids[1]
        worker.execute_job(second, queue)
    finally:
        install_environment(None)
    assert get_job_view(ids[0], backends).status == "finished"  # its end went out before the skipped start
    canceled = get_job_view(ids[1], backends)
    assert (canceled.status, canceled.attempts, canceled.started_at) == ("canceled", 0, None)
    assert connection.llen(claim_key(worker.name)) == 0
    assert connection.zcard(f"rq:wip:{spec.queue}") == 0


@pytest.fixture
def calculation_worker(backends: Backends, registry: Registry) -> Iterator[RunnerSimpleWorker]:
    """A registered worker of simple_calculation's queue, torn down after the test."""
    worker = build_worker([registry.get("simple_calculation").queue], backends, registry, RunnerSimpleWorker)
    assert isinstance(worker, RunnerSimpleWorker)
    worker.register_birth()
    yield worker
    worker.teardown()
    install_environment(None)


def test_a_waiting_worker_claims_in_the_same_round_trip_as_its_wait(
    connection: fakeredis.FakeRedis, backends: Backends, registry: Registry, calculation_worker: RunnerSimpleWorker
) -> None:
    spec, worker = registry.get("simple_calculation"), calculation_worker
    started = time.monotonic()
    worker.wait_for_work(0.2)  # nothing waits: the wait runs out, the claim after it finds nothing
    assert time.monotonic() - started >= 0.15
    assert not worker._claimed_ahead

    pusher = threading.Timer(0.1, lambda: enqueue_invocation(spec, {"expression": "6*7"}, backends))
    pusher.start()
    worker.wait_for_work(5)
    pusher.join()
    [(job_id, fields)] = list(worker._claimed_ahead)
    assert fields[b"status"] == b"queued"
    assert connection.lrange(claim_key(worker.name), 0, -1) == [job_id.encode()]  # claimed, not in limbo
    assert connection.llen(f"rq:queue:{spec.queue}") == 0

    job, queue = worker.dequeue_job_and_maintain_ttl(None) or (None, None)  # taken from the claim, no call
    assert job is not None and queue is not None and job.id == job_id
    worker.execute_job(job, queue)
    worker.send_held()  # a job's end goes out with the worker's next move: make that move now
    assert get_job_view(job_id, backends).status == "finished"


def test_a_claim_lost_with_the_script_is_made_again(
    connection: fakeredis.FakeRedis, backends: Backends, registry: Registry, calculation_worker: RunnerSimpleWorker
) -> None:
    spec, worker = registry.get("simple_calculation"), calculation_worker
    claim_and_read(connection, [queue_for(spec.queue, connection)], worker.name)  # the script is loaded
    job_id = enqueue_invocation(spec, {"expression": "1+1"}, backends).id
    connection.script_flush()  # Redis restarted, say: the pipelined claim answers NOSCRIPT
    worker.wait_for_work(1)
    assert not worker._claimed_ahead
    assert connection.llen(f"rq:queue:{spec.queue}") == 1  # still waits on its queue
    job, _queue = worker.dequeue_job_and_maintain_ttl(None) or (None, None)  # claims (and loads the script)
    assert job is not None and job.id == job_id


class WriteBehindWorker(RunnerSimpleWorker):
    uses_write_behind = True  # as `python -m runner worker`'s, whose in-process jobs need signals and a thread


def test_a_worker_out_of_claimed_jobs_commits_the_row_before_the_claim_that_sends_the_end(
    connection: fakeredis.FakeRedis, backends: Backends, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = registry.get("simple_calculation")
    # The job's start waits this long for its end before the writer thread takes it: however slow
    # the machine, the writer thread is not at a batch when the worker commits the end itself.
    monkeypatch.setattr(runner.journal.write_behind, "HOLD_SECONDS", 60.0)
    worker = build_worker([spec.queue], backends, registry, WriteBehindWorker)
    assert isinstance(worker, WriteBehindWorker)
    worker.register_birth()
    seen: list[tuple[str, bool]] = []
    real_claim = runner.worker.supervision.claim_and_read

    def claim(*args: Any, before: Pipeline | None = None, **kwargs: Any) -> Any:
        row = backends.store.get(job_id)
        commands = [tuple(str(part) for part in command[:2]) for command, _ in before.command_stack] if before else []
        seen.append((row.status if row else "", ("LPUSH", ended_key(job_id)) in commands))
        # The end is journaled (RPUSH), then the journal cleaned (LREM), in this same call.
        assert {"RPUSH", "LREM"} <= {name for name, _key in commands}
        return real_claim(*args, before=before, **kwargs)

    try:
        job_id = enqueue_invocation(spec, {"expression": "6*7"}, backends).id
        job, queue = worker.dequeue_job_and_maintain_ttl(None) or (None, None)
        assert job is not None and queue is not None
        worker.execute_job(job, queue)
        monkeypatch.setattr(runner.worker.supervision, "claim_and_read", claim)
        assert worker.dequeue_job_and_maintain_ttl(None) is None  # nothing else waits
        # Committed ahead, the end is not handed to the writer thread to commit a second time.
        assert worker._write_behind is not None and not worker._write_behind._pending
    finally:
        worker.teardown()
        install_environment(None)
    assert seen == [("finished", True)]  # the row said finished when the claim carried the end and the wake-up
    assert get_job_view(job_id, backends).status == "finished"
    assert connection.llen(ended_key(job_id)) == 1
    assert connection.llen(journal_key(worker.name)) == 0
