"""Group commit: concurrent callers share a write, each returns once its item is written."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable

import fakeredis
import pytest
from redis.commands.core import Script

from runner.rq_seam import scripts as scripted_pipeline
from runner.rq_seam.scripts import encode_commands, run_encoded
from runner.services.group_commit import GroupCommit

WAIT_SECONDS = 10


class Writes:
    """A write function that records each batch; the first batch can be held until released."""

    def __init__(self, fail_when: Callable[[list[str]], bool] = lambda batch: False) -> None:
        self.batches: list[list[str]] = []
        self.written: set[str] = set()
        self.hold_first = threading.Event()
        self.first_started = threading.Event()
        self.fail_when = fail_when

    def __call__(self, batch: list[str]) -> None:
        if not self.batches:
            self.first_started.set()
            assert self.hold_first.wait(WAIT_SECONDS)
        self.batches.append(list(batch))
        if self.fail_when(batch):
            raise ConnectionError(f"refused {batch}")
        self.written.update(batch)


def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.001)


def submit_in_threads(group: GroupCommit[str], items: list[str]) -> tuple[list[threading.Thread], dict[str, object]]:
    """Start one thread per item; each records what its submit returned or raised."""
    outcomes: dict[str, object] = {}

    def submit(item: str) -> None:
        try:
            group.submit(item)
            outcomes[item] = "returned"
        except Exception as exc:
            outcomes[item] = exc

    threads = [threading.Thread(target=submit, args=(item,)) for item in items]
    for thread in threads:
        thread.start()
    return threads, outcomes


def hold_first_then_queue(writes: Writes, group: GroupCommit[str], others: list[str]) -> tuple[
        list[threading.Thread], dict[str, object]]:
    """"first" is being written (held) while `others` queue up behind it; then the write goes on."""
    threads, outcomes = submit_in_threads(group, ["first"])
    assert writes.first_started.wait(WAIT_SECONDS)
    more, more_outcomes = submit_in_threads(group, others)
    wait_for(lambda: len(group._waiting) == len(others))
    writes.hold_first.set()
    for thread in threads + more:
        thread.join(WAIT_SECONDS)
    return threads + more, {**outcomes, **more_outcomes}


def test_a_lone_caller_writes_its_item_by_itself() -> None:
    writes = Writes()
    writes.hold_first.set()
    group = GroupCommit(writes)
    group.submit("a")
    group.submit("b")
    assert writes.batches == [["a"], ["b"]]


def test_callers_that_arrive_during_a_write_share_the_next_one() -> None:
    writes = Writes()
    group = GroupCommit(writes)
    others = [f"item-{n}" for n in range(6)]
    _, outcomes = hold_first_then_queue(writes, group, others)
    assert writes.batches[0] == ["first"]
    assert sorted(writes.batches[1]) == sorted(others) and len(writes.batches) == 2
    assert outcomes == {item: "returned" for item in ["first", *others]}


def test_an_error_of_a_lone_write_reaches_its_caller() -> None:
    writes = Writes(fail_when=lambda batch: True)
    writes.hold_first.set()
    group = GroupCommit(writes)
    with pytest.raises(ConnectionError, match="refused"):
        group.submit("a")
    writes.fail_when = lambda batch: False
    group.submit("b")  # the group is usable again
    assert writes.written == {"b"}


def test_when_a_shared_write_fails_every_caller_gets_the_error_and_nothing_is_written_again() -> None:
    writes = Writes(fail_when=lambda batch: "bad" in batch)
    group = GroupCommit(writes)
    _, outcomes = hold_first_then_queue(writes, group, ["good-1", "bad", "good-2"])
    assert len(writes.batches) == 2  # no second try: it could write the good ones twice
    assert outcomes["first"] == "returned"
    errors = [outcomes[item] for item in ("good-1", "bad", "good-2")]
    assert all(isinstance(error, ConnectionError) and "refused" in str(error) for error in errors)
    assert len({id(error) for error in errors}) == 3  # each caller raises its own copy


def test_a_forked_child_can_write_while_its_parent_is_mid_write() -> None:
    writes = Writes()
    group = GroupCommit(writes)
    threads, _ = submit_in_threads(group, ["first"])
    assert writes.first_started.wait(WAIT_SECONDS)  # a thread of the parent holds the turn
    child = os.fork()
    if child == 0:  # pragma: no cover (runs in the child)
        signal.alarm(WAIT_SECONDS)  # a child stuck on its parent's lock dies instead of hanging the test
        try:
            writes.batches.append(["held in the parent"])  # not the first write any more
            group.submit("from the child")
            os._exit(0 if "from the child" in writes.written else 1)
        finally:
            os._exit(2)
    _, status = os.waitpid(child, 0)
    writes.hold_first.set()
    for thread in threads:
        thread.join(WAIT_SECONDS)
    assert os.waitstatus_to_exitcode(status) == 0
    assert writes.written == {"first"}


def test_a_shared_send_runs_every_callers_commands_in_their_order(
        connection: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch) -> None:
    # What Backends.job_sends writes for a batch: each caller's pipeline, one after the other, in one call.
    encoded = []
    for job_id in ("a", "b"):
        with connection.pipeline() as pipeline:
            pipeline.hset(f"job:{job_id}", mapping={"id": job_id})
            pipeline.rpush("queue", job_id)
            encoded.append(encode_commands(pipeline))
    calls: list[object] = []
    real_script = scripted_pipeline.registered_script

    def counting_script(redis_connection: fakeredis.FakeRedis, source: str) -> Script:
        calls.append(redis_connection)
        return real_script(redis_connection, source)

    monkeypatch.setattr(scripted_pipeline, "registered_script", counting_script)
    run_encoded(connection, encoded)
    assert len(calls) == 1
    assert connection.lrange("queue", 0, -1) == [b"a", b"b"]
    assert connection.hgetall("job:b") == {b"id": b"b"}
