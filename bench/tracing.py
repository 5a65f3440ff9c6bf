"""What traces cost when on: `python -m bench.tracing [--requests N] [--rounds N]` (not part of `make bench`).

Our own Redis and a worker on loopback, the API under gunicorn (workers = cores), and an OTLP/HTTP
receiver in this process that takes the spans. Tracing off and on in alternating turns: sequential
POST /functions/noop/invocations (the 202), and with `?wait=10` (202 to the job's end, the
worker's spans included). Each mode's figure is the median turn's percentiles.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from bench.engines import RunnerEngine
from bench.run import gunicorn, median_round, percentiles
from runner.dev.embedded_redis import EmbeddedRedis, free_port
from tests.receiver import CallbackReceiver

WARM_UP_REQUESTS = 30


def timed_posts(url: str, count: int, expected: int) -> list[float]:
    """Seconds per POST, one after another, after a warm-up that does not count."""
    session = requests.Session()
    samples = []
    for index in range(count + WARM_UP_REQUESTS):
        started = time.perf_counter()
        response = session.post(url, json={})
        elapsed = time.perf_counter() - started
        if response.status_code != expected:
            raise RuntimeError(f"{url} answered {response.status_code}: {response.text}")
        if index >= WARM_UP_REQUESTS:
            samples.append(elapsed)
    return samples


def _turn(engine: RunnerEngine, extra: dict[str, str], count: int) -> dict[str, Any]:
    plain_env = engine.env
    engine.env = lambda: {**plain_env(), **extra}  # type: ignore[method-assign]
    try:
        engine.connection.flushall()
        engine.backends.store.migrate()
        engine.start(1)
        port = free_port()
        api = gunicorn("api:create_app()", engine.env(), port, engine.workdir)
        try:
            url = f"http://127.0.0.1:{port}/functions/noop/invocations"
            return {"invoke": percentiles(timed_posts(url, count, 202)),
                    "wait": percentiles(timed_posts(f"{url}?wait=10", count, 200))}
        finally:
            api.terminate()
            api.wait(15)
    finally:
        engine.stop()
        engine.env = plain_env  # type: ignore[method-assign]


def measure_tracing(workdir: Path, *, count: int = 300, rounds: int = 3) -> dict[str, Any]:
    """Invoke and ?wait= latency with tracing off and on (median turn of `rounds` each)."""
    with EmbeddedRedis(workdir / "redis", appendonly=False) as server, CallbackReceiver() as collector:
        engine = RunnerEngine(server.url, workdir)
        modes = {"off": {}, "on": {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url}}
        turns: dict[str, list[dict[str, Any]]] = {name: [] for name in modes}
        for index in range(rounds):
            for name in (list(modes) if index % 2 == 0 else list(reversed(modes))):
                turns[name].append(_turn(engine, modes[name], count))
        figures = {name: median_round(measured, lambda turn: turn["invoke"]["p50_ms"])
                   for name, measured in turns.items()}
        figures["span_batches_received"] = len(collector.deliveries)
    print(f"  tracing {json.dumps(figures)}", flush=True)
    return figures


def main() -> None:
    """Run the measurement once and print it."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="runner-bench-tracing-"))
    try:
        measure_tracing(workdir, count=args.requests, rounds=args.rounds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
