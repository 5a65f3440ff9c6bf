"""`?delay=S` and `?at=ISO`: scheduled jobs, rounded up to RQ's whole seconds, and every bad value refused."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import fakeredis
import pytest
from flask.testing import FlaskClient
from rq.registry import ScheduledJobRegistry

from runner.rq_seam.queues import queue_for
from runner.services.invocation import schedule_time
from runner.store.sql_store import Store

ApiError = Callable[..., dict[str, Any]]
PATH = "/functions/simple_calculation/invocations"


def scheduled_at(connection: fakeredis.FakeRedis, job_id: str) -> float:
    score = connection.zscore(ScheduledJobRegistry("demo_tasks", connection=connection).key, job_id)
    assert score is not None, "the job is not in the scheduled registry"
    return float(score)


def test_delay_schedules_the_job(client: FlaskClient, connection: fakeredis.FakeRedis, store: Store) -> None:
    before = datetime.now(UTC)
    response = client.post(f"{PATH}?delay=5", json={"expression": "1+1"})
    after = datetime.now(UTC)
    assert response.status_code == 202
    view = response.get_json()
    assert (view["status"], view["progress"]["message"]) == ("scheduled", "scheduled")
    assert queue_for("demo_tasks", connection).count == 0
    due = scheduled_at(connection, view["id"])
    # Never early, and at most the rounding-up second late.
    assert (before + timedelta(seconds=5)).timestamp() <= due <= (after + timedelta(seconds=6)).timestamp()
    record = store.get(view["id"])
    assert record is not None and record.status == "scheduled"
    assert client.get(f"/jobs/{view['id']}").get_json()["status"] == "scheduled"


@pytest.mark.parametrize("suffix", ["Z", "+00:00", "+02:00", "-05:30"])
def test_at_schedules_the_job_at_that_instant(client: FlaskClient, connection: fakeredis.FakeRedis,
                                              suffix: str) -> None:
    offset = {"Z": timedelta(0), "+00:00": timedelta(0), "+02:00": timedelta(hours=2),
              "-05:30": -timedelta(hours=5, minutes=30)}[suffix]
    when = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    text = (when + offset).replace(tzinfo=None).isoformat() + suffix
    response = client.post(f"{PATH}?at={quote(text)}", json={"expression": "1+1"})
    assert response.status_code == 202, response.get_json()
    assert scheduled_at(connection, response.get_json()["id"]) == when.timestamp()


def test_an_unencoded_plus_in_at_is_understood(client: FlaskClient, connection: fakeredis.FakeRedis) -> None:
    when = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    text = (when + timedelta(hours=2)).replace(tzinfo=None).isoformat() + "+02:00"
    response = client.post(f"{PATH}?at={text}", json={"expression": "1+1"})  # '+' arrives as a space
    assert response.status_code == 202, response.get_json()
    assert scheduled_at(connection, response.get_json()["id"]) == when.timestamp()


def test_a_time_already_passed_runs_now(client: FlaskClient, connection: fakeredis.FakeRedis) -> None:
    past = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    response = client.post(f"{PATH}?at={quote(past)}", json={"expression": "1+1"})
    assert response.status_code == 202 and response.get_json()["status"] == "queued"
    assert queue_for("demo_tasks", connection).job_ids == [response.get_json()["id"]]


def test_a_scheduled_job_with_wait_answers_202_while_it_waits(client: FlaskClient) -> None:
    response = client.post(f"{PATH}?delay=30&wait=0.05", json={"expression": "1+1"})
    assert response.status_code == 202 and response.get_json()["status"] == "scheduled"


THIRTY_DAYS = 30 * 24 * 3600


@pytest.mark.parametrize(
    ("query", "word"),
    [
        ("delay=0", "delay"),
        ("delay=-1", "delay"),
        ("delay=abc", "delay"),
        ("delay=", "delay"),
        ("delay=nan", "delay"),
        ("delay=inf", "delay"),
        ("delay=1e400", "delay"),
        (f"delay={THIRTY_DAYS + 1}", "delay"),
        ("at=2030-01-01T00:00:00", "time zone"),
        ("at=tomorrow", "at"),
        ("at=", "at"),
        ("at=2030-13-01T00:00:00Z", "at"),
        ("at=9999-12-31T23:59:59Z", "days ahead"),
        ("delay=5&at=2030-01-01T00:00:00Z", "not both"),
    ],
)
def test_bad_schedules_are_refused(client: FlaskClient, api_error: ApiError, query: str, word: str,
                                   assert_nothing_enqueued: Callable[[], None]) -> None:
    body = api_error(client.post(f"{PATH}?{query}", json={"expression": "1+1"}), 400, "malformed_request")
    assert word in body["message"]
    assert_nothing_enqueued()


def test_the_longest_delay_is_allowed(client: FlaskClient) -> None:
    assert client.post(f"{PATH}?delay={THIRTY_DAYS}", json={"expression": "1"}).status_code == 202


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (datetime(2030, 1, 1, 0, 0, 0, tzinfo=UTC), datetime(2030, 1, 1, 0, 0, 0, tzinfo=UTC)),
        (datetime(2030, 1, 1, 0, 0, 0, 1, tzinfo=UTC), datetime(2030, 1, 1, 0, 0, 1, tzinfo=UTC)),
        (datetime(2030, 1, 1, 0, 0, 59, 999999, tzinfo=UTC), datetime(2030, 1, 1, 0, 1, 0, tzinfo=UTC)),
    ],
)
def test_schedule_times_round_up_to_whole_seconds(given: datetime, expected: datetime) -> None:
    assert schedule_time(given) == expected
