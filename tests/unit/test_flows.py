"""Flows in-process (fakeredis, SQLite): `?expires=`, `?after=` with `parent_results()`, and the checks of
`concurrency_key`, `expires` and `after` at declaration and at invocation."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import fakeredis
import pytest
from flask.testing import FlaskClient
from rq.serializers import JSONSerializer

from runner.authoring.registry import Registry, make_spec
from runner.errors import FunctionDefinitionError
from runner.rq_seam.keys import job_key
from runner.services.dependencies import DEFERRED_KEY, settle_waiting
from runner.services.expiry import DEADLINE_META, EXPIRING_KEY, expire_due
from runner.services.limits import acquire_slot, running_key
from runner.store.sql_store import Store
from tests.unit.conftest import rq_job, stored_row

Invoke = Callable[..., Any]
ApiError = Callable[..., dict[str, Any]]
RunJobs = Callable[..., bool]

RECORDS = {"records": [{"region": "eu", "amount": 3}, {"region": "us", "amount": 5}]}


def pass_deadline(connection: fakeredis.FakeRedis, job_id: str, *, swept: bool = True) -> None:
    """Move the job's deadline into the past, as if its `expires` seconds had gone by (`swept`: where the
    flows pass looks too; without, only the worker that takes the job can tell)."""
    job = rq_job(connection, job_id)
    job.meta[DEADLINE_META] = time.time() - 1
    connection.hset(job_key(job_id), "meta", JSONSerializer.dumps(job.meta))
    if swept:
        connection.zadd(EXPIRING_KEY, {job_id: time.time() - 1})
    else:
        connection.zrem(EXPIRING_KEY, job_id)


@pytest.mark.parametrize("value", ["-1", "0", "abc", "inf", "nan", "2592001", "1e12"])
def test_a_bad_expires_is_400_and_nothing_is_enqueued(
    invoke: Invoke, api_error: ApiError, assert_nothing_enqueued: Callable[[], None], value: str
) -> None:
    body = api_error(invoke("simple_calculation", {"expression": "1+1"}, query=f"?expires={value}"), 400,
                     "malformed_request")
    assert body["details"] == {"expires": value}
    assert_nothing_enqueued()


@pytest.mark.parametrize("value", [0, -5, "10", True, 30 * 24 * 3600 + 1])
def test_a_bad_expires_default_fails_at_declaration(value: Any) -> None:
    with pytest.raises(FunctionDefinitionError, match="expires"):
        make_spec(lambda n=0: n, queue="default", timeout=10, retries=0, backoff=None, name="f", expires=value)


def test_a_job_past_its_deadline_never_runs_and_ends_canceled_expired(
    invoke: Invoke, run_jobs: RunJobs, connection: fakeredis.FakeRedis, store: Store, client: FlaskClient
) -> None:
    response = invoke("simple_calculation", {"expression": "6*7"}, query="?expires=60")
    assert response.status_code == 202
    job_id = response.get_json()["id"]
    assert connection.zscore(EXPIRING_KEY, job_id) is not None
    pass_deadline(connection, job_id, swept=False)
    run_jobs()  # the worker takes it, sees the deadline passed, and cancels it instead of running it
    view = client.get(f"/jobs/{job_id}").get_json()
    assert (view["status"], view["attempts"], view["result"], view["started_at"]) == ("canceled", 0, None, None)
    assert view["error"]["type"] == "Expired", view
    row = stored_row(store, job_id)
    assert (row.status, row.error["type"], row.attempts) == ("canceled", "Expired", 0)
    assert [connection.llen(key) for key in connection.scan_iter("runner:claims:*")] in ([], [0])


def test_a_job_within_its_deadline_runs_and_drops_its_deadline(
    invoke: Invoke, run_jobs: RunJobs, connection: fakeredis.FakeRedis, client: FlaskClient
) -> None:
    job_id = invoke("simple_calculation", {"expression": "6*7"}, query="?expires=60").get_json()["id"]
    run_jobs()
    assert client.get(f"/jobs/{job_id}").get_json()["status"] == "finished"
    assert connection.zscore(EXPIRING_KEY, job_id) is None


def test_the_sweep_expires_jobs_nobody_takes(
    invoke: Invoke, connection: fakeredis.FakeRedis, client: FlaskClient
) -> None:
    waiting = invoke("simple_calculation", {"expression": "1"}, query="?expires=60").get_json()["id"]
    later = invoke("simple_calculation", {"expression": "2"}, query="?expires=60").get_json()["id"]
    pass_deadline(connection, waiting)
    assert expire_due(connection) == 1
    assert client.get(f"/jobs/{waiting}").get_json()["error"]["type"] == "Expired"
    assert client.get(f"/jobs/{later}").get_json()["status"] == "queued"
    assert connection.zscore(EXPIRING_KEY, waiting) is None and connection.zscore(EXPIRING_KEY, later) is not None


def test_unknown_after_ids_are_422_and_nothing_is_enqueued(
    invoke: Invoke, api_error: ApiError, assert_nothing_enqueued: Callable[[], None]
) -> None:
    body = api_error(invoke("simple_calculation", {"expression": "1"}, query="?after=nosuchjob,bad!id"), 422,
                     "invalid_input")
    assert [(d["field"], d["type"]) for d in body["details"]] == [("after", "unknown_job")] * 2
    assert_nothing_enqueued()


@pytest.mark.parametrize("query", ["?after=", "?after=,,", "?after=" + ",".join(f"j{n}" for n in range(101)),
                                   "?after=abc&delay=5"])
def test_a_malformed_after_is_400(invoke: Invoke, api_error: ApiError, query: str) -> None:
    api_error(invoke("simple_calculation", {"expression": "1"}, query=query), 400, "malformed_request")


def test_a_job_after_others_waits_deferred_then_fans_in_their_results(
    invoke: Invoke, run_jobs: RunJobs, connection: fakeredis.FakeRedis, store: Store, client: FlaskClient
) -> None:
    parents = [invoke("data_processing", RECORDS).get_json()["id"] for _ in range(2)]
    accepted = invoke("combine_profiles", {}, query=f"?after={','.join(parents)}")
    assert accepted.status_code == 202
    child = accepted.get_json()
    assert (child["status"], child["after"], child["waiting_for"]) == ("deferred", parents, parents)
    assert stored_row(store, child["id"]).after_ids == parents
    run_jobs(["demo_tasks"])  # the parents' queue is not served: the child must not run
    assert client.get(f"/jobs/{child['id']}").get_json()["status"] == "deferred"
    run_jobs(["ai_processing"])
    view = client.get(f"/jobs/{child['id']}").get_json()
    assert (view["status"], view["waiting_for"]) == ("deferred", [])  # until a flows pass settles it
    settle_waiting(connection, store)
    assert client.get(f"/jobs/{child['id']}").get_json()["status"] == "queued"
    assert connection.zscore(DEFERRED_KEY, child["id"]) is None
    run_jobs(["demo_tasks"])
    done = client.get(f"/jobs/{child['id']}").get_json()
    assert done["status"] == "finished", done
    assert done["result"]["rows"] == 4 and [part["job_id"] for part in done["result"]["parts"]] == parents
    assert done["result"]["columns"]["amount"] == {"count": 4, "missing": 0, "parts": 2, "min": 3, "max": 5,
                                                   "mean": 4.0}
    assert stored_row(store, child["id"]).status == "finished"


def test_a_job_after_a_failed_one_is_canceled_with_dependency_failed(
    invoke: Invoke, run_jobs: RunJobs, client: FlaskClient, store: Store
) -> None:
    ok = invoke("simple_calculation", {"expression": "1"}).get_json()["id"]
    bad = invoke("simple_calculation", {"expression": "1/0"}).get_json()["id"]
    run_jobs()
    assert client.get(f"/jobs/{bad}").get_json()["status"] == "failed"
    # Both ended before the child was accepted: it is settled at once.
    child = invoke("simple_calculation", {"expression": "2"}, query=f"?after={ok},{bad}").get_json()
    assert child["status"] == "canceled", child
    assert child["error"]["type"] == "DependencyFailed" and child["error"]["dependency"] == bad
    assert bad in child["error"]["message"]
    run_jobs()
    view = client.get(f"/jobs/{child['id']}").get_json()
    assert (view["status"], view["attempts"]) == ("canceled", 0)
    assert stored_row(store, child["id"]).error["type"] == "DependencyFailed"


def test_a_job_after_finished_ones_is_queued_at_once(invoke: Invoke, run_jobs: RunJobs, client: FlaskClient) -> None:
    parent = invoke("simple_calculation", {"expression": "1"}).get_json()["id"]
    run_jobs()
    child = invoke("simple_calculation", {"expression": "2"}, query=f"?after={parent}").get_json()
    assert (child["status"], child["after"], child["waiting_for"]) == ("queued", [parent], [])
    run_jobs()
    assert client.get(f"/jobs/{child['id']}").get_json()["status"] == "finished"


def keyed(tenant: str = "", n: int = 0) -> dict[str, Any]:
    """Return its input."""
    return {"tenant": tenant, "n": n}


def test_concurrency_key_is_checked_at_declaration() -> None:
    with pytest.raises(FunctionDefinitionError, match="concurrency_key"):
        make_spec(keyed, queue="default", timeout=10, retries=0, backoff=None, name=None, concurrency_key="tenant")
    with pytest.raises(FunctionDefinitionError, match="concurrency_key"):
        make_spec(keyed, queue="default", timeout=10, retries=0, backoff=None, name=None, concurrency=1,
                  concurrency_key="nope")


@pytest.mark.parametrize("payload", [{"n": 1}, {"tenant": ""}, {"tenant": "x" * 201}])
def test_an_invocation_without_its_concurrency_key_is_422(
    make_client: Callable[..., FlaskClient], api_error: ApiError, payload: dict[str, Any]
) -> None:
    spec = make_spec(keyed, queue="default", timeout=10, retries=0, backoff=None, name=None, concurrency=1,
                     concurrency_key="tenant")
    client = make_client(registry_=Registry([spec]))
    body = api_error(client.post("/functions/keyed/invocations", json=payload), 422, "invalid_input")
    assert body["details"][0]["field"] == "tenant" and body["details"][0]["type"] == "concurrency_key"
    described = client.get("/functions/keyed").get_json()
    assert (described["concurrency"], described["concurrency_key"]) == (1, "tenant")


def test_each_concurrency_key_value_has_its_own_slots(connection: fakeredis.FakeRedis) -> None:
    spec = make_spec(keyed, queue="default", timeout=10, retries=0, backoff=None, name=None, concurrency=1,
                     concurrency_key="tenant")
    assert acquire_slot(connection, spec, "a1", "a")
    connection.hset(job_key("a1"), "status", "started")  # a holder that runs keeps its slot
    assert not acquire_slot(connection, spec, "a2", "a")
    assert acquire_slot(connection, spec, "b1", "b")
    assert connection.zcard(running_key("keyed", "a")) == connection.zcard(running_key("keyed", "b")) == 1
