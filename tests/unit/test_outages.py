"""Redis or the database unreachable: 503 with Retry-After and the JSON error shape, never a 500."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import fakeredis
import pytest
from flask.testing import FlaskClient

from runner.config import Settings
from runner.errors import BackendUnavailable
from runner.redis_connection import connect_redis
from runner.rq_seam.job_hash import ENTRY_POINT
from runner.rq_seam.queues import queue_for
from runner.store.models import InvocationRecord, utcnow
from runner.store.sql_store import Store
from tests.history import insert_rows

ApiError = Callable[..., dict[str, Any]]
INVOCATION = "/functions/simple_calculation/invocations"


def assert_unavailable(api_error: ApiError, response: Any) -> dict[str, Any]:
    body = api_error(response, 503, "backend_unavailable")
    assert int(response.headers["Retry-After"]) > 0
    return body


def test_readyz_when_both_answer(client: FlaskClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ready", "checks": {"redis": "ok", "database": "ok",
                                                              "waits": "0 of 4 in use", "streams": "0 of 4 in use"}}


# Redis away


@pytest.fixture
def redis_down_client(make_client: Callable[..., FlaskClient], closed_port: int) -> FlaskClient:
    # The client the API builds for itself, so these are the answers production gives.
    return make_client(connection=connect_redis(f"redis://127.0.0.1:{closed_port}/0"))


def test_redis_down_invocation_is_503_and_leaves_no_row(
    redis_down_client: FlaskClient, api_error: ApiError, store: Store
) -> None:
    response = redis_down_client.post(INVOCATION, json={"expression": "1+1"})
    body = assert_unavailable(api_error, response)
    assert body["details"] == {"dependency": "redis"}
    assert store.list() == ([], None)


def test_redis_down_still_checks_input_first(redis_down_client: FlaskClient, api_error: ApiError) -> None:
    api_error(redis_down_client.post(INVOCATION, json={"expression": 1}), 422, "invalid_input")


def test_redis_down_readyz_is_503_naming_redis(redis_down_client: FlaskClient, api_error: ApiError) -> None:
    body = assert_unavailable(api_error, redis_down_client.get("/readyz"))
    assert body["details"] == {"checks": {"redis": "unavailable", "database": "ok"}}
    assert "redis" in body["message"]


def test_redis_down_healthz_is_200(redis_down_client: FlaskClient) -> None:
    response = redis_down_client.get("/healthz")
    assert (response.status_code, response.get_json()) == (200, {"status": "ok"})


def test_redis_down_job_view_comes_from_the_store(redis_down_client: FlaskClient, store: Store) -> None:
    insert_rows(store, 
        InvocationRecord(
            id="known", function="simple_calculation", queue="demo_tasks", status="finished",
            input={"expression": "1"}, result={"result": 1}, attempts=1, created_at=utcnow(),
        )
    )
    response = redis_down_client.get("/jobs/known")
    assert response.status_code == 200
    assert (response.get_json()["status"], response.get_json()["result"]) == ("finished", {"result": 1})
    assert [job["id"] for job in redis_down_client.get("/jobs").get_json()["jobs"]] == ["known"]


def test_redis_down_unknown_job_is_503_not_404(redis_down_client: FlaskClient, api_error: ApiError) -> None:
    # Redis might hold it: "not found" would be a lie.
    assert_unavailable(api_error, redis_down_client.get("/jobs/0123456789abcdef"))


# Database away


@pytest.fixture
def database_down_store(closed_port: int) -> Store:
    # The driver is named explicitly here so these tests exercise the API's handling of an
    # outage; test_plain_postgresql_url_reaches_the_database covers the bare URL form.
    return Store(f"postgresql+psycopg2://postgres@127.0.0.1:{closed_port}/x")


@pytest.fixture
def database_down_client(make_client: Callable[..., FlaskClient], database_down_store: Store) -> FlaskClient:
    return make_client(store=database_down_store)


def test_database_down_invocation_is_503_and_enqueues_nothing(
    database_down_client: FlaskClient, api_error: ApiError, enqueued_ids: Callable[[], list[str]]
) -> None:
    response = database_down_client.post(INVOCATION, json={"expression": "1+1"})
    body = assert_unavailable(api_error, response)
    assert body["details"] == {"dependency": "database"}
    assert enqueued_ids() == []


def test_database_down_readyz_is_503_naming_database(
    database_down_client: FlaskClient, api_error: ApiError
) -> None:
    body = assert_unavailable(api_error, database_down_client.get("/readyz"))
    assert body["details"] == {"checks": {"redis": "ok", "database": "unavailable"}}
    assert "database" in body["message"]


@pytest.mark.parametrize("query", [{}, {"function": "simple_calculation", "limit": 5}])
def test_database_down_job_list_is_503(
    database_down_client: FlaskClient, api_error: ApiError, query: dict[str, Any]
) -> None:
    body = assert_unavailable(api_error, database_down_client.get("/jobs", query_string=query))
    assert body["details"] == {"dependency": "database"}


def test_database_down_job_view_comes_from_redis(
    database_down_client: FlaskClient, api_error: ApiError, connection: fakeredis.FakeRedis
) -> None:
    job = queue_for("demo_tasks", connection).enqueue_call(
        func=ENTRY_POINT, args=("simple_calculation", {"expression": "1"}), meta={"function": "simple_calculation"}
    )
    response = database_down_client.get(f"/jobs/{job.id}")
    assert response.status_code == 200
    assert (response.get_json()["status"], response.get_json()["input"]) == ("queued", {"expression": "1"})
    # An id Redis does not know might still be in the database: 503, not 404.
    assert_unavailable(api_error, database_down_client.get("/jobs/0123456789abcdef"))


def test_database_down_healthz_is_200(database_down_client: FlaskClient) -> None:
    assert database_down_client.get("/healthz").status_code == 200


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_plain_postgresql_url_answers_503_when_the_database_is_down(
    make_client: Callable[..., FlaskClient], api_error: ApiError, closed_port: int, scheme: str
) -> None:
    """DATABASE_URL=postgresql://... (what Procfile platforms set) must work with the pinned psycopg2."""
    url = Settings(database_url=f"{scheme}://postgres@127.0.0.1:{closed_port}/x").effective_database_url
    store = Store(url)  # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which is not installed
    client = make_client(store=store)
    body = assert_unavailable(api_error, client.post(INVOCATION, json={"expression": "1+1"}))
    assert body["details"] == {"dependency": "database"}
    with pytest.raises(BackendUnavailable):
        store.ping()
