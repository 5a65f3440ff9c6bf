"""POST /jobs/<id>/cancel and /retry: which states allow them, and what Redis and the store say afterwards."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import fakeredis
import pytest
import redis
from flask.testing import FlaskClient
from rq.registry import CanceledJobRegistry, ScheduledJobRegistry

import runner.services.control as control
from runner.rq_seam.queues import queue_for
from runner.services.control import LOCK_KEY
from runner.store.models import InvocationRecord, utcnow
from runner.store.sql_store import Store
from tests.history import insert_rows, update_row
from tests.unit.conftest import rq_job, stored_row

ApiError = Callable[..., dict[str, Any]]
RunJobs = Callable[..., bool]
UNKNOWN = "0123456789abcdef0123456789abcdef"


def invoke(client: FlaskClient, expression: str = "6*7", query: str = "") -> str:
    response = client.post(f"/functions/simple_calculation/invocations{query}", json={"expression": expression})
    assert response.status_code == 202, response.get_json()
    return str(response.get_json()["id"])


@pytest.mark.parametrize("action", ["cancel", "retry"])
@pytest.mark.parametrize("job_id", [UNKNOWN, "..", "a" * 65, "bad%20id"])
def test_unknown_jobs_are_404(client: FlaskClient, api_error: ApiError, action: str, job_id: str) -> None:
    api_error(client.post(f"/jobs/{job_id}/{action}"), 404, "job_not_found")


@pytest.mark.parametrize("action", ["cancel", "retry"])
def test_only_post_is_allowed(client: FlaskClient, api_error: ApiError, action: str) -> None:
    api_error(client.get(f"/jobs/{UNKNOWN}/{action}"), 405, "method_not_allowed")


def test_cancel_a_queued_job(client: FlaskClient, connection: fakeredis.FakeRedis, store: Store,
                             run_jobs: RunJobs) -> None:
    job_id = invoke(client)
    response = client.post(f"/jobs/{job_id}/cancel")
    assert response.status_code == 200
    assert response.get_json()["status"] == "canceled" and response.get_json()["id"] == job_id
    assert queue_for("demo_tasks", connection).count == 0
    assert job_id in CanceledJobRegistry("demo_tasks", connection=connection).get_job_ids()
    assert not run_jobs()
    record = stored_row(store, job_id)
    assert (record.status, record.attempts, record.ended_at is not None) == ("canceled", 0, True)
    assert client.get(f"/jobs/{job_id}").get_json()["status"] == "canceled"


def test_cancel_a_scheduled_job(client: FlaskClient, connection: fakeredis.FakeRedis, store: Store) -> None:
    job_id = invoke(client, query="?delay=60")
    assert client.get(f"/jobs/{job_id}").get_json()["progress"] == {"percent": 0, "message": "scheduled"}
    canceled = client.post(f"/jobs/{job_id}/cancel").get_json()
    assert (canceled["status"], canceled["progress"]) == ("canceled", {"percent": 0, "message": "canceled"})
    assert client.get(f"/jobs/{job_id}").get_json()["progress"] == {"percent": 0, "message": "canceled"}
    assert ScheduledJobRegistry("demo_tasks", connection=connection).get_job_ids() == []
    row = stored_row(store, job_id)
    assert (row.status, row.progress_message) == ("canceled", "canceled")


@pytest.mark.parametrize(("expression", "status"), [("1+1", "finished"), ("1/0", "failed")])
def test_cancel_an_ended_job_is_a_conflict(client: FlaskClient, run_jobs: RunJobs, api_error: ApiError,
                                           expression: str, status: str) -> None:
    job_id = invoke(client, expression)
    run_jobs()
    body = api_error(client.post(f"/jobs/{job_id}/cancel"), 409, "state_conflict")
    assert body["details"] == {"status": status}


def test_cancel_twice_is_a_conflict(client: FlaskClient, api_error: ApiError) -> None:
    job_id = invoke(client)
    client.post(f"/jobs/{job_id}/cancel")
    api_error(client.post(f"/jobs/{job_id}/cancel"), 409, "state_conflict")


def test_cancel_a_started_job_without_a_worker_is_a_conflict(
    client: FlaskClient, connection: fakeredis.FakeRedis, api_error: ApiError
) -> None:
    job_id = invoke(client)
    rq_job(connection, job_id).set_status("started")
    body = api_error(client.post(f"/jobs/{job_id}/cancel"), 409, "state_conflict")
    assert "no worker" in body["message"]


def test_cancel_a_job_redis_forgot(client: FlaskClient, connection: fakeredis.FakeRedis, store: Store,
                                   api_error: ApiError, run_jobs: RunJobs) -> None:
    waiting, ended = invoke(client), invoke(client, "2+2")
    run_jobs()
    connection.flushall()
    update_row(store, waiting, status="queued")
    assert client.post(f"/jobs/{waiting}/cancel").get_json()["status"] == "canceled"
    assert stored_row(store, waiting).status == "canceled"
    api_error(client.post(f"/jobs/{ended}/cancel"), 409, "state_conflict")


def test_one_operation_at_a_time(client: FlaskClient, connection: fakeredis.FakeRedis, api_error: ApiError) -> None:
    job_id = invoke(client)
    connection.set(LOCK_KEY.format(job_id=job_id), "someone-else", ex=10)
    body = api_error(client.post(f"/jobs/{job_id}/cancel"), 409, "state_conflict")
    assert "in progress" in body["message"]
    connection.delete(LOCK_KEY.format(job_id=job_id))
    assert client.post(f"/jobs/{job_id}/cancel").status_code == 200
    assert connection.get(LOCK_KEY.format(job_id=job_id)) is None


@pytest.mark.parametrize("query", ["", "?delay=60"])
def test_retry_a_waiting_job_is_a_conflict(client: FlaskClient, api_error: ApiError, query: str) -> None:
    job_id = invoke(client, query=query)
    body = api_error(client.post(f"/jobs/{job_id}/retry"), 409, "state_conflict")
    assert body["details"]["status"] in ("queued", "scheduled")


def test_retry_a_finished_job_is_a_conflict(client: FlaskClient, run_jobs: RunJobs, api_error: ApiError) -> None:
    job_id = invoke(client)
    run_jobs()
    api_error(client.post(f"/jobs/{job_id}/retry"), 409, "state_conflict")


def test_retry_a_failed_job_runs_it_again_and_keeps_counting_attempts(
    client: FlaskClient, run_jobs: RunJobs, store: Store, connection: fakeredis.FakeRedis
) -> None:
    job_id = invoke(client, "1/0")
    run_jobs()
    response = client.post(f"/jobs/{job_id}/retry")
    assert response.status_code == 202
    assert response.headers["Location"].endswith(f"/jobs/{job_id}")
    view = response.get_json()
    assert (view["status"], view["error"], view["attempts"]) == ("queued", None, 1)
    assert stored_row(store, job_id).status == "queued" and stored_row(store, job_id).error is None
    assert queue_for("demo_tasks", connection).job_ids == [job_id]
    run_jobs()
    again = client.get(f"/jobs/{job_id}").get_json()
    assert (again["status"], again["attempts"]) == ("failed", 2)
    assert stored_row(store, job_id).attempts == 2


def test_retry_restores_the_retry_policy(client: FlaskClient, run_jobs: RunJobs,
                                         connection: fakeredis.FakeRedis) -> None:
    response = client.post("/functions/unreliable_task/invocations", json={"fail_times": 100})
    job_id = response.get_json()["id"]
    job = rq_job(connection, job_id)
    job.retries_left = 0  # as after the last automatic retry
    job.save()
    run_jobs()
    assert client.get(f"/jobs/{job_id}").get_json()["status"] == "failed"
    client.post(f"/jobs/{job_id}/retry")
    assert rq_job(connection, job_id).retries_left == 3


def test_retry_a_canceled_job(client: FlaskClient, run_jobs: RunJobs, store: Store,
                              connection: fakeredis.FakeRedis) -> None:
    job_id = invoke(client)
    client.post(f"/jobs/{job_id}/cancel")
    assert client.post(f"/jobs/{job_id}/retry").get_json()["status"] == "queued"
    assert CanceledJobRegistry("demo_tasks", connection=connection).get_job_ids() == []
    run_jobs()
    view = client.get(f"/jobs/{job_id}").get_json()
    assert (view["status"], view["attempts"], view["result"]["result"]) == ("finished", 1, 42)
    assert stored_row(store, job_id).status == "finished" and stored_row(store, job_id).ended_at is not None


def test_retry_a_job_redis_forgot_uses_the_stored_input(
    client: FlaskClient, run_jobs: RunJobs, store: Store, connection: fakeredis.FakeRedis
) -> None:
    job_id = invoke(client, "1/0")
    run_jobs()
    connection.flushall()
    update_row(store, job_id, input={"expression": "3*3"}, callback_url="https://8.8.8.8/hook")
    assert client.post(f"/jobs/{job_id}/retry").status_code == 202
    job = rq_job(connection, job_id)
    assert job.meta["attempts"] == 1 and job.meta["callback_url"] == "https://8.8.8.8/hook"
    run_jobs()
    view = client.get(f"/jobs/{job_id}").get_json()
    assert (view["status"], view["attempts"], view["result"]["result"]) == ("finished", 2, 9)


def test_retry_a_forgotten_job_whose_input_no_longer_fits(
    client: FlaskClient, store: Store, api_error: ApiError
) -> None:
    insert_rows(store, InvocationRecord(id="old123", function="simple_calculation", queue="demo_tasks", status="failed",
                               input={"expression": "1", "removed_field": True}, attempts=1, created_at=utcnow()))
    api_error(client.post("/jobs/old123/retry"), 422, "invalid_input")
    insert_rows(store, InvocationRecord(id="gone123", function="no_such_function", queue="demo_tasks", status="failed",
                               input={}, attempts=1, created_at=utcnow()))
    api_error(client.post("/jobs/gone123/retry"), 404, "function_not_found")
    insert_rows(store, InvocationRecord(id="run123", function="simple_calculation", queue="demo_tasks",
                                        status="started", input={"expression": "1"}, attempts=1, created_at=utcnow()))
    api_error(client.post("/jobs/run123/retry"), 409, "state_conflict")


def test_a_retry_that_cannot_reach_redis_leaves_the_row_as_it_was(
    client: FlaskClient, run_jobs: RunJobs, store: Store, connection: fakeredis.FakeRedis,
    monkeypatch: pytest.MonkeyPatch, api_error: ApiError,
) -> None:
    job_id = invoke(client, "1/0")
    run_jobs()
    connection.flushall()

    def redis_away(*_args: Any, **_kwargs: Any) -> None:
        raise redis.exceptions.ConnectionError("connection refused")

    monkeypatch.setattr(control, "submit_job", redis_away)
    api_error(client.post(f"/jobs/{job_id}/retry"), 503, "backend_unavailable")
    record = stored_row(store, job_id)
    assert (record.status, record.error["type"]) == ("failed", "PermanentError")
