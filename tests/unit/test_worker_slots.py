"""Each worker's slots as GET /workers, /metrics and GET /scaling show them, read from the fields a worker
writes in its RQ hash (runner.rq_seam.worker_reads), and their defaults for a worker that writes none."""

from __future__ import annotations

from typing import Any

import fakeredis
import jsonschema_rs
import pytest
from flask.testing import FlaskClient
from rq import Worker

from runner.rq_seam.keys import WORKERS_KEY, worker_key
from runner.rq_seam.queues import queue_for
from runner.rq_seam.worker_reads import read_live_workers
from tests.unit.test_metrics import scrape, value

SLOT_FIELDS = {"slots": "16", "slots_busy": "5", "loop_lag": "0.25", "loop_blocked": "3"}


def register(connection: fakeredis.FakeRedis, name: str, queues: tuple[str, ...] = ("demo_tasks",),
             state: str = "idle", **fields: str) -> Worker:
    """A worker registered as RQ registers one, in `state`, with these extra fields in its hash."""
    worker = Worker([queue_for(queue, connection) for queue in queues], connection=connection, name=name)
    worker.register_birth()
    worker.set_state(state)
    if fields:
        connection.hset(worker_key(name), mapping=fields)
    return worker


def listed(client: FlaskClient) -> dict[str, dict[str, Any]]:
    response = client.get("/workers")
    assert response.status_code == 200, response.get_json()
    return {worker["name"]: worker for worker in response.get_json()["workers"]}


def test_workers_show_the_slots_their_hash_holds(client: FlaskClient, connection: fakeredis.FakeRedis) -> None:
    register(connection, "async-one", state="busy", **SLOT_FIELDS)
    worker = listed(client)["async-one"]
    assert worker["slots"] == {"total": 16, "busy": 5, "free": 11}
    assert worker["loop_lag_seconds"] == 0.25
    assert (worker["state"], worker["queues"]) == ("busy", ["demo_tasks"])


@pytest.mark.parametrize(("state", "busy"), [("idle", 0), ("busy", 1)])
def test_a_worker_without_slot_fields_has_one_slot_busy_while_it_runs_a_job(
    client: FlaskClient, connection: fakeredis.FakeRedis, state: str, busy: int
) -> None:
    register(connection, "plain", state=state)
    worker = listed(client)["plain"]
    assert worker["slots"] == {"total": 1, "busy": busy, "free": 1 - busy}
    assert worker["loop_lag_seconds"] == 0.0


@pytest.mark.parametrize("fields", [
    {"slots": "many", "slots_busy": "", "loop_lag": "nan", "loop_blocked": "x"},
    {"slots": "0", "slots_busy": "-2", "loop_lag": "inf", "loop_blocked": "-1"},
])
def test_unreadable_slot_fields_read_as_the_defaults(
    client: FlaskClient, connection: fakeredis.FakeRedis, fields: dict[str, str]
) -> None:
    register(connection, "odd", **fields)
    worker = listed(client)["odd"]
    assert (worker["slots"], worker["loop_lag_seconds"]) == ({"total": 1, "busy": 0, "free": 1}, 0.0)
    (record,) = read_live_workers(connection)
    assert record.loop_blocked == 0


def test_more_busy_than_slots_reads_as_all_busy(client: FlaskClient, connection: fakeredis.FakeRedis) -> None:
    register(connection, "over", slots="4", slots_busy="6")
    assert listed(client)["over"]["slots"] == {"total": 4, "busy": 4, "free": 0}


def test_the_listing_reads_every_worker_in_two_round_trips(client: FlaskClient,
                                                            connection: fakeredis.FakeRedis) -> None:
    for number in range(5):
        register(connection, f"w{number}", **SLOT_FIELDS)
    connection.sadd(WORKERS_KEY, worker_key("gone"))  # a key left without its hash (expired): not listed
    calls: list[str] = []
    original = connection.execute_command
    original_pipeline = connection.pipeline

    def counted(*args: Any, **options: Any) -> Any:
        calls.append(str(args[0]))
        return original(*args, **options)

    def counted_pipeline(*args: Any, **options: Any) -> Any:
        calls.append("PIPELINE")
        return original_pipeline(*args, **options)

    connection.execute_command = counted  # type: ignore[method-assign]
    connection.pipeline = counted_pipeline  # type: ignore[method-assign]
    assert sorted(listed(client)) == [f"w{number}" for number in range(5)]
    assert calls == ["SMEMBERS", "PIPELINE"]


def test_metrics_have_slot_gauges_per_worker(client: FlaskClient, connection: fakeredis.FakeRedis) -> None:
    register(connection, "async-one", state="busy", **SLOT_FIELDS)
    register(connection, "plain", state="busy")
    samples = scrape(client)
    assert value(samples, "runner_worker_slots", worker="async-one") == 16
    assert value(samples, "runner_worker_slots_busy", worker="async-one") == 5
    assert value(samples, "runner_worker_loop_lag_seconds", worker="async-one") == 0.25
    assert value(samples, "runner_worker_loop_blocked_total", worker="async-one") == 3
    assert value(samples, "runner_worker_slots", worker="plain") == 1
    assert value(samples, "runner_worker_slots_busy", worker="plain") == 1
    assert value(samples, "runner_worker_loop_lag_seconds", worker="plain") == 0
    assert value(samples, "runner_worker_loop_blocked_total", worker="plain") == 0
    assert value(samples, "runner_workers") == 2


def test_scaling_counts_the_free_slots_of_the_workers_serving_each_queue(
    client: FlaskClient, connection: fakeredis.FakeRedis
) -> None:
    register(connection, "async-one", queues=("demo_tasks", "ai_processing"), **SLOT_FIELDS)  # 11 free
    register(connection, "async-two", queues=("demo_tasks",), slots="16", slots_busy="16")  # none free
    register(connection, "plain", queues=("ai_processing",))  # 1 free
    queues = {entry["queue"]: entry for entry in client.get("/scaling").get_json()["queues"]}
    assert (queues["demo_tasks"]["workers"], queues["demo_tasks"]["free_slots"]) == (2, 11)
    assert (queues["ai_processing"]["workers"], queues["ai_processing"]["free_slots"]) == (2, 12)
    assert (queues["default"]["workers"], queues["default"]["free_slots"]) == (0, 0)


def test_the_answers_match_their_documented_schemas(client: FlaskClient, connection: fakeredis.FakeRedis) -> None:
    register(connection, "async-one", state="busy", **SLOT_FIELDS)
    register(connection, "plain")
    document = client.get("/openapi.json").get_json()
    for component, path in (("WorkerList", "/workers"), ("ScalingList", "/scaling")):
        schema = {"$ref": f"#/components/schemas/{component}", "components": document["components"]}
        jsonschema_rs.validator_for(schema).validate(client.get(path).get_json())
    slots = document["components"]["schemas"]["WorkerSlots"]
    assert set(slots["required"]) == {"total", "busy", "free"}
