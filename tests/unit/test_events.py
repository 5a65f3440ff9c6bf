"""GET /jobs/<id>/events: the Server-Sent Events stream of a job (fakeredis, in-process worker)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from rq.job import Job
from rq.serializers import JSONSerializer
from werkzeug.test import TestResponse

import api
from api.events import StreamLimits, format_event, job_events
from runner.authoring.registry import Registry
from runner.client.events import ServerEvent, parse_events
from runner.config import Settings, SettingsError
from runner.services.backends import Backends
from runner.services.job_views import get_job_view
from tests.history import delete_row, update_row

Invoke = Callable[..., TestResponse]
ApiError = Callable[..., dict[str, Any]]
RunJobs = Callable[..., bool]
FAST = {"sse_poll_seconds": 0.01, "sse_heartbeat_seconds": 0.05, "sse_max_seconds": 5}


def stream_app(backends: Backends, registry: Registry, **stream_settings: Any) -> Flask:
    """An app over the fixtures' connections with event-stream settings (Settings fields) for tests."""
    settings = dataclasses.replace(backends.settings, **{**FAST, **stream_settings})
    tuned = dataclasses.replace(backends, settings=settings)
    return api.create_app({"RUNNER_SETTINGS": settings, "RUNNER_BACKENDS": tuned,
                           "RUNNER_REGISTRY": registry, "TESTING": True})


def read_events(response: TestResponse) -> list[ServerEvent]:
    """Every event of a streamed response, reading it to its end."""
    text = b"".join(response.iter_encoded()).decode()
    response.close()
    return list(parse_events(iter(text.split("\n"))))


class FakeTime:
    """A clock that moves only when the stream sleeps; runs a scripted step at each sleep."""

    def __init__(self, steps: list[Callable[[], None]] | None = None) -> None:
        self.now = 1000.0
        self.sleeps = 0
        self.steps = list(steps or [])

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.sleeps += 1
        if self.steps:
            self.steps.pop(0)()


def collect(chunks: Iterator[str]) -> tuple[list[ServerEvent], str]:
    text = "".join(chunks)
    return list(parse_events(iter(text.split("\n")))), text


def set_job(
    backends: Backends, job_id: str, *, status: str | None = None, progress: tuple[int, str] | None = None
) -> None:
    """Change a job in Redis the way a worker would."""
    job = Job.fetch(job_id, connection=backends.connection, serializer=JSONSerializer)
    if progress is not None:
        job.meta["progress"] = {"percent": progress[0], "message": progress[1]}
        job.save_meta()
    if status is not None:
        job.set_status(status)


LIMITS = StreamLimits(max_seconds=60, heartbeat_seconds=15, poll_seconds=0.2, max_streams=4)


def test_unknown_job_is_a_json_404_before_any_stream(client: FlaskClient, api_error: ApiError) -> None:
    api_error(client.get("/jobs/nope/events"), 404, "job_not_found")
    api_error(client.get("/jobs/bad%20id!/events"), 404, "job_not_found")


def test_an_ended_job_gets_its_state_and_one_final_event(
    client: FlaskClient, invoke: Invoke, run_jobs: RunJobs
) -> None:
    job_id = invoke("simple_calculation", {"expression": "2*(3+4)"}).get_json()["id"]
    run_jobs()
    response = client.get(f"/jobs/{job_id}/events", buffered=False)
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    events = read_events(response)
    assert [event.event for event in events] == ["state", "finished"]
    assert events[1].json() == client.get(f"/jobs/{job_id}").get_json()
    assert events[1].json()["result"]["result"] == 14


def test_a_failed_job_ends_with_a_failed_event_and_its_error(
    client: FlaskClient, invoke: Invoke, run_jobs: RunJobs
) -> None:
    job_id = invoke("simple_calculation", {"expression": "1/0"}).get_json()["id"]
    run_jobs()
    events = read_events(client.get(f"/jobs/{job_id}/events", buffered=False))
    assert [event.event for event in events] == ["state", "failed"]
    assert events[1].json()["error"]["type"] == "PermanentError"


def test_the_stream_follows_status_and_progress_until_the_job_ends(
    backends: Backends, invoke: Invoke, run_jobs: RunJobs
) -> None:
    job_id = invoke("simple_calculation", {"expression": "6*7"}).get_json()["id"]
    steps = [
        lambda: set_job(backends, job_id, status="started", progress=(0, "started")),
        lambda: set_job(backends, job_id, progress=(30, "parsing")),
        lambda: None,  # nothing changed: nothing sent
        lambda: set_job(backends, job_id, progress=(60, "evaluating")),
        lambda: set_job(backends, job_id, status="queued"),  # back on the queue for the in-process worker
        run_jobs,
    ]
    fake = FakeTime(steps)
    events, _ = collect(job_events(get_job_view(job_id, backends), backends, LIMITS, clock=fake.clock,
                                   sleep=fake.sleep))
    names = [event.event for event in events]
    assert names == ["state", "status", "progress", "progress", "progress", "status", "progress", "progress",
                     "finished"]
    assert events[0].json()["status"] == "queued"
    assert events[1].json() == {"status": "started", "previous": "queued", "attempts": 0}
    assert [e.json()["percent"] for e in events if e.event == "progress"] == [0, 30, 60, 60, 100]
    assert events[3].json() == {"percent": 30, "message": "parsing", "status": "started"}
    assert events[-1].json()["status"] == "finished"
    assert events[-1].json()["result"]["result"] == 42
    assert fake.sleeps == len(steps)


def test_a_job_that_ends_between_the_first_read_and_the_stream_still_ends_it(
    backends: Backends, invoke: Invoke, run_jobs: RunJobs
) -> None:
    # The endpoint reads the view (queued), then the job ends before the stream's first poll.
    job_id = invoke("simple_calculation", {"expression": "6*7"}).get_json()["id"]
    view = get_job_view(job_id, backends)
    assert run_jobs()
    fake = FakeTime()
    events, _ = collect(job_events(view, backends, LIMITS, clock=fake.clock, sleep=fake.sleep))
    assert [event.event for event in events][0] == "state"
    assert events[-1].event == "finished"
    assert events[-1].json()["result"]["result"] == 42
    assert fake.sleeps == 1  # caught at the first poll, not at the time limit


def test_a_stream_ends_with_a_timeout_event_after_its_time_limit(backends: Backends, invoke: Invoke) -> None:
    job_id = invoke("simple_calculation", {"expression": "1"}).get_json()["id"]
    fake = FakeTime()
    limits = StreamLimits(max_seconds=10, heartbeat_seconds=3, poll_seconds=0.2, max_streams=1)
    events, text = collect(job_events(get_job_view(job_id, backends), backends, limits, clock=fake.clock,
                                      sleep=fake.sleep))
    assert [event.event for event in events] == ["state", "timeout"]
    assert events[1].retry_ms == 1000
    assert events[1].json()["status"] == "queued"
    assert text.count(": keep-alive\n\n") == 3  # at 3, 6 and 9 s of silence
    assert 10 <= fake.now - 1000 < 10.3
    assert fake.sleeps == pytest.approx(10 / 0.2, abs=1)  # one poll per interval, no busy loop


def test_a_job_that_disappears_ends_the_stream_with_an_error_event(
    backends: Backends, invoke: Invoke
) -> None:
    job_id = invoke("simple_calculation", {"expression": "1"}).get_json()["id"]

    def forget() -> None:
        backends.connection.delete(Job.key_for(job_id))
        delete_row(backends.store, job_id)

    fake = FakeTime([forget])
    events, _ = collect(job_events(get_job_view(job_id, backends), backends, LIMITS, clock=fake.clock,
                                   sleep=fake.sleep))
    assert [event.event for event in events] == ["state", "stream-error"]
    assert events[1].json()["error"] == "job_not_found"
    assert events[1].retry_ms is None  # nothing to come back for


def test_a_job_redis_forgot_is_followed_from_the_store(backends: Backends, invoke: Invoke) -> None:
    job_id = invoke("simple_calculation", {"expression": "1"}).get_json()["id"]

    def finish_in_sql_only() -> None:
        backends.connection.delete(Job.key_for(job_id))
        update_row(backends.store, job_id, status="finished", result={"result": 1}, progress_percent=100)

    fake = FakeTime([finish_in_sql_only])
    events, _ = collect(job_events(get_job_view(job_id, backends), backends, LIMITS, clock=fake.clock,
                                   sleep=fake.sleep))
    assert [event.event for event in events] == ["state", "progress", "finished"]
    assert events[-1].json()["result"] == {"result": 1}


def test_streams_over_the_limit_get_503_until_one_closes(
    backends: Backends, registry: Registry, invoke: Invoke, api_error: ApiError
) -> None:
    client = stream_app(backends, registry, sse_max_streams=1).test_client()
    job_id = client.post("/functions/simple_calculation/invocations", json={"expression": "1"}).get_json()["id"]
    first = client.get(f"/jobs/{job_id}/events", buffered=False)
    assert first.status_code == 200
    refused = client.get(f"/jobs/{job_id}/events", buffered=False)
    body = api_error(refused, 503, "too_many_streams")
    assert body["details"] == {"max_streams": 1}
    assert refused.headers["Retry-After"] == "2"
    first.close()  # the WSGI server closes a stream whose client went away: the slot is free again
    second = client.get(f"/jobs/{job_id}/events", buffered=False)
    assert second.status_code == 200
    second.close()


def test_a_stream_through_the_app_times_out_and_frees_its_slot(backends: Backends, registry: Registry) -> None:
    client = stream_app(backends, registry, sse_max_seconds=0.2, sse_max_streams=1).test_client()
    job_id = client.post("/functions/simple_calculation/invocations", json={"expression": "1"}).get_json()["id"]
    for _ in range(2):  # the second stream only opens if the first released its slot on its own
        events = read_events(client.get(f"/jobs/{job_id}/events", buffered=False))
        assert [event.event for event in events] == ["state", "timeout"]


def test_head_answers_headers_without_holding_a_stream(client: FlaskClient, invoke: Invoke) -> None:
    job_id = invoke("simple_calculation", {"expression": "1"}).get_json()["id"]
    response = client.head(f"/jobs/{job_id}/events")
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    assert response.data == b""


@pytest.mark.parametrize("value", ["soon", "0", "-5"])
def test_a_bad_stream_setting_in_the_environment_stops_the_app(
    backends: Backends, registry: Registry, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("RUNNER_SSE_MAX_SECONDS", value)
    with pytest.raises(SettingsError, match="RUNNER_SSE_MAX_SECONDS"):
        api.create_app({"RUNNER_BACKENDS": backends, "RUNNER_REGISTRY": registry})  # settings from the environment


def test_stream_settings_come_from_the_environment() -> None:
    settings = Settings.from_env({"RUNNER_SSE_MAX_SECONDS": "42", "RUNNER_SSE_MAX_STREAMS": "7"})
    limits = StreamLimits.from_settings(settings)
    assert (limits.max_seconds, limits.max_streams, limits.heartbeat_seconds, limits.poll_seconds) == (42, 7, 15, 0.2)
    assert type(limits.max_streams) is int


def test_event_data_stays_on_one_line() -> None:
    text = format_event("progress", {"message": "two\nlines"}, retry_ms=500)
    assert text == 'event: progress\nretry: 500\ndata: {"message":"two\\nlines"}\n\n'
    (event,) = parse_events(iter(text.split("\n")))
    assert event.json() == {"message": "two\nlines"}
    assert event.retry_ms == 500


def test_the_event_parser_skips_comments_and_joins_data_lines() -> None:
    lines = [": keep-alive", "", "event: a", "data: 1", "data: 2", "", "data: {}", "", "retry: x", ""]
    assert list(parse_events(iter(lines))) == [ServerEvent("a", "1\n2"), ServerEvent("message", "{}")]
    assert json.loads(ServerEvent("a", '{"x": 1}').data) == {"x": 1}


def test_a_stream_ends_at_the_first_poll_after_its_client_went_away(backends: Backends, invoke: Invoke) -> None:
    job_id = invoke("simple_calculation", {"expression": "1"}).get_json()["id"]
    fake = FakeTime()
    polls_before_leaving = 3
    gone = iter([False] * polls_before_leaving + [True])
    limits = StreamLimits(max_seconds=300, heartbeat_seconds=15, poll_seconds=0.2, max_streams=1)
    events, _ = collect(job_events(get_job_view(job_id, backends), backends, limits, clock=fake.clock,
                                   sleep=fake.sleep, client_gone=lambda: next(gone)))
    assert [event.event for event in events] == ["state"]  # no timeout, no heartbeat: it just ends
    assert fake.sleeps == polls_before_leaving + 1
