"""Over real HTTP with real workers: `?delay=`/`?at=` start on time; `concurrency` and `max_queued` hold."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.integration.conftest import Stack

# A job must start within this much of its time ("within about 2 s" in the README): its time is
# rounded up to a whole second (< 1 s), RQ's scheduler looks for due jobs every second (<= 1 s),
# and a loaded machine adds a little to both (2.06 s seen on CI-like load).
ON_TIME_SECONDS = 2.5
OBSERVE_SECONDS = 2.0


def started_at(view: dict[str, Any]) -> float:
    return datetime.fromisoformat(view["started_at"]).timestamp()


def test_scheduled_jobs_start_on_time_never_early(sqlite_stack: Stack) -> None:
    sent = time.time()
    by_delay = sqlite_stack.invoke("simple_calculation", {"expression": "1+1"}, delay=2)
    at = datetime.now(UTC) + timedelta(seconds=3)
    by_at = sqlite_stack.invoke("simple_calculation", {"expression": "2+2"}, at=at.isoformat())
    assert by_delay.status_code == by_at.status_code == 202
    assert by_delay.json()["status"] == by_at.json()["status"] == "scheduled"
    assert sqlite_stack.job(by_delay.json()["id"])["status"] == "scheduled"
    delay_view = sqlite_stack.wait_until_terminal(by_delay.json()["id"], timeout=15)
    at_view = sqlite_stack.wait_until_terminal(by_at.json()["id"], timeout=15)
    late_by_delay = started_at(delay_view) - (sent + 2)
    late_by_at = started_at(at_view) - at.timestamp()
    print(f"\nscheduled start lateness: delay {late_by_delay:.3f} s, at {late_by_at:.3f} s")
    assert 0 <= late_by_delay < ON_TIME_SECONDS, delay_view
    assert 0 <= late_by_at < ON_TIME_SECONDS, at_view
    assert delay_view["status"] == at_view["status"] == "finished"
    sqlite_stack.wait_for_row(by_at.json()["id"], lambda row: row.status == "finished")


def test_a_bad_schedule_is_400(sqlite_stack: Stack) -> None:
    for params in ({"delay": "0"}, {"delay": "2592001"}, {"at": "2030-01-01T00:00:00"}, {"at": "soon"},
                   {"delay": "5", "at": "2030-01-01T00:00:00Z"}):
        response = sqlite_stack.invoke("simple_calculation", {"expression": "1"}, **params)
        assert response.status_code == 400 and response.json()["error"] == "malformed_request", (params, response.text)


def invoke_gated(stack: Stack, gate: Path) -> Any:
    return stack.invoke("limited_gate", {"gate": str(gate)})


def test_concurrency_and_max_queued_hold_across_workers(sqlite_stack: Stack, tmp_path: Path) -> None:
    described = sqlite_stack.get("/functions/limited_gate").json()
    assert (described["concurrency"], described["max_queued"]) == (1, 2)
    gates = {name: tmp_path / f"gate-{name}" for name in "abcd"}
    first = invoke_gated(sqlite_stack, gates["a"]).json()["id"]
    # Running the function itself (not only marked started by RQ): it holds the slot and waits no more.
    sqlite_stack.wait_for(first, lambda view: view["progress"]["message"] == "at the gate")
    accepted = [invoke_gated(sqlite_stack, gates[name]) for name in "bc"]
    assert [response.status_code for response in accepted] == [202, 202], [r.text for r in accepted]
    waiting = [response.json()["id"] for response in accepted]
    refused = invoke_gated(sqlite_stack, gates["d"])
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"] == "too_many_requests" and int(refused.headers["Retry-After"]) > 0

    # Two workers, one of them idle, yet nothing else of this function runs while the first does. (A
    # worker that picks a waiting job up shows it `started` for a moment before putting it back.)
    deadline = time.monotonic() + OBSERVE_SECONDS
    while time.monotonic() < deadline:
        for job_id in waiting:
            view = sqlite_stack.job(job_id)
            assert view["attempts"] == 0 and view["progress"]["message"] != "at the gate", view
        time.sleep(0.1)
    assert sqlite_stack.job(first)["status"] == "started"

    gates["a"].touch()
    sqlite_stack.wait_until_terminal(first)
    deadline = time.monotonic() + 10
    while not any(sqlite_stack.job(job_id)["attempts"] == 1 for job_id in waiting):
        assert time.monotonic() < deadline, "no waiting job started after the slot was freed"
        time.sleep(0.05)
    assert [sqlite_stack.job(job_id)["attempts"] for job_id in waiting].count(1) == 1
    for name in "bc":
        gates[name].touch()
    views = [sqlite_stack.wait_until_terminal(job_id, timeout=20) for job_id in [first, *waiting]]
    assert [(view["status"], view["attempts"]) for view in views] == [("finished", 1)] * 3
    spans = sorted((view["result"]["started"], view["result"]["ended"]) for view in views)
    for (_, ended), (next_started, _) in zip(spans, spans[1:], strict=False):
        assert ended <= next_started, f"two attempts overlapped: {spans}"
    handover = [later[0] - earlier[1] for earlier, later in zip(spans, spans[1:], strict=False)]
    print(f"\nconcurrency=1 hand-over after a slot is freed: {', '.join(f'{gap:.2f} s' for gap in handover)}")

    # Everything has ended: the function accepts work again.
    gates["d"].touch()
    again = invoke_gated(sqlite_stack, gates["d"])
    assert again.status_code == 202
    assert sqlite_stack.wait_until_terminal(again.json()["id"])["status"] == "finished"


def test_unlimited_functions_show_no_limits(sqlite_stack: Stack) -> None:
    described = sqlite_stack.get("/functions/simple_calculation").json()
    assert (described["concurrency"], described["max_queued"]) == (None, None)
