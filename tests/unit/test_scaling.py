"""The scaling reading (runner.services.scaling) behind GET /scaling, the /metrics gauges and the pool's size."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import fakeredis
import pytest
from flask.testing import FlaskClient
from rq import Worker
from werkzeug.test import TestResponse

from runner.authoring.registry import Registry, make_spec
from runner.redis_connection import connect_redis
from runner.rq_seam.keys import queue_key, registry_key
from runner.rq_seam.queues import queue_for
from runner.rq_seam.scheduler_guard import RunnerScheduler
from runner.services.backends import Backends
from runner.services.scaling import (
    PER_JOB,
    SCHEDULED_HORIZON_SECONDS,
    QueueLoad,
    QueueRule,
    desired_workers,
    pool_wanted,
    read_load,
    scaling_rules,
)
from runner.worker.pool import PoolSize
from runner.worker.redis_outage import RedisOutage
from runner.worker.run import build_worker
from tests.unit.test_metrics import scrape, value


def one(a: int = 1) -> dict:
    """A function for caps."""
    return {}


def two(a: int = 1) -> dict:
    """Another function for caps."""
    return {}


def three(a: int = 1) -> dict:
    """A function without a limit."""
    return {}


def capped_registry() -> Registry:
    registry = Registry()
    registry.add(make_spec(one, queue="capped", timeout=5, retries=0, backoff=None, name=None, concurrency=2))
    registry.add(make_spec(two, queue="capped", timeout=5, retries=0, backoff=None, name=None, concurrency=3))
    registry.add(make_spec(one, queue="open", timeout=5, retries=0, backoff=None, name="one_open", concurrency=2))
    registry.add(make_spec(three, queue="open", timeout=5, retries=0, backoff=None, name=None))
    return registry


def known_contents(connection: fakeredis.FakeRedis, invoke: Callable[..., TestResponse]) -> None:
    """demo_tasks: 3 queued, 1 running (and 1 whose heartbeat expired), 1 scheduled soon, 1 later."""
    for expression in ("1", "2", "3"):
        assert invoke("simple_calculation", {"expression": expression}).status_code == 202
    now = time.time()
    connection.zadd(registry_key("started", "demo_tasks"), {"live:exec": now + 60, "dead:exec": now - 10})
    connection.zadd(registry_key("scheduled", "demo_tasks"),
                    {"soon": now + 30, "later": now + SCHEDULED_HORIZON_SECONDS + 240})


def test_scaling_reports_each_queue_from_its_contents(
    client: FlaskClient, invoke: Callable[..., TestResponse], connection: fakeredis.FakeRedis
) -> None:
    known_contents(connection, invoke)
    Worker([queue_for("demo_tasks", connection)], connection=connection, name="w1").register_birth()
    response = client.get("/scaling")
    assert response.status_code == 200
    queues = {entry["queue"]: entry for entry in response.get_json()["queues"]}
    assert set(queues) >= {"ai_processing", "demo_tasks", "default", "callbacks"}
    demo = queues["demo_tasks"]
    assert demo["oldest_age_seconds"] >= 0
    assert {**demo, "oldest_age_seconds": 0} == {
        "queue": "demo_tasks", "queued": 3, "running": 1, "scheduled_due": 1, "oldest_age_seconds": 0,
        "workers": 1, "free_slots": 1, "desired_workers": 5}
    assert queues["default"] == {"queue": "default", "queued": 0, "running": 0, "scheduled_due": 0,
                                 "oldest_age_seconds": 0.0, "workers": 0, "free_slots": 0, "desired_workers": 0}


def test_the_oldest_age_is_the_head_jobs_wait(connection: fakeredis.FakeRedis,
                                               invoke: Callable[..., TestResponse]) -> None:
    assert invoke("simple_calculation", {"expression": "1"}).status_code == 202
    before = read_load(connection, ["demo_tasks"], {})[0].oldest_age_seconds
    time.sleep(0.2)  # the head job ages by the time that passes: that is what is measured
    after = read_load(connection, ["demo_tasks"], {})[0].oldest_age_seconds
    assert 0.15 <= after - before < 2


def test_the_same_figures_are_metrics_gauges(
    client: FlaskClient, invoke: Callable[..., TestResponse], connection: fakeredis.FakeRedis
) -> None:
    known_contents(connection, invoke)
    samples = scrape(client)
    assert value(samples, "runner_queue_depth", queue="demo_tasks") == 3
    assert value(samples, "runner_queue_running", queue="demo_tasks") == 1
    assert value(samples, "runner_queue_scheduled_due", queue="demo_tasks") == 1
    assert value(samples, "runner_queue_desired_workers", queue="demo_tasks") == 5
    assert value(samples, "runner_queue_desired_workers", queue="ai_processing") == 0


def test_desired_workers_are_capped_by_concurrency_when_every_function_of_the_queue_has_one(
    connection: fakeredis.FakeRedis,
) -> None:
    caps = scaling_rules(capped_registry(), slots=16)
    assert caps == {"capped": QueueRule(cap=5), "open": QueueRule(cap=None)}
    for name in ("capped", "open"):
        connection.rpush(queue_key(name), *[f"job-{n}" for n in range(10)])
    loads = {load.queue: load for load in read_load(connection, ["capped", "open"], caps, count_workers=False)}
    assert (loads["capped"].queued, loads["capped"].desired_workers) == (10, 5)
    assert (loads["open"].queued, loads["open"].desired_workers) == (10, 10)


def test_redis_down_is_a_json_503(make_client: Callable[..., FlaskClient], closed_port: int,
                                  api_error: Callable[..., dict[str, Any]]) -> None:
    down = make_client(connection=connect_redis(f"redis://127.0.0.1:{closed_port}/0"))
    api_error(down.get("/scaling"), 503, "backend_unavailable")


def pool(connection: fakeredis.FakeRedis, *, minimum: int = 0, maximum: int = 3,
         scale_down_after: float = 0.0) -> PoolSize:
    return PoolSize(connection, ["demo_tasks"], {}, minimum=minimum, maximum=maximum,
                    scale_down_after=scale_down_after, outage=RedisOutage("redis://fake"))


def test_the_pool_stays_between_min_and_max(connection: fakeredis.FakeRedis) -> None:
    assert pool(connection).target(current=0) == 0
    assert pool(connection, minimum=2).target(current=0) == 2
    connection.rpush(queue_key("demo_tasks"), *[f"job-{n}" for n in range(10)])
    assert pool(connection).target(current=0) == 3


def test_the_pool_leaves_jobs_running_elsewhere_to_their_workers(connection: fakeredis.FakeRedis) -> None:
    now = time.time()
    connection.zadd(registry_key("started", "demo_tasks"), {f"job-{n}:exec": now + 60 for n in range(3)})
    connection.rpush(queue_key("demo_tasks"), "queued-job")
    # 3 running, at most 1 of them here: the other 2 need no process of this pool, the queued one does.
    assert pool(connection).target(current=1) == 2
    # On one machine every running job is one of the pool's own: each keeps its process.
    assert pool(connection, maximum=5).target(current=3) == 4


def test_the_pool_shrinks_only_after_the_surplus_lasted(connection: fakeredis.FakeRedis) -> None:
    patient = pool(connection, scale_down_after=30.0)
    assert patient.target(current=3) == 3
    assert pool(connection, scale_down_after=0.0).target(current=3) == 0


def test_at_zero_the_pool_waits_in_one_blocking_call_until_a_job_is_pushed(
    connection: fakeredis.FakeRedis, invoke: Callable[..., TestResponse]
) -> None:
    calls: list[str] = []
    original = connection.execute_command

    def counted(*args: Any, **options: Any) -> Any:
        calls.append(str(args[0]))
        return original(*args, **options)

    connection.execute_command = counted  # type: ignore[method-assign]
    assert invoke("simple_calculation", {"expression": "1"}).status_code == 202  # leaves a wake-up token
    waiting = pool(connection)
    started = time.monotonic()
    waiting.wait_for_work()
    assert time.monotonic() - started < 1  # the token ended the wait at once
    assert calls.count("BLPOP") == 1
    assert waiting.target(current=0) == 1


def test_at_zero_the_wait_ends_when_a_scheduled_job_comes_within_the_horizon(connection: fakeredis.FakeRedis) -> None:
    due = time.time() + SCHEDULED_HORIZON_SECONDS + 0.3
    connection.zadd(registry_key("scheduled", "demo_tasks"), {"later": due})
    waiting = pool(connection)
    assert waiting.target(current=0) == 0  # not due within the horizon yet
    started = time.monotonic()
    waiting.wait_for_work()
    assert 0.2 <= time.monotonic() - started < 2
    assert waiting.target(current=0) == 1


def test_a_pool_work_process_claims_before_it_starts_the_scheduler(
    backends: Backends, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[str] = []
    monkeypatch.setattr(RunnerScheduler, "start", lambda scheduler: started.append("scheduler"))
    worker = build_worker(["demo_tasks"], backends, registry)
    worker.first_claim_first = True
    worker.register_birth()
    worker._start_scheduler(burst=False)  # what RQ's work() calls before its loop
    assert (started, worker.deferring_start, worker.should_run_maintenance_tasks) == ([], True, False)
    worker.start_deferred_scheduler()  # before the first claim: still waits
    assert started == []
    worker.start_deferred_scheduler()  # before the second
    assert (started, worker.deferring_start) == (["scheduler"], False)
    worker.teardown()


async def waits(a: int = 1) -> dict:
    """An async function: its jobs run in slots."""
    return {}


def threaded(a: int = 1) -> dict:
    """A sync function declared threads=True: its jobs run in slots."""
    return {}


def slotted_registry(concurrency: int | None = None) -> Registry:
    """`slotted`: async and threaded functions only; `mixed`: an async one and a plain sync one."""
    registry = Registry()
    registry.add(make_spec(waits, queue="slotted", timeout=5, retries=0, backoff=None, name=None,
                           concurrency=concurrency))
    registry.add(make_spec(threaded, queue="slotted", timeout=5, retries=0, backoff=None, name=None, threads=True,
                           concurrency=concurrency))
    registry.add(make_spec(waits, queue="mixed", timeout=5, retries=0, backoff=None, name="waits_mixed"))
    registry.add(make_spec(three, queue="mixed", timeout=5, retries=0, backoff=None, name=None))
    return registry


def test_a_queue_whose_functions_all_run_in_slots_wants_one_worker_per_slots_jobs() -> None:
    rules = scaling_rules(slotted_registry(), slots=16)
    assert rules == {"slotted": QueueRule(cap=None, jobs_per_worker=16), "mixed": QueueRule(cap=None)}
    assert desired_workers(40, 0, 0, rules["slotted"]) == 3
    assert desired_workers(16, 0, 0, rules["slotted"]) == 1
    assert desired_workers(10, 6, 1, rules["slotted"]) == 2  # queued, running and due all take a slot
    assert desired_workers(0, 0, 0, rules["slotted"]) == 0
    # A plain sync function takes a worker whole: a queue that has one counts per job.
    assert desired_workers(40, 0, 0, rules["mixed"]) == 40
    assert desired_workers(40, 0, 0, PER_JOB) == 40  # a queue the registry does not know (callbacks)


def test_the_concurrency_cap_counts_jobs_before_they_become_workers() -> None:
    rule = scaling_rules(slotted_registry(concurrency=10), slots=16)["slotted"]
    assert rule == QueueRule(cap=20, jobs_per_worker=16)
    assert desired_workers(40, 0, 0, rule) == 2  # 20 jobs at once at most: 2 workers of 16 slots
    assert scaling_rules(slotted_registry(), slots=4)["slotted"].jobs_per_worker == 4


def test_scaling_reports_slotted_queues_in_workers_of_slots(
    make_client: Callable[..., FlaskClient], connection: fakeredis.FakeRedis
) -> None:
    for name in ("slotted", "mixed"):
        connection.rpush(queue_key(name), *[f"{name}-{n}" for n in range(40)])
    client = make_client(registry_=slotted_registry())
    queues = {entry["queue"]: entry for entry in client.get("/scaling").get_json()["queues"]}
    assert (queues["slotted"]["queued"], queues["slotted"]["desired_workers"]) == (40, 3)
    assert (queues["mixed"]["queued"], queues["mixed"]["desired_workers"]) == (40, 40)
    samples = scrape(client)
    assert value(samples, "runner_queue_desired_workers", queue="slotted") == 3
    assert value(samples, "runner_queue_desired_workers", queue="mixed") == 40


def load(queue: str, *, queued: int = 0, running: int = 0, desired: int = 0) -> QueueLoad:
    return QueueLoad(queue=queue, queued=queued, running=running, scheduled_due=0, oldest_age_seconds=0.0,
                     workers=0, free_slots=0, desired_workers=desired)


def test_the_pool_counts_running_slotted_jobs_in_workers_of_slots() -> None:
    rules = scaling_rules(slotted_registry(), slots=16)
    # 40 async jobs on the pool's 3 processes: they keep their 3, no more.
    assert pool_wanted([load("slotted", running=40, desired=3)], rules, current=3) == 3
    # 24 queued, 16 running on another machine's worker (none here): 2 more workers of 16 slots here.
    assert pool_wanted([load("slotted", queued=24, running=16, desired=3)], rules, current=0) == 2
    # Per job as before: 3 running, 1 queued, 1 process here: 2 of the running are elsewhere.
    assert pool_wanted([load("mixed", queued=1, running=3, desired=4)], rules, current=1) == 2
    # Both kinds on one pool: 2 plain jobs and 20 async ones running on its 4 processes.
    assert pool_wanted([load("mixed", running=2, desired=2), load("slotted", running=20, desired=2)],
                       rules, current=4) == 4


def test_the_pool_sizes_a_slotted_queue_by_its_slots(connection: fakeredis.FakeRedis) -> None:
    connection.rpush(queue_key("slotted"), *[f"job-{n}" for n in range(40)])
    size = PoolSize(connection, ["slotted"], scaling_rules(slotted_registry(), slots=16), minimum=0, maximum=8,
                    scale_down_after=0.0, outage=RedisOutage("redis://fake"))
    assert size.target(current=0) == 3
