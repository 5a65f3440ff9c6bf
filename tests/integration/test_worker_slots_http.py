"""Worker slots over real HTTP on a real stack: a worker hash with the slot fields, written in Redis as a
worker writes them, read back by GET /workers, /metrics and GET /scaling from the gunicorn processes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from rq import Worker

from runner.rq_seam.keys import worker_key
from runner.rq_seam.queues import queue_for
from tests.integration.conftest import Stack

NAME = "slots-probe"


@pytest.fixture
def probe(sqlite_stack: Stack) -> Iterator[Worker]:
    """A worker registered as RQ registers one, on demo_tasks, running 5 of its 16 slots; unregistered after."""
    worker = Worker([queue_for("demo_tasks", sqlite_stack.redis)], connection=sqlite_stack.redis, name=NAME)
    worker.register_birth()
    worker.set_state("busy")
    sqlite_stack.redis.hset(worker_key(NAME), mapping={"slots": 16, "slots_busy": 5, "loop_lag": 0.125,
                                                       "loop_blocked": 2})
    yield worker
    worker.register_death()


def workers(stack: Stack) -> dict[str, dict[str, Any]]:
    response = stack.get("/workers")
    assert response.status_code == 200, response.text
    return {worker["name"]: worker for worker in response.json()["workers"]}


def test_workers_show_the_slots_a_worker_wrote(sqlite_stack: Stack, probe: Worker) -> None:
    listed = workers(sqlite_stack)
    assert listed[NAME]["slots"] == {"total": 16, "busy": 5, "free": 11}
    assert listed[NAME]["loop_lag_seconds"] == 0.125
    # The stack's own workers, whatever they write (nothing before slots, their slots after): a consistent view.
    real = [worker for name, worker in listed.items() if name != NAME]
    assert len(real) == sqlite_stack.workers
    for worker in real:
        slots = worker["slots"]
        assert slots["total"] >= 1 and slots["free"] == slots["total"] - slots["busy"] >= 0
        assert worker["loop_lag_seconds"] >= 0


def test_metrics_have_the_workers_slot_gauges(sqlite_stack: Stack, probe: Worker) -> None:
    response = sqlite_stack.get("/metrics")
    assert response.status_code == 200, response.text
    samples = {(sample.name, frozenset(sample.labels.items())): sample.value
               for family in text_string_to_metric_families(response.text) for sample in family.samples}
    labels = frozenset({("worker", NAME)})
    assert samples[("runner_worker_slots", labels)] == 16
    assert samples[("runner_worker_slots_busy", labels)] == 5
    assert samples[("runner_worker_loop_lag_seconds", labels)] == 0.125
    assert samples[("runner_worker_loop_blocked_total", labels)] == 2
    for name in workers(sqlite_stack):
        assert samples[("runner_worker_slots", frozenset({("worker", name)}))] >= 1


def test_scaling_counts_the_free_slots_of_the_queues_workers(sqlite_stack: Stack, probe: Worker) -> None:
    listed = workers(sqlite_stack)  # the stack is idle: its workers' slots hold still
    response = sqlite_stack.get("/scaling")
    assert response.status_code == 200, response.text
    demo = {entry["queue"]: entry for entry in response.json()["queues"]}["demo_tasks"]
    serving = [worker for worker in listed.values() if "demo_tasks" in worker["queues"]]
    assert demo["workers"] == len(serving) == sqlite_stack.workers + 1
    assert demo["free_slots"] == sum(worker["slots"]["free"] for worker in serving)
    assert demo["free_slots"] >= 11
