"""`make bench`: our runner against raw RQ and Celery, on one machine, in one run.

Our runner twice: its store on SQLite, and on PostgreSQL (`runner-postgres`). Starts its own
Redis on a free loopback port and its own PostgreSQL (tests/servers.py's, fsync off); prints a
table of figures and ratios and writes bench/results/<date>.json. Loads are bounded in count and
time and stay on 127.0.0.1.
Usage: python -m bench.run [--jobs N] [--drain-jobs N] [--latency N] [--http-seconds S] [--memory-jobs N]
                           [--rounds N] [--idle-seconds S] [--waiting-jobs N] [--quick] [--autoscale-only]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import requests

from bench.autoscale import autoscaling
from bench.engines import (
    ROOT,
    CeleryEngine,
    Engine,
    RawRQEngine,
    RunnerEngine,
    cpu_seconds,
    rss_kib,
    wait_until,
)
from bench.waiting_engines import WAITING_JOBS
from runner.dev.embedded_redis import EmbeddedRedis, free_port
from runner.tracing import tracing_configured
from tests.servers import PostgresServer

RESULTS_DIR = ROOT / "bench" / "results"
T = TypeVar("T")


def median_round(rounds: list[T], rate: Callable[[T], float]) -> T:
    """The round whose `rate` is the median (the upper one of an even count): an engine's figure."""
    return sorted(rounds, key=rate)[len(rounds) // 2]


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50/p90/p99 in milliseconds."""
    ordered = sorted(samples)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {"p50_ms": round(pick(0.50), 3), "p90_ms": round(pick(0.90), 3), "p99_ms": round(pick(0.99), 3)}


def with_engine(engine: Engine, workers: int, body: Callable[[Engine], Any]) -> Any:
    """Start `workers` of `engine`, run `body`, always stop the processes."""
    engine.connection.flushall()
    try:
        engine.start(workers)
        return body(engine)
    finally:
        engine.stop()


def throughput(engines: list[Engine], jobs: int, kind: str, redis_pid: int, rounds: int,
               cpu: dict[str, dict[str, float]] | None = None,
               every_round: dict[str, list[float]] | None = None) -> dict[str, float]:
    """jobs/s per engine with 2 worker processes, the median of `rounds` batches each; with `cpu`,
    also where the CPU time went, per job, in the median batch.

    The rounds go engine after engine, then again: a slow spell of this shared machine falls on
    every engine alike, not on the one that happened to run then.
    """
    runs: dict[str, list[tuple[float, dict[str, float]]]] = {}
    for round_number in range(1, rounds + 1):
        for engine in engines:
            if kind not in engine.kinds:
                continue

            def batch(e: Engine) -> tuple[float, dict[str, float]]:
                e.run_batch(min(50, jobs), kind)  # warm-up: imports, connections, SQLite pages
                before = _cpu_now(e, redis_pid)
                seconds = e.run_batch(jobs, kind)
                used = [(after - start) * 1000 / jobs
                        for start, after in zip(before, _cpu_now(e, redis_pid), strict=True)]
                return jobs / seconds, dict(zip(("workers_ms", "client_ms", "redis_ms"),
                                                (round(x, 3) for x in used), strict=True))

            rate, used = with_engine(engine, 2, batch)
            runs.setdefault(engine.name, []).append((rate, used))
            print(f"  throughput {kind:>6} {engine.name:<16} round {round_number}: {rate:>8.1f} jobs/s"
                  f"  CPU per job (ms): {used}", flush=True)
    figures = {}
    for name, measured in runs.items():
        rate, used = median_round(measured, lambda run: run[0])
        figures[name] = round(rate, 1)
        if cpu is not None:
            cpu[name] = used
        if every_round is not None:
            every_round[name] = [round(run[0], 1) for run in measured]
    print(f"  throughput {kind:>6} median of {rounds}: {figures}", flush=True)
    return figures


def _cpu_now(engine: Engine, redis_pid: int) -> tuple[float, float, float]:
    """CPU seconds so far of the engine's workers, of this process (enqueue, waiting) and of Redis."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return engine.cpu_seconds(), usage.ru_utime + usage.ru_stime, cpu_seconds(redis_pid)


def drain_rate(engine: Engine, workers: int, jobs: int, kind: str = "noop") -> float:
    """jobs/s of `workers` of `engine` alone: the queue is filled while no worker runs, and the
    clock runs from the first job taken to the last result, so the producer's cost is left out."""
    engine.connection.flushall()
    done = engine.fill(jobs, kind)
    waiting = engine.connection.llen(engine.queue_key)
    first_taken: list[float] = []

    def watch() -> None:
        while engine.connection.llen(engine.queue_key) >= waiting:
            time.sleep(0.0005)
        first_taken.append(time.perf_counter())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        engine.start(workers)  # they may take jobs before it returns: the watcher saw the first
        wait_until(done, 600, f"{jobs} {engine.name} jobs")
        finished = time.perf_counter()
        watcher.join(5)
    finally:
        engine.stop()
    return jobs / (finished - first_taken[0])


def drain(engines: list[Engine], jobs: int, rounds: int,
          every_round: dict[str, list[float]] | None = None) -> dict[str, float]:
    """What each engine's 2 workers get through alone (see drain_rate), the median of `rounds`.

    With one producer enqueueing as the workers run (`throughput`), a fast engine waits for the
    producer; this is the workers' own rate, the figure a scaling curve is about.
    """
    runs: dict[str, list[float]] = {}
    for round_number in range(1, rounds + 1):
        for engine in engines:
            rate = drain_rate(engine, 2, jobs)
            runs.setdefault(engine.name, []).append(rate)
            print(f"  drain {engine.name:<16} round {round_number}: {rate:>8.1f} jobs/s", flush=True)
    figures: dict[str, float] = {}
    for name, measured in runs.items():
        middle: float = median_round(measured, float)
        figures[name] = round(middle, 1)
    if every_round is not None:
        every_round.update({name: [round(rate, 1) for rate in measured] for name, measured in runs.items()})
    print(f"  drain median of {rounds}: {figures}", flush=True)
    return figures


def latency(engines: list[Engine], count: int, rounds: int) -> dict[str, dict[str, float]]:
    """Sequential single jobs, enqueue -> result, per engine: `count` in all, in `rounds` turns per engine."""
    samples: dict[str, list[float]] = {}
    for _ in range(rounds):
        for engine in engines:

            def sequential(e: Engine) -> list[float]:
                for _ in range(10):
                    e.one()
                return [e.one() for _ in range(max(1, count // rounds))]

            samples.setdefault(engine.name, []).extend(with_engine(engine, 2, sequential))
    figures = {name: percentiles(taken) for name, taken in samples.items()}
    for name, figure in figures.items():
        print(f"  latency {name:<16} {figure}", flush=True)
    return figures


def gunicorn(app: str, env: dict[str, str], port: int, workdir: Path) -> subprocess.Popen[bytes]:
    """gunicorn with workers = cores, like production."""
    log = open(workdir / f"gunicorn-{port}.log", "wb")  # noqa: SIM115
    argv = [sys.executable, "-m", "gunicorn", app, "--config", str(ROOT / "gunicorn.conf.py"),
            "--bind", f"127.0.0.1:{port}", "--workers", str(os.cpu_count() or 2), "--access-logfile", "/dev/null"]
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    wait_until(lambda: _answers(f"http://127.0.0.1:{port}/healthz") or _answers(f"http://127.0.0.1:{port}/x"),
               30, app)
    return process


def _answers(url: str) -> bool:
    try:
        requests.get(url, timeout=1)
        return True
    except (requests.ConnectionError, requests.Timeout):  # not up yet, or slow to answer on a loaded machine
        return False


# A short load on each app before the HTTP turns that count.
WARM_UP_SECONDS = 2


def wrk(url: str, seconds: int) -> dict[str, float]:
    """Requests/s and latency percentiles from wrk at concurrency 16."""
    script = str(ROOT / "bench" / "post.lua")
    output = subprocess.run(["wrk", "-t2", "-c16", f"-d{seconds}s", "--latency", "-s", script, url],
                            capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    found = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", output, re.MULTILINE))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {"rps": rps, "p50_ms": _ms(found["50"]), "p99_ms": _ms(found["99"]),
            "errors": int(non_2xx.group(1)) if non_2xx else 0}


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return round(float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit], 3)


def http_invoke(runner: RunnerEngine, seconds: int, latency_count: int, rounds: int) -> dict[str, Any]:
    """Our POST /functions/noop/invocations against a bare enqueue route, same gunicorn settings.

    `rounds` turns of `seconds` each, the two apps alternating (who goes first swaps every turn,
    so a drift of the machine's speed falls on both), after a warm-up turn each that does not
    count; each app's median turn is its figure.
    """
    figures: dict[str, Any] = {}
    ours_port, bare_port = free_port(), free_port()
    runner.connection.flushall()
    runner.backends.store.migrate()
    ours = gunicorn("api:create_app()", runner.env(), ours_port, runner.workdir)
    bare = gunicorn("bench.bare_app:create_app()", runner.env(), bare_port, runner.workdir)
    urls = {"runner": f"http://127.0.0.1:{ours_port}/functions/noop/invocations",
            "bare-enqueue": f"http://127.0.0.1:{bare_port}/enqueue"}
    try:
        if shutil.which("wrk"):
            turns: dict[str, list[dict[str, float]]] = {name: [] for name in urls}
            for url in urls.values():  # not measured: each app's first requests (imports, connections, caches)
                wrk(url, WARM_UP_SECONDS)
            for index in range(rounds):
                for name in (list(urls) if index % 2 == 0 else list(reversed(urls))):
                    turns[name].append(wrk(urls[name], seconds))
            for name, measured in turns.items():
                figures[name] = median_round(measured, lambda turn: turn["rps"])
            figures["rps_rounds"] = {name: [turn["rps"] for turn in measured] for name, measured in turns.items()}
        runner.connection.flushall()
        runner.start(2)
        session = requests.Session()
        url = f"http://127.0.0.1:{ours_port}/functions/noop/invocations?wait=10"
        samples = []
        for index in range(latency_count + 10):
            started = time.perf_counter()
            response = session.post(url, json={})
            elapsed = time.perf_counter() - started
            if response.status_code != 200:
                raise RuntimeError(f"?wait= answered {response.status_code}: {response.text}")
            if index >= 10:
                samples.append(elapsed)
        figures["runner-http-wait-latency"] = percentiles(samples)
    finally:
        runner.stop()
        for process in (ours, bare):
            process.terminate()
            process.wait(15)
    print(f"  http {figures}", flush=True)
    return figures


# Jobs a worker runs before its idle RSS is taken: its first jobs import the function's modules, open
# the store and fill caches (+2.9 MB in the first 100, 2026-12-07), which is not growth from jobs run.
WARM_UP_JOBS = 100


def memory(runner: RunnerEngine, jobs: int) -> dict[str, int]:
    """RSS of a worker just started (`cold_kib`), idle after WARM_UP_JOBS (`idle_kib`), then after `jobs` more."""

    def measure(engine: Engine) -> dict[str, int]:
        pid = engine.worker_pids()[0]
        cold = rss_kib(pid)
        engine.run_batch(WARM_UP_JOBS, "noop")
        idle = rss_kib(pid)
        engine.run_batch(jobs, "noop")
        return {"cold_kib": cold, "idle_kib": idle, "after_kib": rss_kib(pid), "jobs": jobs}

    figures: dict[str, int] = with_engine(runner, 1, measure)
    print(f"  memory {figures}", flush=True)
    return figures


def scaling(runner: RunnerEngine, jobs: int) -> dict[str, float]:
    """Runner jobs/s with 1, 2 and 4 worker processes, draining a filled queue (see drain_rate)."""
    curve = {}
    for workers in (1, 2, 4):
        rate = drain_rate(runner, workers, jobs)
        curve[str(workers)] = round(rate, 1)
        print(f"  scaling {workers} workers {curve[str(workers)]:.1f} jobs/s", flush=True)
    return curve


def ratio(ours: float, theirs: float, higher_is_better: bool = True) -> float:
    """Our figure over theirs (>1 is better for throughput; for latency, theirs over ours)."""
    return round((ours / theirs) if higher_is_better else (theirs / ours), 2)


def main() -> None:
    """Run every measurement and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--drain-jobs", type=int, default=5000, help="jobs queued before the workers start")
    parser.add_argument("--latency", type=int, default=300)
    parser.add_argument("--http-seconds", type=int, default=10)
    parser.add_argument("--memory-jobs", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=3, help="throughput, latency and HTTP turns per engine")
    parser.add_argument("--idle-seconds", type=float, default=60.0, help="how long an idle pool's CPU is measured")
    parser.add_argument("--waiting-jobs", type=int, default=WAITING_JOBS,
                        help="100 ms jobs per batch in the waiting-jobs section (its no-op batches: --jobs)")
    parser.add_argument("--quick", action="store_true", help="small counts, to check the harness")
    parser.add_argument("--autoscale-only", action="store_true", help="only the autoscaling section")
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.latency, args.http_seconds, args.memory_jobs, args.rounds = 200, 30, 2, 300, 1
        args.drain_jobs, args.idle_seconds, args.waiting_jobs = 500, 20.0, 80
    workdir = Path(tempfile.mkdtemp(prefix="runner-bench-"))
    # The store on PostgreSQL too, started as the tests start it (tests/servers.py: fsync off).
    with EmbeddedRedis(workdir / "redis", appendonly=False) as server, PostgresServer(workdir / "postgres") as pg:
        url = server.url
        runner = RunnerEngine(url, workdir)
        if tracing_configured(runner.env()):
            raise SystemExit("tracing is on for the bench's processes: its figures are of tracing off")
        runner_pg = RunnerEngine(url, workdir, database_url=pg.create_database("runner_bench"))
        engines: list[Engine] = [runner, runner_pg, RawRQEngine(url, workdir, "rq.worker.Worker"),
                                 RawRQEngine(url, workdir, "rq.worker.SimpleWorker"), CeleryEngine(url, workdir)]
        results: dict[str, Any] = {
            "date": datetime.now(UTC).isoformat(),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
            "parameters": vars(args),
            "tracing": "off",
        }
        if not args.autoscale_only:
            print("throughput (2 worker processes)", flush=True)
            results["cpu_per_job"], results["throughput_noop_rounds"] = {}, {}
            results["throughput_noop"] = throughput(engines, args.jobs, "noop", server.pid or 0, args.rounds,
                                                    results["cpu_per_job"], results["throughput_noop_rounds"])
            results["throughput_calc"] = throughput(engines, args.jobs, "calc", server.pid or 0, args.rounds)
            print(f"drain ({args.drain_jobs} jobs queued first, then 2 worker processes)", flush=True)
            results["drain_rounds"] = {}
            results["drain"] = drain(engines, args.drain_jobs, args.rounds, results["drain_rounds"])
            print(f"latency ({args.latency} sequential jobs, in {args.rounds} turns)", flush=True)
            results["latency"] = latency(engines, args.latency, args.rounds)
            print("http invoke (concurrency 16)", flush=True)
            results["http"] = http_invoke(runner, args.http_seconds, args.latency, args.rounds)
            results["memory"] = memory(runner, args.memory_jobs)
            results["scaling"] = scaling(runner, args.drain_jobs)
        print("autoscaling (a pool of 0..max(2, cores) against warm and fixed workers)", flush=True)
        results["autoscale"] = autoscaling(url, workdir, jobs=args.jobs, rounds=args.rounds,
                                           idle_seconds=args.idle_seconds, percentiles=percentiles)
        if not args.autoscale_only:
            from bench.waiting import waiting_section  # it builds on this module's helpers

            results["waiting"] = waiting_section(url, workdir, noop_jobs=args.jobs, waiting_jobs=args.waiting_jobs,
                                                 rounds=args.rounds)
    if not args.autoscale_only:
        from bench.replication import measure_wait  # it builds on this module's helpers

        print("replication: invoke with RUNNER_REDIS_MIN_REPLICAS 0 and 1 (Redis WAIT), on a Sentinel URL", flush=True)
        results["replication"] = measure_wait(workdir / "replication", requests_per_turn=args.latency,
                                              seconds=args.http_seconds, rounds=args.rounds)
        results["ratios"] = ratios(results)
        results["targets"] = targets(results["ratios"])
        print_table(results)
    print_autoscale(results["autoscale"])
    if "waiting" in results:
        from bench.waiting import print_waiting

        print_waiting(results["waiting"])
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    suffix = "-autoscale" if args.autoscale_only else ""  # a partial run keeps the day's full one
    target = RESULTS_DIR / f"{datetime.now(UTC).strftime('%Y-%m-%d')}{suffix}.json"
    target.write_text(json.dumps(results, indent=2))
    print(f"\nwritten {target.relative_to(ROOT)}")
    shutil.rmtree(workdir, ignore_errors=True)


def ratios(results: dict[str, Any]) -> dict[str, float]:
    """The ratios the targets are stated in."""
    tp, lat, http = results["throughput_noop"], results["latency"], results["http"]
    out = {
        "throughput_vs_celery": ratio(tp["runner"], tp["celery-prefork"]),
        "throughput_vs_rq_simpleworker": ratio(tp["runner"], tp["rq-simpleworker"]),
        "throughput_vs_rq_worker": ratio(tp["runner"], tp["rq-worker"]),
        "drain_vs_celery": ratio(results["drain"]["runner"], results["drain"]["celery-prefork"]),
        "drain_vs_rq_simpleworker": ratio(results["drain"]["runner"], results["drain"]["rq-simpleworker"]),
        "latency_p50_vs_celery": ratio(lat["runner"]["p50_ms"], lat["celery-prefork"]["p50_ms"], False),
        "postgres_throughput_vs_celery": ratio(tp["runner-postgres"], tp["celery-prefork"]),
        "postgres_drain_vs_celery": ratio(results["drain"]["runner-postgres"], results["drain"]["celery-prefork"]),
        "postgres_latency_p50_vs_celery": ratio(lat["runner-postgres"]["p50_ms"], lat["celery-prefork"]["p50_ms"],
                                                False),
        "memory_growth": round(results["memory"]["after_kib"] / max(1, results["memory"]["idle_kib"]) - 1, 3),
    }
    if "runner" in http and "bare-enqueue" in http:
        out["http_rps_vs_bare"] = ratio(http["runner"]["rps"], http["bare-enqueue"]["rps"])
        out["http_p99_over_p50"] = round(http["runner"]["p99_ms"] / max(http["runner"]["p50_ms"], 0.001), 2)
    return out


# The targets the core keeps (issue "One journal, one seam to RQ"), then earlier ones: (comparison, bound).
TARGETS = {
    "throughput_vs_celery": (">=", 1.5),
    "throughput_vs_rq_simpleworker": (">=", 2.0),
    "latency_p50_vs_celery": (">=", 1.0),
    "http_rps_vs_bare": (">=", 0.8),
    "drain_vs_celery": (">=", 1.2),
    "drain_vs_rq_simpleworker": (">=", 2.0),
    "http_p99_over_p50": ("<=", 3.0),
    # The store on PostgreSQL (issue "Cost as the work grows").
    "postgres_throughput_vs_celery": (">=", 1.3),
    "postgres_latency_p50_vs_celery": (">=", 1.0),
    "memory_growth": ("<", 0.10),
}


def targets(figures: dict[str, float]) -> dict[str, str]:
    """Each target, met or not, in words."""
    verdicts = {}
    for name, (comparison, bound) in TARGETS.items():
        if name not in figures:
            continue
        value = figures[name]
        met = {">=": value >= bound, "<=": value <= bound, "<": value < bound}[comparison]
        verdicts[name] = f"{name} {value} (target {comparison} {bound}): {'met' if met else 'NOT met'}"
    return verdicts


def print_table(results: dict[str, Any]) -> None:
    """A plain-text table of the run."""
    print("\n| engine (2 processes) | no-op jobs/s | drain jobs/s | calc jobs/s | latency p50 / p90 / p99 ms |")
    print("|---|---|---|---|---|")
    for name, rate in results["throughput_noop"].items():
        lat = results["latency"].get(name, {})
        calc = results["throughput_calc"].get(name, "")
        drained = results["drain"].get(name, "")
        latencies = f"{lat.get('p50_ms')} / {lat.get('p90_ms')} / {lat.get('p99_ms')}"
        print(f"| {name} | {rate} | {drained} | {calc} | {latencies} |")
    http = results["http"]
    for name in ("runner", "bare-enqueue"):
        if name in http:
            figures = http[name]
            print(f"HTTP {name}: {figures['rps']} req/s, p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms")
    print(f"HTTP ?wait= latency: {http.get('runner-http-wait-latency')}")
    print(f"memory: {results['memory']}  scaling: {results['scaling']}")
    print(f"invoke with 0 / 1 replicas acknowledging (WAIT): {json.dumps(results.get('replication'))}")
    print("CPU per no-op job, ms (workers / this client: enqueue and waiting / Redis):")
    for name, used in results.get("cpu_per_job", {}).items():
        print(f"  {name}: {used['workers_ms']} / {used['client_ms']} / {used['redis_ms']}")
    print(f"ratios: {json.dumps(results['ratios'])}")
    for verdict in results["targets"].values():
        print(f"  {verdict}")


def print_autoscale(figures: dict[str, Any]) -> None:
    """The autoscaling section, with its targets."""
    cold, throughput = figures["cold_start"], figures["throughput"]
    print(f"\nautoscaling, pool 0..{figures['max']}:")
    print(f"  cold start from zero p50 / p99: {cold['cold']['p50_ms']} / {cold['cold']['p99_ms']} ms; warm worker: "
          f"{cold['warm']['p50_ms']} / {cold['warm']['p99_ms']} ms; p50 difference {cold['cold_minus_warm_p50_ms']} ms "
          f"(target <= 100): {'met' if cold['cold_minus_warm_p50_ms'] <= 100 else 'NOT met'}")
    print(f"  burst of 200 jobs: {figures['max']} workers busy after {figures['burst_to_max_busy_seconds']} s")
    fixed = f"{throughput['autoscaled']} / {throughput['fixed']} jobs/s = {throughput['ratio']}"
    print(f"  throughput autoscaled / fixed {figures['max']}: {fixed} (target >= 0.95): "
          f"{'met' if throughput['ratio'] >= 0.95 else 'NOT met'}")
    print(f"  idle pool at zero: {figures['idle_cpu_seconds']} CPU s over {figures['idle_seconds']:g} s")


if __name__ == "__main__":
    main()
