"""GET /metrics on a real stack: counts written by gunicorn and worker processes, read back as Prometheus text."""

from __future__ import annotations

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import Stack

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(stack: Stack) -> Samples:
    response = stack.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture(scope="module")
def finished_jobs(sqlite_stack: Stack) -> Stack:
    """3 finished and 1 failed simple_calculation, and 1 unreliable_task that succeeds on its retry."""
    payloads = [{"expression": "1+1"}, {"expression": "2*3"}, {"expression": "7-2"}, {"expression": "1/0"}]
    ids = [sqlite_stack.invoke("simple_calculation", payload).json()["id"] for payload in payloads]
    ids.append(sqlite_stack.invoke("unreliable_task", {"fail_times": 1}).json()["id"])
    statuses = [sqlite_stack.wait_until_terminal(job_id, timeout=20)["status"] for job_id in ids]
    assert statuses == ["finished", "finished", "finished", "failed", "finished"]
    return sqlite_stack


def test_invocations_by_outcome(finished_jobs: Stack) -> None:
    samples = scrape(finished_jobs)
    calculation = {outcome: value(samples, "runner_invocations_total", function="simple_calculation", outcome=outcome)
                   for outcome in ("accepted", "finished", "failed", "retried", "stopped")}
    assert calculation == {"accepted": 4, "finished": 3, "failed": 1, "retried": 0, "stopped": 0}
    unreliable = {outcome: value(samples, "runner_invocations_total", function="unreliable_task", outcome=outcome)
                  for outcome in ("accepted", "finished", "failed", "retried")}
    assert unreliable == {"accepted": 1, "finished": 1, "failed": 0, "retried": 1}
    assert value(samples, "runner_job_retries_total", function="unreliable_task") == 1


def test_durations_of_every_attempt(finished_jobs: Stack) -> None:
    samples = scrape(finished_jobs)
    assert value(samples, "runner_job_duration_seconds_count", function="simple_calculation") == 4
    assert value(samples, "runner_job_duration_seconds_count", function="unreliable_task") == 2
    total = value(samples, "runner_job_duration_seconds_sum", function="simple_calculation")
    assert 0 < total < 10
    below_a_second = value(samples, "runner_job_duration_seconds_bucket", function="simple_calculation", le="1.0")
    assert below_a_second == 4


def test_queues_and_workers(finished_jobs: Stack) -> None:
    samples = scrape(finished_jobs)
    assert value(samples, "runner_workers") == finished_jobs.workers
    for queue in ("ai_processing", "demo_tasks", "default"):
        assert value(samples, "runner_queue_workers", queue=queue) == finished_jobs.workers
        assert value(samples, "runner_queue_depth", queue=queue) == 0
        assert value(samples, "runner_queue_oldest_job_age_seconds", queue=queue) == 0
    assert value(samples, "runner_queue_jobs", queue="demo_tasks", status="finished") == 4
    assert value(samples, "runner_queue_jobs", queue="demo_tasks", status="failed") == 1


def test_every_web_process_answers_the_same_counts(finished_jobs: Stack) -> None:
    # New connections may land on either gunicorn worker; the counts live in Redis, not in them.
    scrapes = []
    for _ in range(6):
        finished_jobs.http.close()
        scrapes.append({key: number for key, number in scrape(finished_jobs).items()
                        if key[0] == "runner_invocations_total"})
    assert all(one == scrapes[0] for one in scrapes)
