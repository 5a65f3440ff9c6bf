"""GET /metrics: Prometheus text from counters every process keeps in Redis (fakeredis here)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

import fakeredis
import pytest
from flask.testing import FlaskClient
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from rq import Worker
from werkzeug.test import TestResponse

from runner.config import Settings
from runner.redis_connection import connect_redis
from runner.rq_seam.queues import queue_for
from runner.services.lifecycle import JobEvent
from runner.services.metrics import (
    DURATION_BUCKETS,
    DURATION_BUCKETS_KEY,
    INVOCATIONS_KEY,
    read_job_metrics,
    read_queue_metrics,
    record_job_event,
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: FlaskClient) -> Samples:
    """GET /metrics, check it is Prometheus text, and index every sample by name and labels."""
    response = client.get("/metrics")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
    samples: Samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; KeyError names the sample when it is missing."""
    return samples[(name, frozenset(labels.items()))]


def invoke_many(invoke: Callable[..., TestResponse], name: str, payloads: list[dict[str, Any]]) -> None:
    for payload in payloads:
        assert invoke(name, payload).status_code == 202


def test_outcomes_and_durations_are_counted_per_function(
    client: FlaskClient, invoke: Callable[..., TestResponse], run_jobs: Callable[..., bool]
) -> None:
    invoke_many(invoke, "simple_calculation", [{"expression": "1+1"}, {"expression": "2*3"}, {"expression": "9-4"},
                                               {"expression": "1/0"}])
    run_jobs()
    samples = scrape(client)
    counts = {outcome: value(samples, "runner_invocations_total", function="simple_calculation", outcome=outcome)
              for outcome in ("accepted", "finished", "failed", "stopped", "retried")}
    assert counts == {"accepted": 4, "finished": 3, "failed": 1, "stopped": 0, "retried": 0}
    assert value(samples, "runner_job_duration_seconds_count", function="simple_calculation") == 4
    assert value(samples, "runner_job_duration_seconds_bucket", function="simple_calculation", le="+Inf") == 4
    assert 0 < value(samples, "runner_job_duration_seconds_sum", function="simple_calculation") < 10
    assert value(samples, "runner_job_retries_total", function="simple_calculation") == 0


def test_retried_attempts_are_counted(
    client: FlaskClient, invoke: Callable[..., TestResponse], run_jobs: Callable[..., bool]
) -> None:
    invoke_many(invoke, "unreliable_task", [{"fail_times": 1}])
    run_jobs()  # the first attempt fails and is scheduled for a retry after its backoff
    samples = scrape(client)
    assert value(samples, "runner_invocations_total", function="unreliable_task", outcome="retried") == 1
    assert value(samples, "runner_job_retries_total", function="unreliable_task") == 1
    assert value(samples, "runner_queue_jobs", queue="demo_tasks", status="scheduled") == 1


def test_every_registered_function_and_queue_is_reported_before_any_job(client: FlaskClient) -> None:
    samples = scrape(client)
    for function in ("simple_calculation", "text_generation", "image_analysis"):
        assert value(samples, "runner_invocations_total", function=function, outcome="finished") == 0
        assert value(samples, "runner_job_duration_seconds_count", function=function) == 0
    for queue in ("ai_processing", "demo_tasks", "default"):
        assert value(samples, "runner_queue_depth", queue=queue) == 0
        assert value(samples, "runner_queue_oldest_job_age_seconds", queue=queue) == 0
    assert value(samples, "runner_workers") == 0


def test_counts_written_through_one_app_are_read_through_another(
    invoke: Callable[..., TestResponse], run_jobs: Callable[..., bool], make_client: Callable[..., FlaskClient]
) -> None:
    # Two apps stand for two gunicorn processes (or machines) on the same Redis.
    invoke_many(invoke, "simple_calculation", [{"expression": "2+2"}])
    run_jobs()
    samples = scrape(make_client())
    assert value(samples, "runner_invocations_total", function="simple_calculation", outcome="finished") == 1


def test_queue_depth_and_oldest_job_age(
    client: FlaskClient, invoke: Callable[..., TestResponse], connection: fakeredis.FakeRedis
) -> None:
    invoke_many(invoke, "simple_calculation", [{"expression": "1"}, {"expression": "2"}])
    samples = scrape(client)
    assert value(samples, "runner_queue_depth", queue="demo_tasks") == 2
    assert value(samples, "runner_queue_depth", queue="ai_processing") == 0
    head = queue_for("demo_tasks", connection).get_jobs()[0]
    assert head.enqueued_at is not None
    later = head.enqueued_at + timedelta(seconds=42)
    fleet = read_queue_metrics(connection, ["demo_tasks"], now=later)
    demo = next(queue for queue in fleet.queues if queue.name == "demo_tasks")
    assert demo.depth == 2 and demo.oldest_job_age_seconds == pytest.approx(42)


def test_a_queued_id_whose_job_was_deleted_has_no_age(
    client: FlaskClient, invoke: Callable[..., TestResponse], connection: fakeredis.FakeRedis
) -> None:
    invoke_many(invoke, "simple_calculation", [{"expression": "1"}])
    job = queue_for("demo_tasks", connection).get_jobs()[0]
    connection.delete(job.key)
    samples = scrape(client)
    assert value(samples, "runner_queue_depth", queue="demo_tasks") == 1
    assert value(samples, "runner_queue_oldest_job_age_seconds", queue="demo_tasks") == 0


def test_live_workers_are_counted_and_expired_ones_are_not(
    client: FlaskClient, connection: fakeredis.FakeRedis
) -> None:
    queues = [queue_for("ai_processing", connection), queue_for("demo_tasks", connection)]
    workers = [Worker(queues, connection=connection, name=f"w{n}") for n in (1, 2)]
    for worker in workers:
        worker.register_birth()
    samples = scrape(client)
    assert value(samples, "runner_workers") == 2
    assert value(samples, "runner_queue_workers", queue="demo_tasks") == 2
    assert value(samples, "runner_queue_workers", queue="default") == 0
    connection.delete(workers[0].key)  # its heartbeat expired; RQ's worker set still names it
    assert connection.scard("rq:workers") == 2
    samples = scrape(client)
    assert value(samples, "runner_workers") == 1
    assert value(samples, "runner_queue_workers", queue="ai_processing") == 1


def test_durations_fall_into_cumulative_buckets(connection: fakeredis.FakeRedis) -> None:
    for seconds in (0.004, 0.3, 0.5, 700.0):
        record_job_event(connection, JobEvent("finished", "job", "f", "q", duration_seconds=seconds))
    histogram = read_job_metrics(connection).durations["f"]
    cumulative = dict(histogram.buckets)
    assert cumulative[0.01] == 1 and cumulative[0.25] == 1 and cumulative[0.5] == 3
    assert cumulative[600.0] == 3 and cumulative[math.inf] == 4 == histogram.count
    assert histogram.total_seconds == pytest.approx(700.804)
    assert [bound for bound, _ in histogram.buckets] == list(DURATION_BUCKETS)


def test_listener_writes_only_outcomes(connection: fakeredis.FakeRedis) -> None:
    record_job_event(connection, JobEvent("started", "job", "f", "q"))
    assert not connection.exists(INVOCATIONS_KEY)
    record_job_event(connection, JobEvent("accepted", "job", "f", "q", duration_seconds=1.0))
    assert connection.hgetall(INVOCATIONS_KEY) == {b"f|accepted": b"1"}
    assert not connection.exists(DURATION_BUCKETS_KEY)  # accepting a job is not an attempt


def test_redis_down_is_a_json_503(
    make_client: Callable[..., FlaskClient], closed_port: int, api_error: Callable[..., dict[str, Any]]
) -> None:
    down = make_client(connection=connect_redis(f"redis://127.0.0.1:{closed_port}/0"))
    response = down.get("/metrics")
    api_error(response, 503, "backend_unavailable")
    assert response.headers["Retry-After"]


def test_listener_is_cheap(connection: fakeredis.FakeRedis) -> None:
    # One round trip per event, whatever the outcome: the listener runs for every job.
    calls: list[int] = []
    original = connection.pipeline

    def counting_pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = original(*args, **kwargs)
        execute = pipe.execute

        def counted() -> Any:
            calls.append(len(pipe.command_stack))
            return execute()

        pipe.execute = counted  # type: ignore[method-assign]
        return pipe

    connection.pipeline = counting_pipeline  # type: ignore[method-assign]
    record_job_event(connection, JobEvent("failed", "job", "f", "q", duration_seconds=0.2))
    record_job_event(connection, JobEvent("accepted", "job", "f", "q"))
    assert calls == [3, 1]


def test_with_api_keys_metrics_need_one(
    make_client: Callable[..., FlaskClient], settings: Settings, api_error: Callable[..., dict[str, Any]]
) -> None:
    client = make_client(settings=replace(settings, api_keys="scrape-key"))
    api_error(client.get("/metrics"), 401, "unauthorized")
    response = client.get("/metrics", headers={"Authorization": "Bearer scrape-key"})
    assert response.status_code == 200 and b"runner_workers 0.0" in response.data
