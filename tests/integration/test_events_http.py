"""GET /jobs/<id>/events over real HTTP: gunicorn (gthread) streaming a job that real workers run."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from runner.client.events import ServerEvent, parse_events
from tests.integration.conftest import Stack

MAX_SECONDS = 3.0
HEARTBEAT_SECONDS = 0.5
STREAM_ENV = {"RUNNER_SSE_MAX_SECONDS": str(MAX_SECONDS), "RUNNER_SSE_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS)}


@pytest.fixture(scope="module")
def events_stack(stack_factory: Callable[..., Stack]) -> Stack:
    """One SQLite stack whose streams end after 3 s and beat every 0.5 s."""
    return stack_factory(extra_env=STREAM_ENV)


class EventReader:
    """An open event stream read line by line; `raw` keeps every line (comments included)."""

    def __init__(self, stack: Stack, job_id: str) -> None:
        self.response = requests.get(f"{stack.url}/jobs/{job_id}/events", stream=True, timeout=10,
                                     headers={"Accept": "text/event-stream"})
        self.raw: list[str] = []
        self.events = parse_events(self._lines())

    def _lines(self) -> Iterator[str]:
        for line in self.response.iter_lines(decode_unicode=True):
            self.raw.append(line)
            yield line

    def next(self) -> ServerEvent:
        return next(self.events)

    def until(self, predicate: Callable[[ServerEvent], bool]) -> list[ServerEvent]:
        """Events up to and including the first that satisfies `predicate`."""
        seen = []
        for event in self.events:
            seen.append(event)
            if predicate(event):
                return seen
        pytest.fail(f"the stream ended before the expected event; saw {[e.event for e in seen]}")

    def rest(self) -> list[ServerEvent]:
        """Every remaining event, until the server closes the stream."""
        return list(self.events)

    def close(self) -> None:
        self.response.close()


def gated_job(stack: Stack, gate: Path) -> str:
    response = stack.invoke("gated_progress", {"gate": str(gate)})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def test_a_stream_shows_live_progress_then_the_final_view_and_closes(events_stack: Stack, tmp_path: Path) -> None:
    # Both workers busy first, so the followed job is still queued when the stream opens.
    blockers_gate = tmp_path / "blockers"
    blockers = [gated_job(events_stack, blockers_gate) for _ in range(events_stack.workers)]
    for blocker in blockers:
        events_stack.wait_for(blocker, lambda view: view["progress"]["percent"] == 50)
    gate = tmp_path / "gate"
    job_id = gated_job(events_stack, gate)
    reader = EventReader(events_stack, job_id)
    try:
        assert reader.response.status_code == 200
        assert reader.response.headers["Content-Type"].startswith("text/event-stream")
        first = reader.next()
        assert first.event == "state"
        assert (first.json()["id"], first.json()["status"]) == (job_id, "queued")
        blockers_gate.touch()
        seen = reader.until(lambda e: e.event == "progress" and e.json()["percent"] == 50)
        assert {"event": "status", "status": "started"} in [
            {"event": e.event, "status": e.json()["status"]} for e in seen
        ]
        assert seen[-1].json() == {"percent": 50, "message": "halfway", "status": "started"}
        opened_at = time.monotonic()
        gate.touch()
        final = reader.until(lambda e: e.event == "finished")[-1]
        latency = time.monotonic() - opened_at
        assert reader.rest() == []  # the server closed the stream after the final event
    finally:
        reader.close()
        blockers_gate.touch()
        gate.touch()
    view = final.json()
    assert view == events_stack.job(job_id)
    assert view["result"] == {"released": True}
    assert view["progress"] == {"percent": 100, "message": "released"}
    assert latency < 2.0  # polled every 0.2 s, not every few seconds


def test_an_ended_job_gets_one_final_event_at_once(events_stack: Stack) -> None:
    response = events_stack.invoke("simple_calculation", {"expression": "2*(3+4)"}, wait=10)
    assert response.status_code == 200, response.text
    job_id = response.json()["id"]
    started = time.monotonic()
    reader = EventReader(events_stack, job_id)
    events = reader.rest()
    assert [event.event for event in events] == ["state", "finished"]
    assert events[1].json()["result"]["result"] == 14
    assert time.monotonic() - started < 1.0


def test_unknown_job_is_a_json_404(events_stack: Stack) -> None:
    response = events_stack.get("/jobs/no-such-job/events")
    assert response.status_code == 404
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["error"] == "job_not_found"


def test_a_long_stream_beats_then_times_out_with_a_retry_hint(events_stack: Stack, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    job_id = gated_job(events_stack, gate)
    started = time.monotonic()
    reader = EventReader(events_stack, job_id)
    try:
        events = reader.rest()
        elapsed = time.monotonic() - started
    finally:
        reader.close()
        gate.touch()  # let the worker go
    assert events[0].event == "state" and events[-1].event == "timeout"
    assert events[-1].retry_ms == 1000
    assert MAX_SECONDS <= elapsed < MAX_SECONDS + 2
    # Silent stretches carry heartbeats (the job sat at 50% for most of the 3 s).
    assert reader.raw.count(": keep-alive") >= 2
    events_stack.wait_until_terminal(job_id)


def test_open_streams_leave_the_api_responsive(events_stack: Stack, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    job_id = gated_job(events_stack, gate)
    readers = [EventReader(events_stack, job_id) for _ in range(4)]
    try:
        for reader in readers:
            assert reader.next().event == "state"
        timings = []
        for _ in range(5):
            started = time.monotonic()
            assert events_stack.get("/healthz").status_code == 200
            assert events_stack.get(f"/jobs/{job_id}").status_code == 200
            timings.append(time.monotonic() - started)
        assert max(timings) < 0.5, timings
    finally:
        for reader in readers:
            reader.close()
        gate.touch()
    assert events_stack.wait_until_terminal(job_id)["status"] == "finished"


# Issue 19, item 10: a stream whose client went away freed its slot only at the next heartbeat (15 s).
SLOT_BOUND_SECONDS = 1.0


def open_stream(stack: Stack, job_id: str, deadline: float) -> EventReader:
    """A stream that got a slot (retrying 503s until `deadline`), its first event read."""
    while True:
        reader = EventReader(stack, job_id)
        if reader.response.status_code == 200:
            assert reader.next().event == "state"
            return reader
        assert reader.response.status_code == 503, reader.response.text
        reader.close()
        if time.monotonic() > deadline:
            pytest.fail(f"no stream slot came free within {SLOT_BOUND_SECONDS} s of the clients going away")
        time.sleep(0.02)


def test_streams_closed_by_their_clients_free_their_slots_at_once(
        stack_factory: Callable[..., Stack], tmp_path: Path) -> None:
    slots = 4
    # One web process, so its slots are the ones counted; the heartbeat stays at its default, 15 s.
    stack = stack_factory(extra_env={"RUNNER_SSE_MAX_STREAMS": str(slots)}, web_workers=1)
    gate = tmp_path / "gate"
    job_id = gated_job(stack, gate)
    freed_within = []
    try:
        readers = [open_stream(stack, job_id, time.monotonic() + 5) for _ in range(slots)]
        assert stack.get(f"/jobs/{job_id}/events").status_code == 503  # every slot taken
        for _ in range(8):  # a reconnect loop: drop every stream, open as many again
            for reader in readers:
                reader.close()
            dropped = time.monotonic()
            readers = [open_stream(stack, job_id, dropped + SLOT_BOUND_SECONDS) for _ in range(slots)]
            freed_within.append(time.monotonic() - dropped)
    finally:
        for reader in readers:
            reader.close()
        gate.touch()
    print(f"\n{slots} streams dropped and reopened 8 times: every slot free again within "
          f"{max(freed_within):.2f} s (median {sorted(freed_within)[4]:.2f} s); heartbeat 15 s")
    assert stack.wait_until_terminal(job_id)["status"] == "finished"
