"""`max_queued` (429 with Retry-After) and `concurrency` (slots, put back without an attempt) per function."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import fakeredis
import pytest
from flask.testing import FlaskClient
from rq.job import Job
from rq.registry import ScheduledJobRegistry
from rq.serializers import JSONSerializer

from runner.authoring.registry import Registry, make_spec
from runner.authoring.spec import FunctionSpec
from runner.errors import FunctionDefinitionError
from runner.rq_seam.queues import queue_for
from runner.services.lifecycle import JobEvent
from runner.services.limits import (
    TRACKED_KEY,
    WAITING_FOR_SLOT,
    acquire_slot,
    release_slot,
    running_key,
    track_limits,
    waiting_key,
)
from runner.store.sql_store import Store

ApiError = Callable[..., dict[str, Any]]
RunJobs = Callable[..., bool]


def limited(n: int = 0) -> dict[str, int]:
    """Return its input."""
    return {"n": n}


def limited_failure() -> dict[str, int]:
    """Always fail."""
    raise RuntimeError("boom")


def declare(func: Callable[..., Any], **limits: Any) -> FunctionSpec:
    return make_spec(func, queue="default", timeout=10, retries=0, backoff=None, name=None, **limits)


@pytest.fixture
def limits_registry() -> Registry:
    return Registry([declare(limited, concurrency=1, max_queued=2), declare(limited_failure, concurrency=1)])


@pytest.fixture
def limits_client(make_client: Callable[..., FlaskClient], limits_registry: Registry) -> FlaskClient:
    return make_client(registry_=limits_registry)


def invoke(client: FlaskClient, name: str = "limited", n: int = 0) -> Any:
    return client.post(f"/functions/{name}/invocations", json={"n": n} if name == "limited" else {})


def test_functions_show_their_limits(limits_client: FlaskClient, client: FlaskClient) -> None:
    described = limits_client.get("/functions/limited").get_json()
    assert (described["concurrency"], described["max_queued"]) == (1, 2)
    plain = client.get("/functions/simple_calculation").get_json()
    assert (plain["concurrency"], plain["max_queued"]) == (None, None)


@pytest.mark.parametrize("value", [0, -1, "2", 1.5, True])
@pytest.mark.parametrize("name", ["concurrency", "max_queued"])
def test_bad_limits_fail_at_declaration(name: str, value: Any) -> None:
    with pytest.raises(FunctionDefinitionError, match=name):
        declare(limited, **{name: value})


def test_beyond_max_queued_is_429_until_jobs_start(
    limits_client: FlaskClient, api_error: ApiError, run_jobs: RunJobs, limits_registry: Registry,
    connection: fakeredis.FakeRedis,
) -> None:
    first, second = invoke(limits_client, n=1), invoke(limits_client, n=2)
    assert first.status_code == second.status_code == 202
    refused = invoke(limits_client, n=3)
    body = api_error(refused, 429, "too_many_requests")
    assert refused.headers["Retry-After"] == "5"
    assert body["details"] == {"function": "limited", "max_queued": 2}
    assert queue_for("default", connection).count == 2
    run_jobs(registry_=limits_registry)
    assert connection.zcard(waiting_key("limited")) == 0
    assert invoke(limits_client, n=4).status_code == 202


def test_entries_of_vanished_jobs_are_pruned(limits_client: FlaskClient, connection: fakeredis.FakeRedis) -> None:
    for _ in range(2):
        invoke(limits_client)
    for job_id in connection.zrange(waiting_key("limited"), 0, -1):
        connection.delete(Job.key_for(job_id.decode()))  # e.g. deleted behind the runner's back
        connection.zadd(waiting_key("limited"), {job_id: time.time() - 60})
    assert invoke(limits_client).status_code == 202


def test_a_job_without_a_free_slot_waits_without_an_attempt(
    limits_client: FlaskClient, run_jobs: RunJobs, limits_registry: Registry, connection: fakeredis.FakeRedis,
    store: Store,
) -> None:
    holder = invoke(limits_client, n=1).get_json()["id"]
    connection.zadd(running_key("limited"), {holder: time.time() + 100})
    Job.fetch(holder, connection=connection, serializer=JSONSerializer).set_status("started")
    queue_for("default", connection).remove(holder)  # as if another worker were running it
    waiting = invoke(limits_client, n=2).get_json()["id"]
    run_jobs(registry_=limits_registry)
    view = limits_client.get(f"/jobs/{waiting}").get_json()
    assert (view["status"], view["attempts"], view["progress"]["message"]) == ("scheduled", 0, WAITING_FOR_SLOT)
    scheduled = ScheduledJobRegistry("default", connection=connection, serializer=JSONSerializer)
    assert scheduled.get_job_ids() == [waiting]
    due = connection.zscore(scheduled.key, waiting)
    assert due is not None and due <= time.time() + 2
    record = store.get(waiting)
    assert record is not None and (record.status, record.attempts) == ("scheduled", 0)
    assert connection.zscore(waiting_key("limited"), waiting) is not None  # still counted as waiting

    release_slot(connection, "limited", holder)
    job = Job.fetch(waiting, connection=connection, serializer=JSONSerializer)
    scheduled.remove(job)
    queue_for("default", connection).enqueue_job(job)  # what RQ's scheduler does when it is due
    run_jobs(registry_=limits_registry)
    done = limits_client.get(f"/jobs/{waiting}").get_json()
    assert (done["status"], done["attempts"], done["result"]) == ("finished", 1, {"n": 2})
    assert connection.zcard(running_key("limited")) == 0


def test_the_slot_is_released_when_the_job_fails(
    limits_client: FlaskClient, run_jobs: RunJobs, limits_registry: Registry, connection: fakeredis.FakeRedis
) -> None:
    first, second = invoke(limits_client, "limited_failure"), invoke(limits_client, "limited_failure")
    run_jobs(registry_=limits_registry)
    statuses = [limits_client.get(f"/jobs/{job['id']}").get_json()["status"] for job in (first.json, second.json)]
    assert statuses == ["failed", "failed"]
    assert connection.zcard(running_key("limited_failure")) == 0


def test_slots_expire_and_holders_that_stopped_running_are_pruned(connection: fakeredis.FakeRedis) -> None:
    spec = declare(limited, concurrency=2)
    for holder in "abcd":
        connection.hset(Job.key_for(holder), "status", "started")
    assert acquire_slot(connection, spec, "a") and acquire_slot(connection, spec, "b")
    assert acquire_slot(connection, spec, "a")  # a holder asking again keeps its slot
    assert not acquire_slot(connection, spec, "c")
    connection.hset(Job.key_for("b"), "status", "failed")  # its worker died; RQ moved it on
    assert acquire_slot(connection, spec, "c")
    assert not acquire_slot(connection, spec, "d")
    connection.zadd(running_key("limited"), {"a": time.time() - 1, "c": time.time() - 1})  # expired
    assert acquire_slot(connection, spec, "d")
    assert set(connection.zrange(running_key("limited"), 0, -1)) == {b"d"}


def test_functions_without_limits_take_no_slot(connection: fakeredis.FakeRedis) -> None:
    assert acquire_slot(connection, declare(limited), "x")
    assert connection.keys("runner:limits:*") == []


def test_the_listener_counts_a_retried_job_as_waiting_again(connection: fakeredis.FakeRedis) -> None:
    connection.zadd(running_key("limited"), {"j1": time.time() + 100})
    track_limits(connection, JobEvent("retried", "j1", "limited", "default"))
    assert connection.zcard(waiting_key("limited")) == 0  # not tracked: no max_queued
    assert connection.zcard(running_key("limited")) == 0
    connection.hset(TRACKED_KEY, "limited", 2)
    track_limits(connection, JobEvent("retried", "j1", "limited", "default"))
    assert connection.zscore(waiting_key("limited"), "j1") is not None
    connection.zadd(waiting_key("limited"), {"j1": 1})
    connection.zadd(running_key("limited"), {"j1": time.time() + 100})
    track_limits(connection, JobEvent("stopped", "j1", "limited", "default"))
    assert connection.keys("runner:limits:*ing:*") == []
