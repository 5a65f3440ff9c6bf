"""GET /jobs/<id> (live from Redis, then from the SQL row) and GET /jobs (history, filters, pages)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
import pytest
from flask.testing import FlaskClient
from rq.registry import FailedJobRegistry, ScheduledJobRegistry
from rq.serializers import JSONSerializer
from werkzeug.test import TestResponse

from runner.rq_seam.queues import queue_for
from runner.store.models import LISTED_JSON_CHARS, InvocationRecord
from runner.store.sql_store import Store
from tests.history import insert_rows

Invoke = Callable[..., TestResponse]
ApiError = Callable[..., dict[str, Any]]
RunJobs = Callable[..., bool]

T0 = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)


def make_record(index: int, *, function: str = "simple_calculation", status: str = "queued",
                created_at: datetime | None = None) -> InvocationRecord:
    """A row whose id sorts like its index, created `index` seconds after T0 unless told otherwise."""
    return InvocationRecord(
        id=f"job{index:03d}",
        function=function,
        queue="demo_tasks",
        status=status,
        input={"expression": str(index)},
        attempts=0,
        created_at=created_at or T0 + timedelta(seconds=index),
    )


@pytest.fixture
def history(store: Store) -> list[InvocationRecord]:
    """Nine rows of two functions in three statuses; rows 6-8 share one timestamp."""
    statuses = ["queued", "finished", "failed"]
    records = [
        make_record(
            index,
            function="unreliable_task" if index % 2 else "simple_calculation",
            status=statuses[index % 3],
            created_at=T0 + timedelta(seconds=6) if index >= 6 else None,
        )
        for index in range(9)
    ]
    for record in records:
        insert_rows(store, record)
    return records


def newest_first(records: list[InvocationRecord]) -> list[str]:
    return [record.id for record in sorted(records, key=lambda r: (r.created_at, r.id), reverse=True)]


def list_ids(client: FlaskClient, **query: Any) -> list[str]:
    response = client.get("/jobs", query_string=query)
    assert response.status_code == 200, response.get_json()
    return [job["id"] for job in response.get_json()["jobs"]]


# One job


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/jobs/0123456789abcdef0123456789abcdef", id="unknown-id"),
        pytest.param("/jobs/..%2F..", id="dot-dot-slash"),
        pytest.param("/jobs/" + "a" * 100, id="100-chars"),
        pytest.param("/jobs/%00", id="nul"),
        pytest.param("/jobs/a%20b", id="space"),
        pytest.param("/jobs/%E2%98%83", id="snowman"),
        pytest.param("/jobs/rq:job:x", id="redis-key"),
    ],
)
def test_unknown_or_odd_job_id_is_a_json_404(client: FlaskClient, api_error: ApiError, path: str) -> None:
    api_error(client.get(path), 404)


def test_finished_job_view_falls_back_to_the_sql_row(
    invoke: Invoke, client: FlaskClient, run_jobs: RunJobs, connection: fakeredis.FakeRedis
) -> None:
    location = invoke("simple_calculation", {"expression": "2*(3+4)"}).headers["Location"]
    run_jobs()
    live = client.get(location).get_json()
    job_id = live["id"]
    deleted = connection.delete(f"rq:job:{job_id}", *connection.keys(f"rq:results:{job_id}*"))
    assert deleted >= 2  # the job hash and its results stream
    assert connection.exists(f"rq:job:{job_id}") == 0
    response = client.get(location)
    assert response.status_code == 200
    stored = response.get_json()
    for key in ("id", "function", "queue", "status", "result", "error", "attempts", "input", "progress",
                "started_at", "ended_at"):  # the row mirrors the job, to the microsecond
        assert stored[key] == live[key], key
    assert (stored["status"], stored["result"]["result"], stored["progress"]["percent"]) == ("finished", 14, 100)
    assert stored["ended_at"].endswith("+00:00")


def test_queued_job_view_falls_back_to_the_sql_row(
    invoke: Invoke, client: FlaskClient, connection: fakeredis.FakeRedis, store: Store
) -> None:
    location = invoke("unreliable_task", {"fail_times": 2}).headers["Location"]
    assert store.get(location.rsplit("/", 1)[-1]) is not None  # its row has reached SQL (from the journal)
    connection.flushall()
    view = client.get(location).get_json()
    assert (view["status"], view["function"], view["attempts"]) == ("queued", "unreliable_task", 0)
    assert view["input"] == {"fail_times": 2, "failure_rate": None, "seed": None}


def test_failed_job_shows_the_permanent_error_and_is_not_retried(
    invoke: Invoke, client: FlaskClient, run_jobs: RunJobs, connection: fakeredis.FakeRedis, store: Store
) -> None:
    job_id = invoke("simple_calculation", {"expression": "1/0"}).get_json()["id"]
    run_jobs()
    view = client.get(f"/jobs/{job_id}").get_json()
    assert view["status"] == "failed"
    assert view["error"] == {"type": "PermanentError", "message": "Division by zero"}
    assert view["attempts"] == 1
    assert view["result"] is None
    assert job_id in FailedJobRegistry("demo_tasks", connection=connection).get_job_ids()
    assert ScheduledJobRegistry("demo_tasks", connection=connection).get_job_ids() == []
    assert queue_for("demo_tasks", connection).count == 0
    assert run_jobs() is False  # nothing left to run
    record = store.get(job_id)
    assert record is not None
    assert (record.status, record.error, record.attempts) == ("failed", view["error"], 1)
    assert record.ended_at is not None


def test_transient_failure_is_scheduled_for_retry(
    invoke: Invoke, client: FlaskClient, run_jobs: RunJobs, connection: fakeredis.FakeRedis, store: Store
) -> None:
    job_id = invoke("unreliable_task", {"fail_times": 1}).get_json()["id"]
    run_jobs()
    view = client.get(f"/jobs/{job_id}").get_json()
    assert (view["status"], view["attempts"], view["result"]) == ("scheduled", 1, None)
    scheduled = ScheduledJobRegistry("demo_tasks", connection=connection, serializer=JSONSerializer)
    assert scheduled.get_job_ids() == [job_id]
    record = store.get(job_id)
    assert record is not None
    assert (record.status, record.attempts, record.ended_at) == ("scheduled", 1, None)

    # What the scheduler does once the 1 s backoff is over: the second attempt succeeds.
    scheduled.requeue(job_id)
    run_jobs()
    view = client.get(f"/jobs/{job_id}").get_json()
    assert (view["status"], view["attempts"], view["error"]) == ("finished", 2, None)
    assert view["result"]["succeeded_on_attempt"] == 2
    record = store.get(job_id)
    assert record is not None
    assert (record.status, record.attempts) == ("finished", 2)


# The history


def test_list_is_newest_first(client: FlaskClient, history: list[InvocationRecord]) -> None:
    response = client.get("/jobs")
    assert response.status_code == 200
    body = response.get_json()
    assert list(body) == ["jobs", "next"]
    assert [job["id"] for job in body["jobs"]] == newest_first(history)
    assert body["next"] is None
    assert all(job["created_at"].endswith("+00:00") for job in body["jobs"])


def test_list_rows_cut_long_input_and_result_and_say_so_the_job_has_them_whole(
    client: FlaskClient, store: Store
) -> None:
    # {"text": "..."} is 12 characters of JSON around the text: exactly LISTED_JSON_CHARS, then one more.
    whole = {"text": "w" * (LISTED_JSON_CHARS - 12)}
    over = {"text": "o" * (LISTED_JSON_CHARS - 11)}
    huge = {"text": "h" * 1_000_000}
    for index, (input_value, result) in enumerate([(whole, [whole]), (over, over), (huge, None)]):
        record = make_record(index, status="finished")
        record.input, record.result = input_value, result
        insert_rows(store, record)
    rows = {job["id"]: job for job in client.get("/jobs").get_json()["jobs"]}
    assert (rows["job000"]["input"], rows["job000"]["input_truncated"]) == (whole, False)
    assert rows["job000"]["result_truncated"] is True
    assert rows["job000"]["result"] == json.dumps([whole])[:LISTED_JSON_CHARS]
    assert (rows["job001"]["input_truncated"], rows["job001"]["result_truncated"]) == (True, True)
    assert rows["job001"]["input"] == json.dumps(over)[:LISTED_JSON_CHARS]
    assert (rows["job002"]["input"], rows["job002"]["input_truncated"]) == (json.dumps(huge)[:LISTED_JSON_CHARS], True)
    assert (rows["job002"]["result"], rows["job002"]["result_truncated"]) == (None, False)
    for job_id, input_value, result in [("job001", over, over), ("job002", huge, None)]:
        view = client.get(f"/jobs/{job_id}").get_json()
        assert (view["input"], view["result"]) == (input_value, result)
        assert (view["input_truncated"], view["result_truncated"]) == (False, False)


def test_list_of_invocations_made_through_the_api(invoke: Invoke, client: FlaskClient) -> None:
    ids = [invoke("simple_calculation", {"expression": str(n)}).get_json()["id"] for n in range(3)]
    assert sorted(list_ids(client)) == sorted(ids)
    assert list_ids(client)[0] == ids[-1]


def test_empty_history(client: FlaskClient) -> None:
    assert client.get("/jobs").get_json() == {"jobs": [], "next": None}


@pytest.mark.parametrize(
    "query",
    [
        {"function": "unreliable_task"},
        {"function": "simple_calculation"},
        {"function": "nope"},
        {"status": "finished"},
        {"status": "failed"},
        {"status": "started"},
        {"function": "unreliable_task", "status": "queued"},
    ],
)
def test_list_filters(client: FlaskClient, history: list[InvocationRecord], query: dict[str, str]) -> None:
    expected = [
        record
        for record in history
        if record.function == query.get("function", record.function)
        and record.status == query.get("status", record.status)
    ]
    assert list_ids(client, **query) == newest_first(expected)


@pytest.mark.parametrize(
    "query",
    [
        pytest.param({"status": "bogus"}, id="status-bogus"),
        pytest.param({"status": "FINISHED"}, id="status-uppercase"),
        pytest.param({"limit": "0"}, id="limit-0"),
        pytest.param({"limit": "101"}, id="limit-101"),
        pytest.param({"limit": "-1"}, id="limit-negative"),
        pytest.param({"limit": "abc"}, id="limit-abc"),
        pytest.param({"limit": "2.5"}, id="limit-fraction"),
        pytest.param({"cursor": "garbage"}, id="cursor-garbage"),
        pytest.param({"cursor": "!!!!"}, id="cursor-not-base64"),
        pytest.param({"cursor": base64.urlsafe_b64encode(b"no separator").decode()}, id="cursor-no-separator"),
        pytest.param({"cursor": base64.urlsafe_b64encode(b"yesterday|job001").decode()}, id="cursor-bad-date"),
        pytest.param({"cursor": base64.urlsafe_b64encode(b"\xff\xfe|x").decode()}, id="cursor-not-utf8"),
        # Dates that parse but overflow when moved to UTC: OverflowError, not ValueError.
        pytest.param({"cursor": base64.urlsafe_b64encode(b"0001-01-01T00:00:00+01:00|x").decode()},
                     id="cursor-year-1-east-of-utc"),
        pytest.param({"cursor": base64.urlsafe_b64encode(b"9999-12-31T23:59:59-01:00|x").decode()},
                     id="cursor-year-9999-west-of-utc"),
    ],
)
def test_bad_list_query_is_400(
    client: FlaskClient, api_error: ApiError, history: list[InvocationRecord], query: dict[str, str]
) -> None:
    api_error(client.get("/jobs", query_string=query), 400, "malformed_request")


@pytest.mark.parametrize("limit", [1, 2, 3, 4, 8, 9, 100])
def test_pages_walk_every_row_once(client: FlaskClient, history: list[InvocationRecord], limit: int) -> None:
    seen: list[str] = []
    query: dict[str, Any] = {"limit": limit}
    for _ in range(len(history) + 1):
        body = client.get("/jobs", query_string=query).get_json()
        assert 1 <= len(body["jobs"]) <= limit
        seen += [job["id"] for job in body["jobs"]]
        if body["next"] is None:
            break
        query["cursor"] = body["next"]
    else:
        pytest.fail("the pages never ended")
    assert seen == newest_first(history)
    assert len(seen) == len(set(seen))


def test_pages_with_a_filter(client: FlaskClient, history: list[InvocationRecord]) -> None:
    first = client.get("/jobs", query_string={"function": "simple_calculation", "limit": 2}).get_json()
    second = client.get(
        "/jobs", query_string={"function": "simple_calculation", "limit": 2, "cursor": first["next"]}
    ).get_json()
    ids = [job["id"] for job in first["jobs"] + second["jobs"]]
    expected = newest_first([record for record in history if record.function == "simple_calculation"])
    assert ids == expected[:4]


def test_default_page_size_is_20(client: FlaskClient, store: Store) -> None:
    for index in range(25):
        insert_rows(store, make_record(index))
    body = client.get("/jobs").get_json()
    assert len(body["jobs"]) == 20
    assert body["next"] is not None
    rest = client.get("/jobs", query_string={"cursor": body["next"]}).get_json()
    assert (len(rest["jobs"]), rest["next"]) == (5, None)
