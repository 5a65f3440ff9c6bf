"""GET /workers, GET /queues and POST /queues/failed/requeue (fakeredis, in-process worker)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from rq.job import Job
from rq.serializers import JSONSerializer

from runner import PermanentError
from runner.authoring.registry import Registry, make_spec
from runner.redis_connection import connect_redis
from runner.services.backends import Backends
from runner.worker.run import build_worker

ApiError = Callable[..., dict[str, Any]]
RunJobs = Callable[..., bool]


def always_fails(reason: str = "no") -> dict:
    """Fail for good."""
    raise PermanentError(reason)


def also_fails(reason: str = "no") -> dict:
    """Fail for good, too."""
    raise PermanentError(reason)


@pytest.fixture
def failing_registry() -> Registry:
    registry = Registry.discover("functions")
    registry.add(make_spec(always_fails, queue="default", timeout=5, retries=2, backoff=[1, 2], name=None))
    registry.add(make_spec(also_fails, queue="default", timeout=5, retries=0, backoff=None, name=None))
    return registry


@pytest.fixture
def ops_client(make_client: Callable[..., FlaskClient], failing_registry: Registry) -> FlaskClient:
    return make_client(failing_registry)


def failed_job(client: FlaskClient, run_jobs: RunJobs, registry: Registry, name: str) -> str:
    """Invoke `name`, run it to failure, return its id."""
    response = client.post(f"/functions/{name}/invocations", json={})
    assert response.status_code == 202, response.get_json()
    run_jobs(registry_=registry)
    job_id: str = response.get_json()["id"]
    assert client.get(f"/jobs/{job_id}").get_json()["status"] == "failed"
    return job_id


def test_workers_lists_each_registered_worker(client: FlaskClient, backends: Backends, registry: Registry) -> None:
    assert client.get("/workers").get_json() == {"workers": []}
    worker = build_worker(["demo_tasks", "default"], backends, registry)
    worker.register_birth()
    (listed,) = client.get("/workers").get_json()["workers"]
    assert listed["name"] == worker.name
    assert listed["queues"] == ["demo_tasks", "default"]
    assert listed["current_job"] is None
    assert (listed["successful_jobs"], listed["failed_jobs"]) == (0, 0)
    assert listed["pid"] and listed["hostname"]
    assert listed["started_at"].endswith("+00:00")
    worker.register_death()
    assert client.get("/workers").get_json() == {"workers": []}


def test_queues_count_jobs_in_each_state(
    client: FlaskClient, run_jobs: RunJobs
) -> None:
    for expression in ("1+1", "2+2", "1/0"):
        client.post("/functions/simple_calculation/invocations", json={"expression": expression})
    queues = {queue["name"]: queue for queue in client.get("/queues").get_json()["queues"]}
    assert {"demo_tasks", "ai_processing", "default"} <= set(queues)
    assert queues["demo_tasks"]["queued"] == 3
    run_jobs()
    queues = {queue["name"]: queue for queue in client.get("/queues").get_json()["queues"]}
    assert queues["demo_tasks"] == {"name": "demo_tasks", "queued": 0, "started": 0, "scheduled": 0, "deferred": 0,
                                    "failed": 1, "finished": 2, "canceled": 0}


def test_requeue_puts_failed_jobs_back_with_their_retry_policy_and_sql_row(
    ops_client: FlaskClient, run_jobs: RunJobs, failing_registry: Registry, backends: Backends
) -> None:
    job_id = failed_job(ops_client, run_jobs, failing_registry, "always_fails")
    assert backends.store.get(job_id).status == "failed"  # type: ignore[union-attr]
    response = ops_client.post("/queues/failed/requeue", json={"function": "always_fails"})
    assert response.status_code == 200
    assert response.get_json() == {"requeued": 1, "job_ids": [job_id]}
    view = ops_client.get(f"/jobs/{job_id}").get_json()
    assert (view["status"], view["error"], view["progress"]) == ("queued", None, {"percent": 0, "message": "queued"})
    row = backends.store.get(job_id)
    assert row is not None
    assert (row.status, row.error, row.ended_at) == ("queued", None, None)
    job = Job.fetch(job_id, connection=backends.connection, serializer=JSONSerializer)
    assert job.retries_left == 2  # the policy again, as for a fresh invocation
    # It runs again (and fails again: PermanentError), counting its attempts on.
    run_jobs(registry_=failing_registry)
    again = ops_client.get(f"/jobs/{job_id}").get_json()
    assert (again["status"], again["attempts"]) == ("failed", 2)
    assert ops_client.post("/queues/failed/requeue", json={}).get_json()["requeued"] == 1


def test_requeue_filters_by_function_and_queue(
    ops_client: FlaskClient, run_jobs: RunJobs, failing_registry: Registry
) -> None:
    first = failed_job(ops_client, run_jobs, failing_registry, "always_fails")
    second = failed_job(ops_client, run_jobs, failing_registry, "also_fails")
    calc = ops_client.post("/functions/simple_calculation/invocations", json={"expression": "1/0"}).get_json()["id"]
    run_jobs(registry_=failing_registry)
    assert ops_client.post("/queues/failed/requeue", json={"function": "also_fails"}).get_json() == {
        "requeued": 1, "job_ids": [second]}
    assert ops_client.post("/queues/failed/requeue", json={"queue": "default"}).get_json() == {
        "requeued": 1, "job_ids": [first]}
    assert ops_client.post("/queues/failed/requeue", json={"queue": "demo_tasks"}).get_json() == {
        "requeued": 1, "job_ids": [calc]}
    assert ops_client.post("/queues/failed/requeue").get_json() == {"requeued": 0, "job_ids": []}


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"queue": "no_such_queue"}, 404, "queue_not_found"),
        ({"function": "no_such_function"}, 404, "function_not_found"),
        ({"queue": 5}, 422, "invalid_input"),
        ({"queue": ""}, 422, "invalid_input"),
        ({"everything": True}, 422, "invalid_input"),
    ],
)
def test_requeue_rejects_bad_filters(
    client: FlaskClient, api_error: ApiError, body: dict[str, Any], status: int, code: str
) -> None:
    api_error(client.post("/queues/failed/requeue", json=body), status, code)


def test_an_unknown_queue_lists_every_queue_a_worker_serves(client: FlaskClient, api_error: ApiError) -> None:
    body = api_error(client.post("/queues/failed/requeue", json={"queue": "no_such_queue"}), 404, "queue_not_found")
    assert {"default", "callbacks", "demo_tasks"} <= set(body["details"]["known"])


def test_requeue_rejects_bodies_that_are_not_json_objects(client: FlaskClient, api_error: ApiError) -> None:
    api_error(client.post("/queues/failed/requeue", data="[1]", content_type="application/json"), 400)
    api_error(client.post("/queues/failed/requeue", data="{", content_type="application/json"), 400)
    api_error(client.post("/queues/failed/requeue", data="queue=x", content_type="text/plain"), 415)


@pytest.mark.parametrize(("method", "path"), [("GET", "/workers"), ("GET", "/queues"),
                                               ("POST", "/queues/failed/requeue")])
def test_ops_answer_503_when_redis_is_away(
    make_client: Callable[..., FlaskClient], closed_port: int, api_error: ApiError, method: str, path: str
) -> None:
    dead: redis.Redis = connect_redis(f"redis://127.0.0.1:{closed_port}/0")
    body = api_error(make_client(connection=dead).open(path, method=method), 503, "backend_unavailable")
    assert body["details"] == {"dependency": "redis"}
