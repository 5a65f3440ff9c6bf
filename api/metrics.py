"""GET /metrics: Prometheus text built at scrape time from the numbers every process keeps in Redis.

Nothing is counted in this process's memory, so the answer is the same from any gunicorn
worker or web machine: a fresh registry per request holds one collector that reads Redis.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping

import redis
from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from api.state import runner_state
from runner.rq_seam.keys import REGISTRY_KEY_TEMPLATES
from runner.rq_seam.worker_reads import WorkerRecord
from runner.services.fleet import default_queues
from runner.services.metrics import (
    OUTCOMES,
    JobMetrics,
    empty_histogram,
    read_job_metrics,
    read_queue_metrics,
)
from runner.services.scaling import QueueRule, read_load, scaling_rules

blueprint = Blueprint("metrics", __name__)


def _bound_label(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(bound)


class RunnerCollector(Collector):
    """Job counters, duration histograms, queue depths, workers and their slots, read from Redis on each collect."""

    def __init__(self, connection: redis.Redis, functions: Iterable[str], queues: Iterable[str],
                 rules: Mapping[str, QueueRule]) -> None:
        self.connection = connection
        self.functions = sorted(functions)
        self.queues = sorted(queues)
        self.rules = rules

    def collect(self) -> Iterator[Metric]:
        jobs = read_job_metrics(self.connection)
        # Registered functions appear with zeros before their first job, so rate() works from the start.
        functions = sorted(set(self.functions) | jobs.functions())
        yield from self._job_metrics(jobs, functions)
        yield from self._queue_metrics()

    def _job_metrics(self, jobs: JobMetrics, functions: list[str]) -> Iterator[Metric]:
        invocations = CounterMetricFamily(
            "runner_invocations", "Invocations by function and outcome (accepted, then one outcome per attempt).",
            labels=["function", "outcome"],
        )
        retries = CounterMetricFamily("runner_job_retries", "Attempts that failed and were retried.",
                                      labels=["function"])
        durations = HistogramMetricFamily("runner_job_duration_seconds",
                                          "How long each attempt ran, by function.", labels=["function"])
        for function in functions:
            for outcome in OUTCOMES:
                invocations.add_metric([function, outcome], jobs.invocations.get((function, outcome), 0))
            retries.add_metric([function], jobs.invocations.get((function, "retried"), 0))
            histogram = jobs.durations.get(function) or empty_histogram()
            durations.add_metric(
                [function],
                buckets=[(_bound_label(bound), count) for bound, count in histogram.buckets],
                sum_value=histogram.total_seconds,
            )
        yield from (invocations, retries, durations)

    def _queue_metrics(self) -> Iterator[Metric]:
        fleet = read_queue_metrics(self.connection, self.queues)
        depth = GaugeMetricFamily("runner_queue_depth", "Jobs waiting in the queue.", labels=["queue"])
        age = GaugeMetricFamily("runner_queue_oldest_job_age_seconds",
                                "Seconds the job at the head of the queue has waited (0 when empty).",
                                labels=["queue"])
        registries = GaugeMetricFamily("runner_queue_jobs", "Jobs in the queue's RQ registries, by status.",
                                       labels=["queue", "status"])
        queue_workers = GaugeMetricFamily("runner_queue_workers", "Live workers serving the queue.",
                                          labels=["queue"])
        for queue in fleet.queues:
            depth.add_metric([queue.name], queue.depth)
            age.add_metric([queue.name], queue.oldest_job_age_seconds)
            for status in REGISTRY_KEY_TEMPLATES:
                registries.add_metric([queue.name, status], queue.registries[status])
            queue_workers.add_metric([queue.name], queue.workers)
        workers = GaugeMetricFamily("runner_workers", "Live RQ workers (their heartbeat has not expired).",
                                    value=fleet.workers_alive)
        yield from (depth, age, registries, queue_workers, workers)
        yield from self._worker_metrics(fleet.workers)
        yield from self._scaling_metrics([queue.name for queue in fleet.queues])

    def _worker_metrics(self, live: Iterable[WorkerRecord]) -> Iterator[Metric]:
        slots = GaugeMetricFamily("runner_worker_slots", "Jobs the worker runs at once (RUNNER_WORKER_SLOTS).",
                                  labels=["worker"])
        busy = GaugeMetricFamily("runner_worker_slots_busy",
                                 "Slots in use: jobs in flight (a plain sync job takes them all).", labels=["worker"])
        lag = GaugeMetricFamily("runner_worker_loop_lag_seconds",
                                "The worst lag of the worker's event loop over its last heartbeat interval.",
                                labels=["worker"])
        blocked = CounterMetricFamily("runner_worker_loop_blocked",
                                      "Times a job blocked the worker's event loop past the warning bound.",
                                      labels=["worker"])
        for worker in live:
            slots.add_metric([worker.name], worker.slots.total)
            busy.add_metric([worker.name], worker.slots.busy)
            lag.add_metric([worker.name], worker.loop_lag_seconds)
            blocked.add_metric([worker.name], worker.loop_blocked)
        yield from (slots, busy, lag, blocked)

    def _scaling_metrics(self, queues: list[str]) -> Iterator[Metric]:
        # Queued, the oldest's age and workers are the queue gauges above; these are GET /scaling's others.
        running = GaugeMetricFamily("runner_queue_running", "Jobs running (live entries of the started registry).",
                                    labels=["queue"])
        due = GaugeMetricFamily("runner_queue_scheduled_due", "Scheduled jobs due within 60 s.", labels=["queue"])
        desired = GaugeMetricFamily("runner_queue_desired_workers",
                                    "Workers the queue wants: queued + running + due, capped by concurrency, "
                                    "one per job or per RUNNER_WORKER_SLOTS jobs of async or threaded functions.",
                                    labels=["queue"])
        for load in read_load(self.connection, queues, self.rules, count_workers=False):
            running.add_metric([load.queue], load.running)
            due.add_metric([load.queue], load.scheduled_due)
            desired.add_metric([load.queue], load.desired_workers)
        yield from (running, due, desired)


@blueprint.get("/metrics")
def metrics() -> Response:
    state = runner_state()
    registry = CollectorRegistry(auto_describe=False)
    functions = [spec.name for spec in state.registry]
    registry.register(RunnerCollector(state.backends.connection, functions, default_queues(state.registry),
                                      scaling_rules(state.registry, state.backends.settings.worker_slots)))
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
