"""Cancel and retry over real HTTP, with real workers, on SQLite and PostgreSQL: Redis and the SQL row agree."""

from __future__ import annotations

import uuid
from pathlib import Path

from tests.integration.conftest import Stack


def gate_path(tmp_path: Path) -> Path:
    return tmp_path / f"gate-{uuid.uuid4().hex}"


def start_gated(stack: Stack, gate: Path) -> str:
    """Invoke the gated probe and wait until a worker runs it."""
    response = stack.invoke("gated_progress", {"gate": str(gate)})
    assert response.status_code == 202, response.text
    job_id = str(response.json()["id"])
    stack.wait_for(job_id, lambda view: view["status"] == "started" and view["progress"]["percent"] == 50)
    return job_id


def test_cancel_a_running_job_stops_it_and_retry_runs_it_again(stack: Stack, tmp_path: Path) -> None:
    gate = gate_path(tmp_path)
    job_id = start_gated(stack, gate)
    response = stack.post(f"/jobs/{job_id}/cancel")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "stopped"
    row = stack.wait_for_row(job_id, lambda row: row.status == "stopped")
    assert row.ended_at is not None and row.attempts == 1
    assert stack.post(f"/jobs/{job_id}/cancel").status_code == 409

    gate.touch()
    retried = stack.post(f"/jobs/{job_id}/retry")
    assert retried.status_code == 202, retried.text
    assert retried.headers["Location"].endswith(f"/jobs/{job_id}")
    view = stack.wait_until_terminal(job_id)
    assert (view["status"], view["attempts"], view["result"]) == ("finished", 2, {"released": True})
    assert stack.wait_for_row(job_id, lambda row: row.status == "finished").attempts == 2


def test_cancel_a_queued_job_and_it_never_runs(stack: Stack, tmp_path: Path) -> None:
    gates = [gate_path(tmp_path) for _ in range(stack.workers)]
    busy = [start_gated(stack, gate) for gate in gates]  # every worker is taken
    waiting = stack.invoke("simple_calculation", {"expression": "6*7"}).json()["id"]
    assert stack.job(waiting)["status"] == "queued"
    canceled = stack.post(f"/jobs/{waiting}/cancel")
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    for gate in gates:
        gate.touch()
    for job_id in busy:
        assert stack.wait_until_terminal(job_id)["status"] == "finished"
    view = stack.job(waiting)
    assert (view["status"], view["attempts"], view["started_at"]) == ("canceled", 0, None)
    assert stack.wait_for_row(waiting, lambda row: row.status == "canceled").ended_at is not None

    assert stack.post(f"/jobs/{waiting}/retry").status_code == 202
    done = stack.wait_until_terminal(waiting)
    assert (done["status"], done["attempts"], done["result"]["result"]) == ("finished", 1, 42)


def test_cancel_a_scheduled_job(stack: Stack) -> None:
    job_id = stack.invoke("simple_calculation", {"expression": "1"}, delay=60).json()["id"]
    assert stack.job(job_id)["status"] == "scheduled"
    assert stack.post(f"/jobs/{job_id}/cancel").json()["status"] == "canceled"
    assert stack.wait_for_row(job_id, lambda row: row.status == "canceled").ended_at is not None
    retried = stack.post(f"/jobs/{job_id}/retry")
    # A live worker may take the job between the requeue and the read that answers: the answer is
    # the job as it is by then (tests/unit/test_control.py pins "queued" with no worker running).
    assert (retried.status_code, retried.json()["status"]) in {(202, "queued"), (202, "started"), (202, "finished")}
    assert stack.wait_until_terminal(job_id)["status"] == "finished"


def test_ended_and_waiting_jobs_refuse_the_wrong_operation(stack: Stack) -> None:
    finished = stack.invoke("simple_calculation", {"expression": "1"}, wait=10).json()
    assert finished["status"] == "finished"
    for action in ("cancel", "retry"):
        response = stack.post(f"/jobs/{finished['id']}/{action}")
        assert response.status_code == 409 and response.json()["error"] == "state_conflict"
    scheduled = stack.invoke("simple_calculation", {"expression": "1"}, delay=60).json()["id"]
    assert stack.post(f"/jobs/{scheduled}/retry").status_code == 409
    assert stack.post(f"/jobs/{uuid.uuid4().hex}/cancel").status_code == 404
    assert stack.post(f"/jobs/{uuid.uuid4().hex}/retry").status_code == 404


def test_retry_a_failed_job_redis_has_forgotten(stack: Stack) -> None:
    job_id = stack.invoke("permanent_failure", {"reason": "always"}).json()["id"]
    assert stack.wait_until_terminal(job_id)["status"] == "failed"
    stack.wait_for_row(job_id, lambda row: row.status == "failed")
    stack.redis.delete(f"rq:job:{job_id}")
    stack.redis.zrem("rq:failed:demo_tasks", job_id)
    assert stack.job(job_id)["status"] == "failed"  # the SQL row answers now
    retried = stack.post(f"/jobs/{job_id}/retry")
    assert retried.status_code == 202, retried.text
    view = stack.wait_until_terminal(job_id)
    assert (view["status"], view["attempts"], view["error"]["message"]) == ("failed", 2, "always")
    # The worker writes the row just after Redis: wait for the row of the second failure.
    stack.wait_for_row(job_id, lambda row: (row.status, row.attempts) == ("failed", 2))
