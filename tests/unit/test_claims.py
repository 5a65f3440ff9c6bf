"""Claiming jobs: a few at a time, never more than half of what waits, the last end sent with the claim, wake-ups."""

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

import runner.worker.taking
from runner.authoring.registry import Registry
from runner.journal.entries import JOURNAL_KEY
from runner.rq_seam.job_hash import ENTRY_POINT
from runner.rq_seam.macros import SUCCESS
from runner.rq_seam.queues import queue_for, wake_key
from runner.services.backends import Backends
from runner.services.control import cancel_job
from runner.services.invocation import enqueue_invocation
from runner.services.job_views import ended_key, get_job_view
from runner.worker.claims import claim, claim_key, read_jobs, wait_for_wake_up
from runner.worker.environment import install_environment
from runner.worker.run import build_worker
from runner.worker.runner_worker import RunnerWorker

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
    claimed = claim(connection, [queue], WORKER, most)
    assert claimed.queue.name == "q"
    assert claimed.job_ids == ids[:taken]
    assert [raw.decode() for raw in connection.lrange(claim_key(WORKER), 0, -1)] == ids[:taken]
    assert queue.get_job_ids() == ids[taken:]


def test_each_claimed_job_is_read_in_one_round_trip(connection: fakeredis.FakeRedis) -> None:
    queue, ids = fill(connection, "q", 4)
    claimed = claim(connection, [queue], WORKER, 8)
    for job_id, data in zip(claimed.job_ids, read_jobs(connection, claimed.job_ids), strict=True):
        job = queue.job_class(job_id, connection=connection, serializer=JSONSerializer)
        job.restore(data)
        assert (job.id, job.func_name, list(job.args)) == (job_id, ENTRY_POINT, ["noop", {}])


def test_the_first_non_empty_queue_wins(connection: fakeredis.FakeRedis) -> None:
    first, second = queue_for("first", connection), queue_for("second", connection)
    _, later = fill(connection, "second", 2)
    claimed = claim(connection, [first, second], WORKER, 8)
    assert (claimed.queue.name, claimed.job_ids) == ("second", later[:1])
    assert claim(connection, [first], WORKER, 8).job_ids == []


def test_every_push_leaves_one_wake_up_token(connection: fakeredis.FakeRedis) -> None:
    fill(connection, "q", 3)
    assert connection.lrange(wake_key("q"), 0, -1) == [b"1"]


def test_a_claim_that_leaves_jobs_behind_wakes_another_worker(connection: fakeredis.FakeRedis) -> None:
    queue, _ids = fill(connection, "q", 3)
    connection.delete(wake_key("q"))
    claim(connection, [queue], WORKER, 8)  # takes 1 of 3
    assert connection.llen(wake_key("q")) == 1
    connection.delete(wake_key("q"))
    claim(connection, [queue], WORKER, 8)  # takes 1 of 2
    claim(connection, [queue], WORKER, 8)  # takes the last: nobody to wake
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
    assert claim(connection, [queue], WORKER, 8).job_ids


def test_a_job_canceled_after_a_batch_claim_never_starts(
    connection: fakeredis.FakeRedis, backends: Backends, registry: Registry
) -> None:
    spec = registry.get("simple_calculation")
    ids = [enqueue_invocation(spec, {"expression": f"{n}+1"}, backends).id for n in range(4)]
    worker = build_worker([spec.queue], backends, registry)
    worker.taker.claim_batch = 8
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
def calculation_worker(backends: Backends, registry: Registry) -> Iterator[RunnerWorker]:
    """A registered worker of simple_calculation's queue, torn down after the test."""
    worker = build_worker([registry.get("simple_calculation").queue], backends, registry)
    worker.register_birth()
    yield worker
    worker.teardown()
    install_environment(None)


def test_a_waiting_worker_claims_in_the_same_round_trip_as_its_wait(
    connection: fakeredis.FakeRedis, backends: Backends, registry: Registry, calculation_worker: RunnerWorker
) -> None:
    spec, worker = registry.get("simple_calculation"), calculation_worker
    started = time.monotonic()
    worker.taker.wait_for_work(0.2)  # nothing waits: the wait runs out, the claim after it finds nothing
    assert time.monotonic() - started >= 0.15
    assert not worker.taker.ahead

    pusher = threading.Timer(0.1, lambda: enqueue_invocation(spec, {"expression": "6*7"}, backends))
    pusher.start()
    worker.taker.wait_for_work(5)
    pusher.join()
    [(job_id, fields)] = list(worker.taker.ahead)
    assert fields[b"status"] == b"queued"
    assert connection.lrange(claim_key(worker.name), 0, -1) == [job_id.encode()]  # claimed, not in limbo
    assert connection.llen(f"rq:queue:{spec.queue}") == 0

    job, queue = worker.dequeue_job_and_maintain_ttl(None) or (None, None)  # taken from the claim, no call
    assert job is not None and queue is not None and job.id == job_id
    worker.execute_job(job, queue)
    worker.send_held()  # a job's end goes out with the worker's next move: make that move now
    assert get_job_view(job_id, backends).status == "finished"


def test_a_claim_lost_with_the_script_is_made_again(
    connection: fakeredis.FakeRedis, backends: Backends, registry: Registry, calculation_worker: RunnerWorker
) -> None:
    spec, worker = registry.get("simple_calculation"), calculation_worker
    claim(connection, [queue_for(spec.queue, connection)], worker.name)  # the script is loaded
    job_id = enqueue_invocation(spec, {"expression": "1+1"}, backends).id
    connection.script_flush()  # Redis restarted, say: the pipelined claim answers NOSCRIPT
    worker.taker.wait_for_work(1)
    assert not worker.taker.ahead
    assert connection.llen(f"rq:queue:{spec.queue}") == 1  # still waits on its queue
    job, _queue = worker.dequeue_job_and_maintain_ttl(None) or (None, None)  # claims (and loads the script)
    assert job is not None and job.id == job_id


def test_a_worker_out_of_claimed_jobs_sends_the_end_with_its_row_and_wake_up_in_the_claim(
    connection: fakeredis.FakeRedis, backends: Backends, registry: Registry, monkeypatch: pytest.MonkeyPatch,
    calculation_worker: RunnerWorker,
) -> None:
    spec, worker = registry.get("simple_calculation"), calculation_worker
    seen: list[set[tuple[str, str]]] = []
    real_claim = runner.worker.taking.claim

    def claim_spy(*args: Any, before: Pipeline | None = None, **kwargs: Any) -> Any:
        commands = {(str(command[0]), str(command[1])) for command, _ in before.command_stack} if before else set()
        seen.append(commands)
        return real_claim(*args, before=before, **kwargs)

    job_id = enqueue_invocation(spec, {"expression": "6*7"}, backends).id
    job, queue = worker.dequeue_job_and_maintain_ttl(None) or (None, None)
    assert job is not None and queue is not None
    worker.execute_job(job, queue)
    assert get_job_view(job_id, backends).status == "started"  # the end is held for the next move
    monkeypatch.setattr(runner.worker.taking, "claim", claim_spy)
    assert worker.dequeue_job_and_maintain_ttl(None) is None  # nothing else waits
    # One call carried the end: the job's status, its row's journal entry and its waiters' token.
    [commands] = seen
    assert {("LPUSH", ended_key(job_id)), ("XADD", JOURNAL_KEY)} <= commands
    assert any(name == SUCCESS for name, _key in commands)  # the job's status and end (runner.rq_seam.macros)
    assert get_job_view(job_id, backends).status == "finished"
    assert connection.llen(ended_key(job_id)) == 1
