"""Schedules: the HTTP routes, their 422s, cron timing, ticks on a fake clock, declared schedules, restore."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
import pytest
from flask.testing import FlaskClient
from rq.job import Job
from rq.serializers import JSONSerializer

from runner.authoring.registry import Registry, function, make_spec
from runner.authoring.timing import check_timing
from runner.errors import FunctionDefinitionError
from runner.services.backends import Backends
from runner.services.schedule_sync import declared_schedule_id, register_declared, restore_if_lost
from runner.services.schedule_ticks import LATE_AFTER_SECONDS, run_due, run_tick, tick_job_id
from runner.services.schedules import DUE_KEY, RESTORED_KEY, SCHEDULES_KEY, create_schedule, set_paused
from runner.store.sql_store import Store
from runner.worker.schedule_ticker import LEASE_KEY, ScheduleTicker, start_ticker_thread, stop_ticker_thread

EVERY_MINUTE = {"function": "simple_calculation", "input": {"expression": "1+1"}, "every": 60}


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def next_tick(connection: fakeredis.FakeRedis, schedule_id: str) -> int | None:
    score = connection.zscore(DUE_KEY, schedule_id)
    return None if score is None else int(score)


def jobs_of(store: Store, schedule_id: str) -> list[str]:
    rows, _next = store.list(schedule=schedule_id, limit=100)
    return sorted(row.record.id for row in rows)


# The routes


def test_a_schedule_is_created_listed_paused_resumed_and_deleted(client: FlaskClient) -> None:
    created = client.post("/schedules", json={**EVERY_MINUTE, "catch_up": "skip"})
    assert created.status_code == 201, created.json
    schedule = created.json
    assert created.headers["Location"].endswith(f"/schedules/{schedule['id']}")
    assert (schedule["function"], schedule["every"], schedule["cron"], schedule["catch_up"]) == (
        "simple_calculation", 60, None, "skip")
    following = datetime.fromisoformat(schedule["next_run_at"])
    assert following.timestamp() % 60 == 0 and 0 < (following - datetime.now(UTC)).total_seconds() <= 60
    assert client.get("/schedules").json == {"schedules": [schedule]}
    assert client.get(f"/schedules/{schedule['id']}").json == schedule

    paused = client.post(f"/schedules/{schedule['id']}/pause").json
    assert (paused["paused"], paused["next_run_at"]) == (True, None)
    resumed = client.post(f"/schedules/{schedule['id']}/resume").json
    assert resumed["paused"] is False and resumed["next_run_at"] is not None

    assert client.delete(f"/schedules/{schedule['id']}").status_code == 204
    assert client.get("/schedules").json == {"schedules": []}


@pytest.mark.parametrize("path,method", [("/schedules/nope", "get"), ("/schedules/nope", "delete"),
                                         ("/schedules/nope/pause", "post"), ("/schedules/nope/resume", "post")])
def test_an_unknown_schedule_is_a_404(client: FlaskClient, api_error: Callable[..., dict[str, Any]], path: str,
                                      method: str) -> None:
    api_error(getattr(client, method)(path), 404, "schedule_not_found")


@pytest.mark.parametrize("changes,field", [
    ({"every": None, "cron": "not a cron"}, "cron"),
    ({"every": None, "cron": "61 * * * *"}, "cron"),
    ({"every": None, "cron": "* * * * * *"}, "cron"),
    ({"every": None, "cron": "0 0 30 2 *"}, "cron"),
    ({"every": None, "cron": "0 " * 200}, "cron"),
    ({"every": None, "cron": "0 3 * * *", "timezone": "Mars/Olympus_Mons"}, "timezone"),
    ({"cron": "0 3 * * *"}, "every"),
    ({"every": None}, "cron"),
    ({"every": 0}, "every"),
    ({"every": -5}, "every"),
    ({"every": "10"}, "every"),
    ({"every": 1.5}, "every"),
    ({"catch_up": "sometimes"}, "catch_up"),
    ({"surprise": 1}, "surprise"),
])
def test_a_bad_schedule_is_a_422_naming_its_field(client: FlaskClient, api_error: Callable[..., dict[str, Any]],
                                                  changes: dict[str, Any], field: str) -> None:
    body = {key: value for key, value in {**EVERY_MINUTE, **changes}.items() if value is not None}
    error = api_error(client.post("/schedules", json=body), 422, "invalid_input")
    assert [detail["field"] for detail in error["details"]] == [field]
    assert client.get("/schedules").json == {"schedules": []}


@pytest.mark.parametrize("bad_input", [{}, {"expression": ""}, {"expression": "1", "extra": 2}, []])
def test_the_input_is_refused_exactly_as_an_invocation_refuses_it(
        client: FlaskClient, invoke: Callable[..., Any], api_error: Callable[..., dict[str, Any]],
        bad_input: Any) -> None:
    scheduled = api_error(client.post("/schedules", json={**EVERY_MINUTE, "input": bad_input}), 422,
                          "invalid_input")
    if isinstance(bad_input, dict):  # a non-object input is refused by the schedule's own shape
        invoked = api_error(invoke("simple_calculation", bad_input), 422, "invalid_input")
        assert scheduled == invoked
    assert client.get("/schedules").json == {"schedules": []}


def test_an_unknown_function_is_a_404_as_for_an_invocation(client: FlaskClient,
                                                          api_error: Callable[..., dict[str, Any]]) -> None:
    api_error(client.post("/schedules", json={**EVERY_MINUTE, "function": "nope"}), 404, "function_not_found")


# Timing


@pytest.mark.parametrize("moment,expected", [
    ("2026-01-15T12:00:00+00:00", "2026-01-16T02:00:00+00:00"),  # CET: 03:00 Paris is 02:00 UTC
    ("2026-07-15T12:00:00+00:00", "2026-07-16T01:00:00+00:00"),  # CEST: 01:00 UTC
    ("2026-03-28T12:00:00+00:00", "2026-03-29T01:00:00+00:00"),  # the night clocks go forward
    ("2026-10-24T12:00:00+00:00", "2026-10-25T02:00:00+00:00"),  # the night clocks go back
])
def test_cron_runs_at_wall_clock_time_in_its_timezone(moment: str, expected: str) -> None:
    timing = check_timing("0 3 * * *", "Europe/Paris", None)
    assert timing.next_after(at(moment)) == at(expected)


def test_every_ticks_on_whole_multiples_of_its_seconds() -> None:
    timing = check_timing(None, None, 300)
    assert timing.next_after(at("2026-01-15T12:04:59.900+00:00")) == at("2026-01-15T12:05:00+00:00")
    assert timing.next_after(at("2026-01-15T12:05:00+00:00")) == at("2026-01-15T12:10:00+00:00")


def test_the_api_answers_the_next_run_in_the_schedules_timezone(client: FlaskClient) -> None:
    body = {"function": "simple_calculation", "input": {"expression": "2"}, "cron": "15 9 * * 1",
            "timezone": "America/New_York"}
    schedule = client.post("/schedules", json=body).json
    local = datetime.fromisoformat(schedule["next_run_at"]).astimezone(check_timing_zone("America/New_York"))
    assert (local.weekday(), local.hour, local.minute) == (0, 9, 15)
    assert schedule["timezone"] == "America/New_York"


def check_timing_zone(name: str) -> Any:
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)


# Ticks, on a fake clock


def due_schedule(backends: Backends, registry: Registry, tick: datetime, **changes: Any) -> str:
    """A new schedule whose next tick is `tick`."""
    schedule_id = create_schedule({**EVERY_MINUTE, **changes}, registry, backends).id
    backends.connection.zadd(DUE_KEY, {schedule_id: int(tick.timestamp())})
    return schedule_id


def test_a_due_tick_is_one_ordinary_job_of_its_schedule(backends: Backends, registry: Registry,
                                                        store: Store, client: FlaskClient) -> None:
    tick = at("2030-01-01T00:01:00+00:00")
    schedule_id = due_schedule(backends, registry, tick)
    assert run_due(backends, registry, tick - timedelta(seconds=1)) == []
    [outcome] = run_due(backends, registry, tick + timedelta(seconds=0.3))
    assert outcome.job_id == tick_job_id(schedule_id, int(tick.timestamp()))
    assert outcome.next_tick == int(tick.timestamp()) + 60
    assert run_due(backends, registry, tick + timedelta(seconds=0.5)) == []
    view = client.get(f"/jobs/{outcome.job_id}").json
    assert (view["status"], view["schedule"], view["input"]) == ("queued", schedule_id, {"expression": "1+1"})
    client.post("/functions/simple_calculation/invocations", json={"expression": "3"})
    listed = client.get(f"/jobs?schedule={schedule_id}").json["jobs"]
    assert [job["id"] for job in listed] == [outcome.job_id] and listed[0]["schedule"] == schedule_id
    assert jobs_of(store, schedule_id) == [outcome.job_id]


def test_tickers_racing_on_one_tick_make_one_job(backends: Backends, registry: Registry, store: Store) -> None:
    tick = at("2030-01-01T00:01:00+00:00")
    schedule_id = due_schedule(backends, registry, tick)
    now = tick + timedelta(seconds=0.2)
    start = threading.Barrier(6)
    outcomes: list[Any] = []

    def ticker() -> None:
        start.wait()
        outcomes.extend(run_due(backends, registry, now))

    threads = [threading.Thread(target=ticker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {outcome.job_id for outcome in outcomes} == {tick_job_id(schedule_id, int(tick.timestamp()))}
    assert jobs_of(store, schedule_id) == [tick_job_id(schedule_id, int(tick.timestamp()))]
    assert backends.connection.llen("rq:queue:demo_tasks") == 1


def test_a_ticker_that_died_before_moving_the_schedule_on_leaves_the_same_job(
        backends: Backends, registry: Registry, store: Store) -> None:
    tick = at("2030-01-01T00:01:00+00:00")
    schedule_id = due_schedule(backends, registry, tick)
    first = run_tick(backends, registry, schedule_id, int(tick.timestamp()), tick)
    assert first is not None
    backends.connection.zadd(DUE_KEY, {schedule_id: int(tick.timestamp())})  # as if it had died before the move
    [again] = run_due(backends, registry, tick + timedelta(seconds=1))
    assert again.job_id == first.job_id
    assert jobs_of(store, schedule_id) == [first.job_id]
    assert backends.connection.llen("rq:queue:demo_tasks") == 1


@pytest.mark.parametrize("catch_up,runs", [("once", 1), ("skip", 0)])
def test_a_missed_tick_runs_once_late_or_is_skipped(backends: Backends, registry: Registry, store: Store,
                                                    catch_up: str, runs: int) -> None:
    missed = at("2030-01-01T00:01:00+00:00")
    schedule_id = due_schedule(backends, registry, missed, catch_up=catch_up)
    now = missed + timedelta(minutes=5, seconds=30)  # five more ticks passed while no ticker ran
    [outcome] = run_due(backends, registry, now)
    assert outcome.next_tick == int(at("2030-01-01T00:07:00+00:00").timestamp())
    assert len(jobs_of(store, schedule_id)) == runs
    assert run_due(backends, registry, now + timedelta(seconds=1)) == []
    assert len(jobs_of(store, schedule_id)) == runs


def test_a_tick_a_little_late_runs_whatever_catch_up_says(backends: Backends, registry: Registry,
                                                          store: Store) -> None:
    tick = at("2030-01-01T00:01:00+00:00")
    schedule_id = due_schedule(backends, registry, tick, catch_up="skip")
    run_due(backends, registry, tick + timedelta(seconds=LATE_AFTER_SECONDS - 1))
    assert len(jobs_of(store, schedule_id)) == 1


def test_paused_and_deleted_schedules_run_no_tick(backends: Backends, registry: Registry, store: Store,
                                                  client: FlaskClient) -> None:
    tick = at("2030-01-01T00:01:00+00:00")
    paused = due_schedule(backends, registry, tick)
    deleted = due_schedule(backends, registry, tick)
    set_paused(paused, True, backends)
    assert client.delete(f"/schedules/{deleted}").status_code == 204
    assert run_due(backends, registry, tick + timedelta(seconds=1)) == []
    assert jobs_of(store, paused) == jobs_of(store, deleted) == []


def test_a_schedule_whose_definition_vanished_leaves_the_due_set(backends: Backends, registry: Registry) -> None:
    backends.connection.zadd(DUE_KEY, {"gone": 100})
    assert run_due(backends, registry, at("2030-01-01T00:00:00+00:00")) == []
    assert next_tick(backends.connection, "gone") is None


# Declared in code


def nightly(expression: str) -> dict[str, Any]:
    return {"expression": expression}


def declared_registry(**declaration: Any) -> Registry:
    return Registry([make_spec(nightly, queue="demo_tasks", timeout=10, retries=0, backoff=None, name=None,
                               **declaration)])


def test_a_declared_schedule_is_registered_once_with_a_stable_id(backends: Backends, client: FlaskClient) -> None:
    registry = declared_registry(schedule="0 3 * * *", schedule_input={"expression": "1"})
    assert register_declared(registry, backends) == ["fn-nightly"] == [declared_schedule_id("nightly")]
    set_paused("fn-nightly", True, backends)
    assert register_declared(registry, backends) == []  # a worker starting again changes nothing
    [listed] = client.get("/schedules").json["schedules"]
    assert (listed["id"], listed["declared"], listed["cron"], listed["paused"]) == (
        "fn-nightly", True, "0 3 * * *", True)
    changed = declared_registry(schedule=3600, schedule_input={"expression": "2"})
    assert register_declared(changed, backends) == ["fn-nightly"]
    schedule = client.get("/schedules/fn-nightly").json
    assert (schedule["every"], schedule["input"], schedule["paused"]) == (3600, {"expression": "2"}, True)


@pytest.mark.parametrize("declaration,words", [
    ({"schedule": "0 25 * * *"}, "schedule cron"),
    ({"schedule": "0 3 * * *", "schedule_timezone": "Nowhere/Land"}, "schedule timezone"),
    ({"schedule": 0}, "schedule every"),
    ({"schedule": "0 3 * * *", "schedule_input": {"expression": 5}}, "schedule_input"),
    ({"schedule_input": {"expression": "1"}}, "need a schedule"),
])
def test_a_bad_declared_schedule_fails_at_import(declaration: dict[str, Any], words: str) -> None:
    with pytest.raises(FunctionDefinitionError, match=words):
        function(**declaration)(nightly)


def test_a_long_function_name_gets_a_hashed_id_that_fits_a_job_id() -> None:
    schedule_id = declared_schedule_id("x" * 120)
    assert schedule_id.startswith("fn-") and len(tick_job_id(schedule_id, 2_000_000_000)) <= 64
    assert schedule_id == declared_schedule_id("x" * 120)


# Redis lost


def test_schedules_come_back_from_sql_when_redis_lost_them(backends: Backends, registry: Registry,
                                                           client: FlaskClient) -> None:
    active = client.post("/schedules", json=EVERY_MINUTE).json
    paused = client.post("/schedules", json=EVERY_MINUTE).json
    client.post(f"/schedules/{paused['id']}/pause")
    assert restore_if_lost(backends) == 2  # first look: the marker is not there yet
    backends.connection.flushall()
    assert client.get("/schedules").json == {"schedules": []}
    assert restore_if_lost(backends) == 2
    assert restore_if_lost(backends) == 0
    views = {view["id"]: view for view in client.get("/schedules").json["schedules"]}
    assert views[active["id"]]["next_run_at"] is not None
    assert (views[paused["id"]]["paused"], views[paused["id"]]["next_run_at"]) == (True, None)


def test_a_tick_job_is_a_runner_job(backends: Backends, registry: Registry, run_jobs: Callable[..., bool],
                                    client: FlaskClient) -> None:
    tick = at("2030-01-01T00:01:00+00:00")
    schedule_id = due_schedule(backends, registry, tick)
    [outcome] = run_due(backends, registry, tick)
    run_jobs(["demo_tasks"])
    view = client.get(f"/jobs/{outcome.job_id}").json
    assert (view["status"], view["result"]["result"], view["schedule"]) == ("finished", 2, schedule_id)
    job = Job.fetch(outcome.job_id, connection=backends.connection, serializer=JSONSerializer)
    assert job.meta["schedule"] == schedule_id


# The ticker thread


def test_one_ticker_of_several_holds_the_lease(backends: Backends, registry: Registry) -> None:
    tickers = [ScheduleTicker(backends, registry, f"worker:{number}") for number in range(3)]
    assert [ticker.lease.hold() for ticker in tickers] == [True, False, False]
    tickers[0].lease.release()
    assert tickers[2].lease.hold()


def test_the_ticker_thread_runs_a_due_tick_and_hands_its_lease_back(backends: Backends, registry: Registry,
                                                                    store: Store) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    schedule_id = due_schedule(backends, registry, now)
    thread, stop = start_ticker_thread(backends, registry, "worker:test")
    try:
        deadline = time.monotonic() + 10
        while not jobs_of(store, schedule_id) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop_ticker_thread(thread, stop, backends.connection, "worker:test")
    assert jobs_of(store, schedule_id) == [tick_job_id(schedule_id, int(now.timestamp()))]
    assert not thread.is_alive() and backends.connection.get(LEASE_KEY) is None
    assert backends.connection.exists(RESTORED_KEY)


def test_a_schedules_callback_url_is_checked_as_an_invocations_and_given_to_each_run(
        backends: Backends, registry: Registry, client: FlaskClient, invoke: Callable[..., Any],
        api_error: Callable[..., dict[str, Any]]) -> None:
    unsafe = {"X-Callback-Url": "http://127.0.0.1:9/hook"}  # loopback: refused unless allowed
    refused = api_error(client.post("/schedules", json=EVERY_MINUTE, headers=unsafe), 422, "invalid_input")
    assert refused == api_error(invoke("simple_calculation", {"expression": "1"}, headers=unsafe), 422,
                                "invalid_input")
    allowed = Backends(backends.connection, backends.store, replace(backends.settings, callback_allow_private=True))
    schedule = create_schedule(EVERY_MINUTE, registry, allowed, callback_url="http://127.0.0.1:9/hook")
    assert schedule.callback_url == "http://127.0.0.1:9/hook"
    tick = at("2030-01-01T00:01:00+00:00")
    allowed.connection.zadd(DUE_KEY, {schedule.id: int(tick.timestamp())})
    [outcome] = run_due(allowed, registry, tick)
    job = Job.fetch(str(outcome.job_id), connection=allowed.connection, serializer=JSONSerializer)
    assert job.meta["callback_url"] == "http://127.0.0.1:9/hook"


def test_a_tick_job_retried_after_redis_forgot_it_still_says_its_schedule(
        backends: Backends, registry: Registry, run_jobs: Callable[..., bool], client: FlaskClient) -> None:
    tick = at("2030-01-01T00:01:00+00:00")
    schedule_id = due_schedule(backends, registry, tick, input={"expression": "1/0"})
    [outcome] = run_due(backends, registry, tick)
    run_jobs(["demo_tasks"])
    assert client.get(f"/jobs/{outcome.job_id}").json["status"] == "failed"
    backends.connection.delete(f"rq:job:{outcome.job_id}")
    retried = client.post(f"/jobs/{outcome.job_id}/retry")
    assert retried.status_code == 202 and retried.json["schedule"] == schedule_id
    assert client.get(f"/jobs/{outcome.job_id}").json["schedule"] == schedule_id


def test_a_ticker_without_the_lease_still_registers_its_declared_schedules(backends: Backends) -> None:
    ScheduleTicker(backends, Registry(), "worker:old").lease.hold()  # an older worker keeps the lease
    registry = declared_registry(schedule=600, schedule_input={"expression": "1"})
    thread, stop = start_ticker_thread(backends, registry, "worker:new")
    try:
        deadline = time.monotonic() + 10
        while not backends.connection.hexists(SCHEDULES_KEY, "fn-nightly") and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop_ticker_thread(thread, stop, backends.connection, "worker:new")
    assert backends.connection.hexists(SCHEDULES_KEY, "fn-nightly")
    assert backends.connection.get(LEASE_KEY) == b"worker:old"


def test_a_slow_pass_runs_each_tick_it_is_late_for(backends: Backends, registry: Registry, store: Store) -> None:
    tick = at("2030-01-01T00:01:00+00:00")
    schedule_id = due_schedule(backends, registry, tick, every=1)
    now = tick + timedelta(seconds=3.5)  # the ticker was 3.5 s late (not missed: LATE_AFTER_SECONDS is more)
    passes = 0
    while run_due(backends, registry, now):
        passes += 1
    first = int(tick.timestamp())
    assert jobs_of(store, schedule_id) == sorted(tick_job_id(schedule_id, first + n) for n in range(4))
    assert passes == 4 and next_tick(backends.connection, schedule_id) == first + 4
