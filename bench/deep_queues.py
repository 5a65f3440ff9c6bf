"""The deep-queue part of `make bench-scale`: a burst of no-op jobs accepted through the API with the
Python client, then drained; rates near the top and the bottom of the queue, Redis memory and
commands per job, and the fleet's read paths (metrics, queues, dashboard) at full depth."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
import requests
from rq import Worker

from bench.engines import ROOT, cpu_seconds, wait_until
from bench.run import percentiles
from runner.client.http_client import RunnerClient
from runner.dev.embedded_redis import EmbeddedRedis

CLIENT_THREADS = 4
QUEUE_KEY = "rq:queue:bench"
FINISHED_KEY = "rq:finished:bench"
JOURNAL_KEY = "runner:journal"
TARGETS = {"rate_ratio": 0.9, "bytes_per_queued_job": 2048}


@contextmanager
def worker_processes(env: dict[str, str], count: int, queues: list[str]) -> Iterator[list[int]]:
    """`count` runner workers on `queues`, stopped (SIGTERM) on the way out; their pids."""
    connection = redis.Redis.from_url(env["REDIS_URL"])
    before = Worker.count(connection=connection)
    processes = [subprocess.Popen([sys.executable, "-m", "runner", "worker", *queues], cwd=ROOT, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
                 for _ in range(count)]
    try:
        wait_until(lambda: Worker.count(connection=connection) >= before + count, 60, "runner workers")
        yield [process.pid for process in processes]
    finally:
        for process in processes:
            os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            process.wait(60)
        wait_until(lambda: Worker.count(connection=connection) <= before, 30, "workers gone")


def redis_counters(connection: redis.Redis, pid: int) -> dict[str, float]:
    """Redis's memory in use, commands run so far, and CPU seconds so far."""
    stats = connection.info("commandstats")
    return {"memory": float(connection.info("memory")["used_memory"]),
            "commands": float(sum(entry["calls"] for entry in stats.values())), "cpu": cpu_seconds(pid, False)}


def per_job(before: dict[str, float], after: dict[str, float], jobs: int) -> dict[str, float]:
    """Bytes of memory, commands and CPU microseconds of Redis per job between two readings."""
    return {"bytes": round((after["memory"] - before["memory"]) / jobs, 1),
            "commands": round((after["commands"] - before["commands"]) / jobs, 2),
            "redis_cpu_us": round((after["cpu"] - before["cpu"]) * 1e6 / jobs, 1)}


def accept(base: str, jobs: int) -> list[float]:
    """Invoke `noop` `jobs` times through the Python client from CLIENT_THREADS threads; when each was accepted."""
    accepted: list[float] = []
    errors: list[BaseException] = []

    def client_thread(count: int) -> None:
        client = RunnerClient(base)
        try:
            for _ in range(count):
                client.invoke("noop", {})
                accepted.append(time.perf_counter())
        except BaseException as exc:  # noqa: BLE001 (reported by the caller)
            errors.append(exc)

    shares = [jobs // CLIENT_THREADS + (1 if index < jobs % CLIENT_THREADS else 0) for index in range(CLIENT_THREADS)]
    threads = [threading.Thread(target=client_thread, args=(share,)) for share in shares]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"accepting failed: {errors[0]!r}")
    return sorted(accepted)


def windows(jobs: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Job ranges [start, end) counted near depth 1,000 and near the full depth."""
    width = max(100, min(2000, jobs // 10))
    shallow = min(1000, jobs // 10)
    return (shallow, shallow + width), (jobs - width, jobs)


def rate(times: list[float], start: int, end: int) -> float:
    """Jobs per second between the `start`th and the `end - 1`th event."""
    return round((end - 1 - start) / max(times[end - 1] - times[start], 1e-9), 1)


def drain(connection: redis.Redis, env: dict[str, str], jobs: int) -> list[float]:
    """Start 2 workers on the full queue; when the depth fell below each count (index = jobs taken)."""
    taken_at: list[float] = []

    def watch() -> None:
        while len(taken_at) < jobs:
            depth = connection.llen(QUEUE_KEY)
            now = time.perf_counter()
            while len(taken_at) < jobs - depth:
                taken_at.append(now)
            time.sleep(0.002)

    with worker_processes(env, 2, ["bench"]):
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        wait_until(lambda: connection.zcard(FINISHED_KEY) >= jobs, 3600, f"{jobs} jobs drained")
        watcher.join(10)
    return taken_at


def read_paths(base: str, samples: int) -> dict[str, Any]:
    """Latency of the fleet's read paths (one after another, `samples` each)."""
    session = requests.Session()
    paths = ["/metrics", "/queues", "/workers", "/scaling", "/dashboard/", "/dashboard/0/data/queues.json",
             "/dashboard/0/data/jobs/bench/queued/8/asc/1.json", "/dashboard/0/data/jobs/bench/queued/8/dsc/1.json",
             "/dashboard/0/data/workers.json"]
    figures: dict[str, Any] = {}
    for path in paths:
        if session.get(base + path, timeout=30).status_code == 404:
            figures[path] = "absent on this branch"
            continue
        taken = []
        for _ in range(samples):
            started = time.perf_counter()
            response = session.get(base + path, timeout=30)
            taken.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:200]}")
        figures[path] = percentiles(taken)
        print(f"  at depth: GET {path} {figures[path]}", flush=True)
    return figures


def deep_queue(env: dict[str, str], base: str, server: EmbeddedRedis, jobs: int, samples: int) -> dict[str, Any]:
    """The whole deep-queue run; figures and verdicts."""
    connection = redis.Redis.from_url(env["REDIS_URL"])
    connection.flushall()
    pid = server.pid or 0
    figures: dict[str, Any] = {"jobs": jobs}
    # One worker on a queue of its own: no job of the burst, but its projector applies the journal,
    # as the fleet's does, so Redis holds the queued jobs and not their pending history as well.
    with worker_processes(env, 1, ["bench_idle"]):
        empty = redis_counters(connection, pid)
        accepted = accept(base, jobs)
        wait_until(lambda: connection.xlen(JOURNAL_KEY) == 0, 600, "the journal applied")
        full = redis_counters(connection, pid)
        figures["depth"] = connection.llen(QUEUE_KEY)
        figures["accept_per_job"] = per_job(empty, full, jobs)
        (low, low_end), (high, high_end) = windows(jobs)
        figures["accept_rate_shallow"] = rate(accepted, low, low_end)
        figures["accept_rate_deep"] = rate(accepted, high, high_end)
        print(f"  accepted {jobs}: {figures['accept_rate_shallow']} jobs/s near depth {low}, "
              f"{figures['accept_rate_deep']} near depth {high}; Redis per queued job {figures['accept_per_job']}",
              flush=True)
        figures["read_paths_at_depth"] = read_paths(base, min(samples, 100))
        drained = drain(connection, env, jobs)
        wait_until(lambda: connection.xlen(JOURNAL_KEY) == 0, 600, "the journal applied")
        done = redis_counters(connection, pid)
    figures["drain_per_job"] = per_job(full, done, jobs)
    figures["bytes_per_finished_job_kept"] = per_job(empty, done, jobs)["bytes"]
    # Jobs taken near the top of the queue (after as many again while the workers warm up) and
    # near its bottom (depth ~1,000).
    figures["drain_rate_deep"] = rate(drained, high_end - high, 2 * (high_end - high))
    figures["drain_rate_shallow"] = rate(drained, jobs - low_end, jobs - low)
    print(f"  drained: {figures['drain_rate_deep']} jobs/s from depth {jobs}, {figures['drain_rate_shallow']} "
          f"near depth {low_end}; Redis per drained job {figures['drain_per_job']}; kept per finished job "
          f"{figures['bytes_per_finished_job_kept']} bytes", flush=True)
    figures["arithmetic"] = arithmetic(figures)
    figures["verdicts"] = verdicts(figures)
    return figures


def arithmetic(figures: dict[str, Any]) -> dict[str, float]:
    """What one Redis core carries, from its measured CPU per job (accept + run), and how many
    worker processes (at the measured drain rate of one) it takes to get there."""
    redis_us = figures["accept_per_job"]["redis_cpu_us"] + figures["drain_per_job"]["redis_cpu_us"]
    per_core = 1e6 / max(redis_us, 0.001)
    per_process = figures["drain_rate_shallow"] / 2
    return {"redis_cpu_us_per_job": round(redis_us, 1),
            "commands_per_job": round(figures["accept_per_job"]["commands"] + figures["drain_per_job"]["commands"], 1),
            "jobs_per_second_per_redis_core": round(per_core), "noop_jobs_per_second_per_worker_process":
                round(per_process, 1), "worker_processes_to_saturate": round(per_core / max(per_process, 0.001))}


def verdicts(figures: dict[str, Any]) -> list[str]:
    """The deep-queue targets, met or not."""
    lines = []
    for kind in ("accept", "drain"):
        ratio = round(figures[f"{kind}_rate_deep"] / max(figures[f"{kind}_rate_shallow"], 0.001), 2)
        lines.append(f"{kind} rate at depth {figures['jobs']} / near 1,000: {ratio} (target >= "
                     f"{TARGETS['rate_ratio']}): {'met' if ratio >= TARGETS['rate_ratio'] else 'NOT met'}")
    queued = figures["accept_per_job"]["bytes"]
    lines.append(f"Redis bytes per queued no-op job {queued} (target <= {TARGETS['bytes_per_queued_job']}): "
                 f"{'met' if queued <= TARGETS['bytes_per_queued_job'] else 'NOT met'}")
    return lines
