"""Jobs in slots: those claimed together start in one script call; one canceled since its claim never starts;
those past the free slots wait on deck for the next one."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest

from runner.authoring.registry import Registry, make_spec
from runner.services.backends import Backends
from runner.services.control import cancel_job
from runner.services.invocation import enqueue_invocation
from runner.services.job_views import get_job_view, wait_for_job
from runner.worker import in_flight as in_flight_module
from runner.worker.claims import claim_key
from runner.worker.environment import install_environment
from runner.worker.in_flight import InFlight
from runner.worker.run import build_worker
from runner.worker.slot_pace import DECK_MOST_JOBS, SOON_SECONDS, SlotPace


def add(a: int, b: int) -> int:
    """A sync function that may run in the worker's thread pool."""
    return a + b


def test_jobs_claimed_together_start_in_one_call_and_a_canceled_one_never_starts(
        connection: fakeredis.FakeRedis, backends: Backends, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = make_spec(add, queue="slots", timeout=5, retries=0, backoff=None, name="add_in_threads", threads=True)
    registry = Registry([spec])
    ids = [enqueue_invocation(spec, {"a": n, "b": 1}, backends).id for n in range(16)]
    worker = build_worker([spec.queue], backends, registry)
    worker.taker.claim_batch = 8
    starts: list[list[str]] = []
    prepare = worker.prepare_executions

    def counted(jobs: list[Any]) -> list[Any]:
        starts.append([job.id for job in jobs])
        return prepare(jobs)

    monkeypatch.setattr(worker, "prepare_executions", counted)
    worker.register_birth()
    try:
        first, queue = worker.dequeue_job_and_maintain_ttl(None) or (None, None)
        assert first is not None and queue is not None and first.id == ids[0]  # ids[1:8] are claimed with it
        cancel_job(ids[2], backends)
        worker.execute_job(first, queue)
        assert starts == [ids[:8]]  # one start for the eight
    finally:
        worker.teardown()  # lets the jobs in flight end
        install_environment(None)
    views = [get_job_view(job_id, backends) for job_id in ids[:8]]
    assert [(view.status, view.attempts) for view in views] == \
        [("canceled", 0) if n == 2 else ("finished", 1) for n in range(8)]
    assert [view.result for view in views] == [None if n == 2 else n + 1 for n in range(8)]
    assert views[2].started_at is None
    assert connection.llen(claim_key(worker.name)) == 0


def wait_for_gate(gate: threading.Event) -> str:
    """A threaded function that holds its slot until the test opens the gate."""
    assert gate.wait(10)
    return "done"


# Jobs that may wait on deck in the fixture `one_slot`, whatever the pace of its jobs.
ON_DECK = 4
GATE = threading.Event()


def held(tag: str) -> str:
    """Holds its slot until GATE opens."""
    return wait_for_gate(GATE) + tag


@pytest.fixture
def one_slot(connection: fakeredis.FakeRedis, backends: Backends,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, list[str]]]:
    """A worker with one slot that frees often (so jobs past it wait on deck), and three jobs queued: a claim
    takes half of a queue, so two start (one in the slot, one on deck) and one stays queued."""
    GATE.clear()
    spec = make_spec(held, queue="deck", timeout=5, retries=0, backoff=None, name="held", threads=True)
    ids = [enqueue_invocation(spec, {"tag": str(n)}, backends).id for n in range(3)]
    worker = build_worker([spec.queue], backends, Registry([spec]))
    worker.slots = 1
    worker.taker.claim_batch = 3
    worker.register_birth()
    monkeypatch.setattr(InFlight, "deck_size", property(lambda _self: ON_DECK))  # room for ON_DECK more
    # A job on deck goes back only when a test says so (not after a second of a slow machine's reads).
    monkeypatch.setattr(in_flight_module, "DECK_WAIT_MOST_SECONDS", 60.0)
    try:
        yield worker, ids
    finally:
        GATE.set()
        worker.teardown()
        install_environment(None)


def start_all(worker: Any) -> None:
    first, queue = worker.dequeue_job_and_maintain_ttl(None) or (None, None)
    assert first is not None and queue is not None
    worker.taker.claim_ahead(1)  # as a worker whose slots free often does
    worker.execute_job(first, queue)  # it begins; the one claimed after it waits on deck


def test_jobs_on_deck_begin_in_the_slot_their_predecessor_frees(
        one_slot: tuple[Any, list[str]], backends: Backends) -> None:
    worker, ids = one_slot
    start_all(worker)
    assert [get_job_view(job_id, backends).status for job_id in ids] == ["started", "started", "queued"]
    assert worker.in_flight.busy == 1 and worker.in_flight.room == ON_DECK - 1
    GATE.set()
    views = [wait_for_job(job_id, backends, 10) for job_id in ids[:2]]
    assert [(view.status, view.result, view.attempts) for view in views] == \
        [("finished", f"done{n}", 1) for n in range(2)]


def test_a_job_stopped_on_deck_ends_stopped_and_never_runs(
        one_slot: tuple[Any, list[str]], backends: Backends) -> None:
    worker, ids = one_slot
    start_all(worker)
    assert worker.in_flight.stop(ids[1])
    assert wait_for_job(ids[1], backends, 10).status == "stopped"
    GATE.set()
    assert wait_for_job(ids[0], backends, 10).result == "done0"
    assert get_job_view(ids[1], backends).result is None and worker.in_flight.busy == 0


def test_the_worker_reads_busy_while_its_slots_run_and_idle_after_their_last_end(
        one_slot: tuple[Any, list[str]], backends: Backends, connection: fakeredis.FakeRedis) -> None:
    worker, ids = one_slot
    start_all(worker)
    # An end that said idle landing after a start (two threads): the watch's next heartbeat says busy again.
    connection.hset(worker.key, mapping={"state": "idle", "current_job": "gone"})
    worker.in_flight.watch._heartbeat(worker.in_flight.flying(), None)
    assert connection.hmget(worker.key, ["state", "current_job", "slots_busy"]) == [b"busy", ids[0].encode(), b"1"]
    GATE.set()
    assert [wait_for_job(job_id, backends, 10).status for job_id in ids[:2]] == ["finished", "finished"]
    assert connection.hmget(worker.key, ["state", "current_job", "slots_busy"]) == [b"idle", None, b"0"]


def test_jobs_that_wait_on_deck_too_long_go_back_to_their_queue_uncounted(
        one_slot: tuple[Any, list[str]], backends: Backends, connection: fakeredis.FakeRedis) -> None:
    worker, ids = one_slot
    start_all(worker)
    worker.in_flight.return_waiting(0.0)  # as the watch does once they waited DECK_WAIT_MOST_SECONDS
    view = get_job_view(ids[1], backends)
    assert (view.status, view.attempts) == ("queued", 0)
    assert connection.lrange("rq:queue:deck", 0, -1) == [ids[1].encode(), ids[2].encode()]  # back at the front
    GATE.set()
    assert wait_for_job(ids[0], backends, 10).status == "finished"


@pytest.mark.parametrize(("typical", "capacity", "on_deck"), [
    (0.0001, 8, DECK_MOST_JOBS),  # no-op jobs: as many as a claim takes
    (0.1, 8, 4),  # 100 ms jobs in 8 slots: 4 free within SOON_SECONDS
    (0.3, 8, 1),  # 300 ms jobs: one slot frees every 37.5 ms, one waits
    (0.0, 8, DECK_MOST_JOBS),
])
def test_as_many_wait_on_deck_as_slots_free_soon(typical: float, capacity: int, on_deck: int,
                                                  backends: Backends) -> None:
    spec = make_spec(held, queue="deck", timeout=5, retries=0, backoff=None, name="held", threads=True)
    in_flight = build_worker([spec.queue], backends, Registry([spec])).in_flight
    in_flight.capacity = capacity
    assert in_flight.deck_size == 0  # no job ended yet
    in_flight.pace.typical_seconds, in_flight.pace.last_freed = typical, time.monotonic()  # as ends leave them
    assert in_flight.deck_size == on_deck
    assert in_flight.room == capacity + on_deck
    in_flight.pace.last_freed -= 2 * typical + SOON_SECONDS  # every slot held since by longer jobs: none waits
    assert in_flight.deck_size == 0 and in_flight.room == capacity


def test_the_pace_follows_recent_jobs() -> None:
    pace = SlotPace()
    pace.freed(1.0)  # the first job sets it
    for _ in range(200):
        pace.freed(0.001)  # then many short ones
    assert pace.typical_seconds < 0.002 and pace.frees_often(8)
    for _ in range(200):
        pace.freed(0.5)  # jobs turned long: one of 8 slots frees every 62 ms
    assert not pace.frees_often(8) and pace.deck_size(8) == 0
