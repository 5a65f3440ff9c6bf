"""End to end over real HTTP: gunicorn -> Redis -> `runner worker` processes -> SQL store, on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest
import requests

from runner.journal.reads import read_history
from runner.store.models import InvocationRecord
from runner.store.sql_store import Store
from tests.integration.conftest import TERMINAL_STATUSES, Stack

RETRY_TIMEOUT = 30.0


def accepted_job_id(response: requests.Response) -> str:
    """The id of a 202-accepted invocation, checking its Location header."""
    assert response.status_code == 202, response.text
    body = response.json()
    location = response.headers["Location"]
    assert urlsplit(location).path == f"/jobs/{body['id']}"
    return str(body["id"])


def parse_aware(value: str | None) -> datetime:
    """An ISO 8601 timestamp that must carry a time zone."""
    assert isinstance(value, str), value
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None and parsed.utcoffset() is not None, value
    return parsed


def assert_row_matches(stack: Stack, view: dict[str, Any]) -> InvocationRecord:
    """The SQL row of an ended job agrees with what GET /jobs/<id> showed."""
    row = stack.wait_for_row(view["id"], lambda row: row.status == view["status"])
    assert row.function == view["function"]
    assert row.queue == view["queue"]
    assert row.result == view["result"]
    assert row.error == view["error"]
    assert row.attempts == view["attempts"]
    assert row.input == view["input"]
    assert row.ended_at is not None
    assert row.started_at is not None
    return row


def test_invocation_is_accepted_then_finishes(stack: Stack) -> None:
    response = stack.invoke("simple_calculation", {"expression": "2*(3+4)"})
    job_id = accepted_job_id(response)
    accepted = response.json()
    assert accepted["status"] == "queued"
    assert accepted["function"] == "simple_calculation"
    assert accepted["queue"] == "demo_tasks"

    location = urljoin(stack.url, response.headers["Location"])
    deadline = time.monotonic() + 15
    while True:
        polled = requests.get(location, timeout=5)
        assert polled.status_code == 200, polled.text
        view = polled.json()
        if view["status"] in TERMINAL_STATUSES or time.monotonic() > deadline:
            break
        time.sleep(0.05)

    assert view["status"] == "finished", view
    assert view["id"] == job_id
    assert view["result"]["result"] == 14
    assert view["result"]["expression"] == "2*(3+4)"
    assert view["progress"]["percent"] == 100
    assert view["attempts"] == 1
    assert view["error"] is None
    assert view["input"] == {"expression": "2*(3+4)"}
    created, started, ended = (parse_aware(view[key]) for key in ("created_at", "started_at", "ended_at"))
    assert created <= started <= ended
    assert_row_matches(stack, view)


def test_a_burst_of_concurrent_invocations_is_each_recorded_and_run_once(stack: Stack) -> None:
    # Requests that arrive together share the API's SQL commits and Redis calls (group_commit):
    # every accepted one must still have its own row, with its own input, and run exactly once.
    callers, each = 24, 6

    def invoke_several(caller: int) -> list[tuple[str, int]]:
        accepted = []
        with requests.Session() as session:
            for n in range(each):
                number = caller * each + n
                response = session.post(f"{stack.url}/functions/simple_calculation/invocations",
                                        json={"expression": f"{number}+1"}, timeout=30)
                accepted.append((accepted_job_id(response), number))
        return accepted

    with ThreadPoolExecutor(callers) as pool:
        accepted = [found for batch in pool.map(invoke_several, range(callers)) for found in batch]
    assert len({job_id for job_id, _ in accepted}) == callers * each
    # The row is in before the 202: journaled in Redis with its job, where a reader of history
    # applies it first (runner.journal.reads). Read as the API reads.
    store = Store(stack.database_url)
    for job_id, number in accepted:
        row = read_history(stack.redis, store).get(job_id)
        assert row is not None and row.input == {"expression": f"{number}+1"}, (job_id, row)
    store.engine.dispose()
    for job_id, number in accepted:
        view = stack.wait_until_terminal(job_id, timeout=60)
        assert view["status"] == "finished" and view["attempts"] == 1, view
        assert view["result"]["result"] == number + 1, view
        assert_row_matches(stack, view)


def test_wait_returns_the_finished_view(stack: Stack) -> None:
    response = stack.invoke("simple_calculation", {"expression": "2*(3+4)"}, wait=10)
    assert response.status_code == 200, response.text
    view = response.json()
    assert view["status"] == "finished"
    assert view["result"]["result"] == 14
    assert view["progress"]["percent"] == 100
    assert urlsplit(response.headers["Location"]).path == f"/jobs/{view['id']}"
    assert_row_matches(stack, view)


def test_short_wait_answers_202_while_the_job_is_in_flight(stack: Stack, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    response = stack.invoke("gated_progress", {"gate": str(gate)}, wait=0.001)
    job_id = accepted_job_id(response)
    assert response.json()["status"] not in TERMINAL_STATUSES

    gate.touch()
    view = stack.wait_until_terminal(job_id)
    assert view["status"] == "finished"
    assert view["result"] == {"released": True}


def test_division_by_zero_fails_permanently(stack: Stack) -> None:
    job_id = accepted_job_id(stack.invoke("simple_calculation", {"expression": "1/0"}))
    view = stack.wait_until_terminal(job_id)
    assert view["status"] == "failed", view
    assert view["error"]["type"] == "PermanentError"
    assert "division by zero" in view["error"]["message"].lower()
    assert view["attempts"] == 1
    assert view["result"] is None
    assert_row_matches(stack, view)


def test_permanent_error_is_not_retried_despite_a_retry_policy(stack: Stack) -> None:
    description = stack.get("/functions/permanent_failure").json()
    assert description["retries"] == 3
    job_id = accepted_job_id(stack.invoke("permanent_failure", {"reason": "no such thing"}))
    view = stack.wait_until_terminal(job_id)
    assert view["status"] == "failed", view
    assert view["error"] == {"type": "PermanentError", "message": "no such thing"}
    assert view["attempts"] == 1
    # A retry would be scheduled ~1 s later: make sure none is pending and none ran.
    assert stack.redis.zscore("rq:scheduled:demo_tasks", job_id) is None
    assert stack.job(job_id)["attempts"] == 1
    assert_row_matches(stack, view)


def test_transient_failures_are_retried_until_success(stack: Stack) -> None:
    job_id = accepted_job_id(stack.invoke("unreliable_task", {"fail_times": 2}))
    view = stack.wait_until_terminal(job_id, timeout=RETRY_TIMEOUT)
    assert view["status"] == "finished", view
    assert view["result"]["succeeded_on_attempt"] == 3
    assert view["attempts"] == 3
    assert view["error"] is None
    assert_row_matches(stack, view)


def test_retries_exhausted_fail_the_job(stack: Stack) -> None:
    job_id = accepted_job_id(stack.invoke("unreliable_task", {"fail_times": 5}))
    view = stack.wait_until_terminal(job_id, timeout=RETRY_TIMEOUT)
    assert view["status"] == "failed", view
    assert view["attempts"] == 4
    assert view["error"]["type"] == "RuntimeError"
    assert "Simulated failure on attempt 4" in view["error"]["message"]
    assert view["result"] is None
    assert_row_matches(stack, view)


def test_progress_is_visible_while_the_job_runs(stack: Stack, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    job_id = accepted_job_id(stack.invoke("gated_progress", {"gate": str(gate)}))

    running = stack.wait_for(
        job_id,
        lambda view: view["status"] == "started" and view["progress"] == {"percent": 50, "message": "halfway"},
    )
    assert running["attempts"] == 1
    parse_aware(running["started_at"])
    assert running["ended_at"] is None
    row = stack.wait_for_row(job_id, lambda row: row.progress_percent == 50)
    assert row.status == "started"
    assert row.progress_message == "halfway"
    assert row.ended_at is None

    gate.touch()
    view = stack.wait_until_terminal(job_id)
    assert view["status"] == "finished", view
    assert view["progress"] == {"percent": 100, "message": "released"}
    assert view["result"] == {"released": True}
    row = assert_row_matches(stack, view)
    assert row.progress_percent == 100


def list_all_jobs(stack: Stack, function: str, limit: int) -> list[dict[str, Any]]:
    """Every page of GET /jobs?function=..., following `next`."""
    jobs: list[dict[str, Any]] = []
    params: dict[str, Any] = {"function": function, "limit": limit}
    for _page in range(100):
        response = stack.get("/jobs", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["jobs"]) <= limit
        jobs += body["jobs"]
        if body["next"] is None:
            return jobs
        params["cursor"] = body["next"]
    pytest.fail("GET /jobs never returned a last page")


def test_the_store_answers_after_redis_forgot_the_job(stack: Stack) -> None:
    views = []
    for expression in ("1+1", "2+2", "3+3"):
        response = stack.invoke("simple_calculation", {"expression": expression}, wait=10)
        assert response.status_code == 200, response.text
        views.append(response.json())
        assert_row_matches(stack, views[-1])
    forgotten = views[1]
    job_id = forgotten["id"]

    keys = [f"rq:job:{job_id}", *stack.redis.scan_iter(match=f"rq:results:{job_id}*")]
    assert stack.redis.delete(*keys) >= 1
    assert not stack.redis.exists(f"rq:job:{job_id}")

    view = stack.job(job_id)
    assert view["status"] == "finished"
    assert view["result"] == forgotten["result"]
    assert view["result"]["result"] == 4
    assert view["attempts"] == forgotten["attempts"]
    assert view["progress"]["percent"] == 100
    for key in ("created_at", "started_at", "ended_at"):
        parse_aware(view[key])

    listed = list_all_jobs(stack, "simple_calculation", limit=2)
    assert {job["function"] for job in listed} == {"simple_calculation"}
    assert len({job["id"] for job in listed}) == len(listed), "a job was listed twice across pages"
    created = [parse_aware(job["created_at"]) for job in listed]
    assert created == sorted(created, reverse=True), "not newest first"
    ids = [job["id"] for job in listed]
    mine = [ids.index(v["id"]) for v in views]
    assert mine == sorted(mine, reverse=True), "the three jobs are not newest first"
    listed_forgotten = listed[ids.index(job_id)]
    assert listed_forgotten["status"] == "finished"
    assert listed_forgotten["result"] == forgotten["result"]


def test_a_fan_in_after_a_job_redis_forgot_reads_its_result_from_the_row(stack: Stack) -> None:
    records = [{"amount": 2}, {"amount": 4}]
    parent = stack.invoke("data_processing", {"records": records}, wait=10).json()
    assert parent["status"] == "finished", parent
    stack.wait_for_row(parent["id"], lambda row: row.status == "finished")
    keys = [f"rq:job:{parent['id']}", *stack.redis.scan_iter(match=f"rq:results:{parent['id']}*")]
    assert stack.redis.delete(*keys) >= 1

    # Only the row knows the parent now: it is accepted, found finished, and its result read from SQL.
    child = stack.invoke("combine_profiles", {}, after=parent["id"], wait=10)
    view = child.json()
    assert (child.status_code, view["status"], view["after"]) == (200, "finished", [parent["id"]]), view
    assert view["result"]["rows"] == 2 and view["result"]["columns"]["amount"]["mean"] == 3.0
    row = stack.wait_for_row(view["id"], lambda row: row.status == "finished")
    assert row.after_ids == [parent["id"]]
