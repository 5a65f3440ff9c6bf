"""Schedules on a real stack: two workers (two tickers), real Redis, gunicorn, SQLite; racing tickers.

Runs are counted where they happen (a line per run in a file, by tests/integration/probe_functions/ticks.py)
and jobs by tick from the history (`GET /jobs?schedule=`), whose job ids are `<schedule>-<tick>`.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.integration.conftest import PYTHON, Stack, wait_until

WATCH_SECONDS = 10.0
QUIET_SECONDS = 3.0


def schedule_jobs(stack: Stack, schedule_id: str) -> list[dict[str, Any]]:
    response = stack.get("/jobs", params={"schedule": schedule_id, "limit": 100})
    assert response.status_code == 200, response.text
    jobs: list[dict[str, Any]] = response.json()["jobs"]
    assert all(job["schedule"] == schedule_id for job in jobs)
    return jobs


def tick_of(job: dict[str, Any]) -> int:
    return int(job["id"].rsplit("-", 1)[1])


def runs_in(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def create_every_second(stack: Stack, log: Path) -> dict[str, Any]:
    response = stack.post("/schedules", json={"function": "record_run", "input": {"log": str(log)}, "every": 1})
    assert response.status_code == 201, response.text
    schedule: dict[str, Any] = response.json()
    return schedule


def settled(stack: Stack, schedule_id: str, log: Path) -> list[dict[str, Any]]:
    """The schedule's jobs once every one has finished, and its runs are all in the log."""
    def all_finished() -> bool:
        jobs = schedule_jobs(stack, schedule_id)
        return all(job["status"] == "finished" for job in jobs) and runs_in(log) >= len(jobs)

    wait_until(all_finished, 20, "every job of the schedule finished")
    return schedule_jobs(stack, schedule_id)


def test_two_workers_run_one_job_per_tick_and_none_twice(sqlite_stack: Stack, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    schedule = create_every_second(sqlite_stack, log)
    time.sleep(WATCH_SECONDS)  # the subject of the test: ten seconds of ticks
    paused = sqlite_stack.post(f"/schedules/{schedule['id']}/pause")
    assert paused.status_code == 200 and paused.json()["next_run_at"] is None
    jobs = settled(sqlite_stack, schedule["id"], log)
    ticks = Counter(tick_of(job) for job in jobs)
    assert max(ticks.values()) == 1  # one job per tick
    assert runs_in(log) == len(jobs)  # and each job ran once
    assert all(job["attempts"] == 1 for job in jobs)
    assert WATCH_SECONDS - 1 <= len(ticks) <= WATCH_SECONDS + 2, sorted(ticks)
    assert sorted(ticks) == list(range(min(ticks), max(ticks) + 1))  # and no tick without one


def test_pause_and_delete_stop_new_runs_and_resume_restarts_them(sqlite_stack: Stack, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    schedule = create_every_second(sqlite_stack, log)
    path = f"/schedules/{schedule['id']}"
    wait_until(lambda: len(schedule_jobs(sqlite_stack, schedule["id"])) >= 2, 10, "two ticks ran")

    assert sqlite_stack.post(f"{path}/pause").status_code == 200
    paused_at = time.time()
    time.sleep(QUIET_SECONDS)  # ticks would come every second: none may
    jobs = settled(sqlite_stack, schedule["id"], log)
    assert [job["id"] for job in jobs if tick_of(job) > paused_at] == []

    resumed = sqlite_stack.post(f"{path}/resume")
    assert resumed.status_code == 200 and resumed.json()["paused"] is False
    wait_until(lambda: any(tick_of(job) > paused_at + QUIET_SECONDS for job in schedule_jobs(sqlite_stack,
                                                                                                schedule["id"])),
               10, "a tick after the resume ran")

    assert sqlite_stack.http.delete(f"{sqlite_stack.url}{path}", timeout=10).status_code == 204
    deleted_at = time.time()
    time.sleep(QUIET_SECONDS)
    jobs = settled(sqlite_stack, schedule["id"], log)
    assert [job["id"] for job in jobs if tick_of(job) > deleted_at] == []
    assert sqlite_stack.get(path).status_code == 404
    assert runs_in(log) == len(jobs)


def test_tickers_racing_without_a_lease_still_make_one_job_per_tick(sqlite_stack: Stack, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    schedule = create_every_second(sqlite_stack, log)
    racers = [sqlite_stack.processes.start(f"racer.{number}", [PYTHON, "-m", "tests.integration.racing_ticker", "6"],
                                           sqlite_stack.env) for number in range(3)]
    for racer in racers:
        assert racer.wait(30) == 0, racer.log_tail()
    assert sqlite_stack.http.delete(f"{sqlite_stack.url}/schedules/{schedule['id']}", timeout=10).status_code == 204
    jobs = settled(sqlite_stack, schedule["id"], log)
    ticks = Counter(tick_of(job) for job in jobs)
    assert len(ticks) >= 4 and max(ticks.values()) == 1
    assert runs_in(log) == len(jobs)
