"""The autoscaling section of `make bench`: a pool (`python -m runner worker --min 0 --max M`) against warm
and fixed workers.

- cold start: POST simple_calculation?wait= with the pool at zero workers, against the same request
  served by a warm worker (p50/p99, and the p50 difference: the target is at most 100 ms);
- burst: seconds from the first of 200 `hold` jobs (50 ms each) being enqueued until M jobs run at once;
- throughput: no-op jobs/s of the pool started at zero against M plain workers already running
  (the median of the rounds; the target is at least 0.95x);
- idle: CPU seconds the pool (parent and children) uses at zero over the idle window.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from bench.engines import RunnerEngine, cpu_seconds, process_tree, wait_until
from runner.dev.embedded_redis import free_port

BURST_JOBS = 200
COLD_SAMPLES = 30
WARM_UP_REQUESTS = 5
# For the cold start samples only: a surplus worker goes this soon, so each sample starts from zero
# quickly. The other figures use the default (60 s), as a deployment would.
COLD_SCALE_DOWN_AFTER = "0.2"
CALCULATION = {"expression": "(2+3)*4-5/2"}


class PoolEngine(RunnerEngine):
    """One `python -m runner worker --min N --max M` process on the bench queues."""

    name = "runner-pool"

    def __init__(self, redis_url: str, workdir: Path, maximum: int, scale_down_after: str = "60") -> None:
        self.maximum = maximum
        self.scale_down_after = scale_down_after  # before the base class reads env()
        super().__init__(redis_url, workdir)

    def env(self) -> dict[str, str]:
        return {**super().env(), "RUNNER_SCALE_DOWN_AFTER": self.scale_down_after}

    def start(self, workers: int) -> None:
        """Start the pool with `workers` as its minimum; wait until it has them (or waits at zero)."""
        self.backends.store.migrate()
        self.spawn([sys.executable, "-m", "runner", "worker", "--min", str(workers), "--max", str(self.maximum),
                    "bench", "demo_tasks"])
        if workers:
            wait_until(lambda: len(self.work_processes()) >= workers, 30, "the pool's minimum")
        else:
            wait_until(self.waits_at_zero, 30, "the pool to wait at zero")

    def _payload(self, kind: str) -> tuple[str, dict[str, Any]]:
        return ("hold", {}) if kind == "hold" else super()._payload(kind)

    def work_processes(self) -> list[int]:
        """The pool's work processes: the direct children of its parent."""
        return [pid for process in self.processes for pid in process_tree(process.pid, depth=1)[1:]]

    def waits_at_zero(self) -> bool:
        """No work process, and the parent blocked in its one wait (a BLPOP in Redis' client list)."""
        if self.work_processes():
            return False
        return any(client.get("cmd") == "blpop" for client in self.connection.client_list())

    def running(self) -> int:
        """Jobs running now on the bench queue."""
        return int(self.connection.zcount("rq:wip:bench", time.time(), "+inf"))


def _gunicorn(engine: PoolEngine) -> tuple[Any, str]:
    from bench.run import gunicorn

    port = free_port()
    engine.backends.store.migrate()  # before the web process starts: a store without tables only answers 503
    return gunicorn("api:create_app()", engine.env(), port, engine.workdir), f"http://127.0.0.1:{port}"


def _invoke(session: requests.Session, url: str) -> float:
    started = time.perf_counter()
    response = session.post(f"{url}/functions/simple_calculation/invocations?wait=10", json=CALCULATION)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"?wait= answered {response.status_code}: {response.text}")
    return elapsed


def cold_start(engine: PoolEngine, samples: int, percentiles: Callable[[list[float]], dict[str, float]]
               ) -> dict[str, Any]:
    """?wait= latency from zero workers, and from a warm one (a pool kept at one)."""
    web, url = _gunicorn(engine)
    session = requests.Session()
    figures: dict[str, Any] = {}
    try:
        for minimum, label in ((1, "warm"), (0, "cold")):
            engine.connection.flushall()
            engine.start(minimum)
            measured = []
            for index in range(samples + WARM_UP_REQUESTS):
                if minimum == 0:
                    wait_until(engine.waits_at_zero, 30, "the pool back at zero")
                elapsed = _invoke(session, url)
                if index >= WARM_UP_REQUESTS:
                    measured.append(elapsed)
            figures[label] = percentiles(measured)
            engine.stop()
    finally:
        engine.stop()
        web.terminate()
        web.wait(15)
    figures["cold_minus_warm_p50_ms"] = round(figures["cold"]["p50_ms"] - figures["warm"]["p50_ms"], 3)
    return figures


def burst(engine: PoolEngine) -> float:
    """Seconds from the first enqueue of BURST_JOBS `hold` jobs until the pool runs M of them at once."""
    engine.connection.flushall()
    engine.start(0)
    busy_at: list[float] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if engine.running() >= engine.maximum:
                busy_at.append(time.perf_counter())
                return
            time.sleep(0.001)

    watcher = threading.Thread(target=watch, daemon=True)
    try:
        watcher.start()
        started = time.perf_counter()
        finished = engine.fill(BURST_JOBS, "hold")
        wait_until(finished, 120, "the burst")
    finally:
        done.set()
        watcher.join()
        engine.stop()
    if not busy_at:
        raise RuntimeError(f"the pool never had {engine.maximum} jobs running at once")
    return round(busy_at[0] - started, 3)


def throughput(pool: PoolEngine, fixed: RunnerEngine, jobs: int, rounds: int) -> dict[str, Any]:
    """No-op jobs/s: the pool from zero against `pool.maximum` plain workers, alternating, medians."""
    rates: dict[str, list[float]] = {"autoscaled": [], "fixed": []}
    for _ in range(rounds):
        for label, engine, workers in (("autoscaled", pool, 0), ("fixed", fixed, pool.maximum)):
            engine.connection.flushall()
            try:
                engine.start(workers)
                rates[label].append(jobs / engine.run_batch(jobs, "noop"))
            finally:
                engine.stop()
    medians = {label: round(sorted(found)[len(found) // 2], 1) for label, found in rates.items()}
    return {**medians, "ratio": round(medians["autoscaled"] / medians["fixed"], 3), "rounds": rates}


def idle_cpu(engine: PoolEngine, seconds: float) -> float:
    """CPU seconds the pool, at zero, uses over `seconds`."""
    engine.connection.flushall()
    engine.start(0)
    try:
        pid = engine.processes[0].pid
        before = cpu_seconds(pid)
        time.sleep(seconds)  # the measured window: nothing to do, and the pool must cost next to nothing
        if engine.work_processes():
            raise RuntimeError("an idle pool started a work process")
        return round(cpu_seconds(pid) - before, 3)
    finally:
        engine.stop()


def autoscaling(redis_url: str, workdir: Path, *, jobs: int, rounds: int, idle_seconds: float,
                percentiles: Callable[[list[float]], dict[str, float]]) -> dict[str, Any]:
    """Every autoscaling figure, printed as it comes."""
    maximum = max(2, os.cpu_count() or 2)
    pool = PoolEngine(redis_url, workdir, maximum)
    figures: dict[str, Any] = {"max": maximum}
    figures["cold_start"] = cold_start(PoolEngine(redis_url, workdir, maximum, COLD_SCALE_DOWN_AFTER),
                                       COLD_SAMPLES, percentiles)
    print(f"  autoscale cold start {figures['cold_start']}", flush=True)
    figures["burst_to_max_busy_seconds"] = burst(pool)
    print(f"  autoscale {BURST_JOBS} jobs: {maximum} busy after {figures['burst_to_max_busy_seconds']} s", flush=True)
    figures["throughput"] = throughput(pool, RunnerEngine(redis_url, workdir), jobs, rounds)
    print(f"  autoscale throughput {figures['throughput']}", flush=True)
    figures["idle_cpu_seconds"] = idle_cpu(pool, idle_seconds)
    figures["idle_seconds"] = idle_seconds
    print(f"  autoscale idle at zero: {figures['idle_cpu_seconds']} CPU s over {idle_seconds:g} s", flush=True)
    return figures
