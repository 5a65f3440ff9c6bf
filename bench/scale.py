"""`make bench-scale`: what the runner costs as the work grows, on PostgreSQL and a deep queue.

Starts its own Redis and PostgreSQL (tests/servers.py's PostgresServer, as the tests do: fsync
off, so writes are cheaper than on a production disk), then:

1. history: bulk-generates `--rows` rows over a year (COPY), and measures GET /jobs (first page,
   a page deep behind a cursor, filtered by function and status), GET /jobs/<id> from SQL, and
   generate_report over the whole history; prints the EXPLAIN plans of the pages;
2. retention: `python -m runner prune --older-than 30d` over that history while invocations
   stream in, against the same stream without it;
3. deep queues (bench/deep_queues.py): `--jobs` no-op jobs accepted through the API with the
   Python client, then drained, with rates at depth, Redis memory and commands per job, and the
   latency of the fleet's read paths at full depth.

Full size (1,000,000 rows, 100,000 jobs) takes about 5 minutes on a quiet 2-core machine (15 on a
busy one); `--quick` checks the harness in about 2. Writes bench/results/scale-<date>.json.
Usage: python -m bench.scale [--rows N] [--jobs N] [--samples N] [--quick] [--parts history,prune,queue]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests
import sqlalchemy as sa

from bench.deep_queues import deep_queue, worker_processes
from bench.engines import LOG_LEVEL, ROOT
from bench.run import RESULTS_DIR, gunicorn, percentiles
from runner.dev.embedded_redis import EmbeddedRedis, free_port
from runner.store.cursors import encode_cursor
from runner.store.history_summary import summarize_history
from runner.store.models import InvocationRecord
from runner.store.sql_store import Store
from tests.history import copy_rows
from tests.servers import PostgresServer

FUNCTIONS = [f"fn_{number}" for number in range(8)]
# Most jobs finish; the rest fail, are canceled or stopped (a filter on the rarest one is the hard case).
STATUSES = ["finished"] * 90 + ["failed"] * 6 + ["canceled"] * 3 + ["stopped"]
HISTORY_DAYS = 365
TARGETS = {"list_p99_ms": 20.0, "get_p99_ms": 5.0, "report_seconds": 5.0, "prune_p99_ratio": 2.0}


def history_rows(count: int, now: datetime) -> Iterator[dict[str, Any]]:
    """`count` ended jobs spread evenly over the last HISTORY_DAYS days, newest last."""
    chance = random.Random(20)
    step = timedelta(days=HISTORY_DAYS) / count
    for number in range(count):
        created = now - timedelta(days=HISTORY_DAYS) + step * number
        started = created + timedelta(milliseconds=chance.randint(1, 50))
        ended = started + timedelta(microseconds=chance.randint(100, 5_000_000))
        yield {"id": uuid.UUID(int=chance.getrandbits(128)).hex, "function": chance.choice(FUNCTIONS),
               "queue": "demo_tasks", "status": chance.choice(STATUSES), "input": {"n": number},
               "result": {"ok": True}, "attempts": 1, "progress_percent": 100, "progress_message": "finished",
               "created_at": created, "started_at": started, "ended_at": ended, "updated_at": ended}


def timed(session: requests.Session, urls: list[str], expect: int = 200) -> dict[str, float]:
    """p50/p90/p99 ms of GETs of `urls` one after another (after 20 that do not count)."""
    samples = []
    for index, url in enumerate(urls[:20] + urls):
        started = time.perf_counter()
        response = session.get(url, timeout=10)
        elapsed = time.perf_counter() - started
        if response.status_code != expect:
            raise RuntimeError(f"GET {url}: {response.status_code} {response.text[:200]}")
        if index >= 20:
            samples.append(elapsed)
    return percentiles(samples)


def explain(store: Store, **page: Any) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of the statement of a page of GET /jobs."""
    query = Store.page_query(limit=21, **page)
    compiled = query.compile(dialect=store.engine.dialect, compile_kwargs={"literal_binds": True})
    with store.engine.connect() as connection:
        lines = connection.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {compiled}").scalars()
        return "\n".join(lines)


def measure_history(store: Store, base: str, rows: int, samples: int) -> dict[str, Any]:
    """The reads of a long history: pages, one job, the report; with the plans of the pages."""
    figures: dict[str, Any] = {}
    session = requests.Session()
    with store.session() as connection:
        deep = connection.scalars(sa.select(InvocationRecord).order_by(
            InvocationRecord.created_at.desc(), InvocationRecord.id.desc()).offset(rows // 2).limit(1)).one()
        ids = list(connection.execute(sa.text(
            "SELECT id FROM invocations TABLESAMPLE SYSTEM (1) LIMIT :n"), {"n": samples}).scalars())
    cursor = encode_cursor(deep)
    pages = {
        "first_page": ({}, f"{base}/jobs?limit=20"),
        "deep_cursor_page": ({"cursor": cursor}, f"{base}/jobs?limit=20&cursor={cursor}"),
        "function_and_status": ({"function": "fn_3", "status": "failed"},
                                f"{base}/jobs?limit=20&function=fn_3&status=failed"),
        "function_and_rare_status_deep": ({"function": "fn_5", "status": "stopped", "cursor": cursor},
                                          f"{base}/jobs?limit=20&function=fn_5&status=stopped&cursor={cursor}"),
        "status_only": ({"status": "canceled"}, f"{base}/jobs?limit=20&status=canceled"),
    }
    plans = {}
    for name, (page, url) in pages.items():
        figures[f"GET /jobs {name}"] = timed(session, [url] * samples)
        plans[name] = explain(store, function=page.get("function"), status=page.get("status"),
                              cursor=page.get("cursor"))
        print(f"  GET /jobs {name}: {figures[f'GET /jobs {name}']}", flush=True)
    figures["GET /jobs/<id> (from SQL)"] = timed(session, [f"{base}/jobs/{job_id}" for job_id in ids])
    print(f"  GET /jobs/<id> from SQL: {figures['GET /jobs/<id> (from SQL)']}", flush=True)
    started = time.perf_counter()
    totals = summarize_history(store)
    figures["summary_seconds"] = round(time.perf_counter() - started, 3)
    figures["report_seconds"] = round(report_seconds(store), 3)
    figures["report_rows"] = sum(entry.count for entry in totals)
    print(f"  generate_report over {figures['report_rows']} rows: {figures['report_seconds']} s "
          f"(the SQL summary alone {figures['summary_seconds']} s)", flush=True)
    for name, plan in plans.items():
        print(f"\n  EXPLAIN {name}:\n    " + plan.replace("\n", "\n    "), flush=True)
    figures["plans"] = plans
    return figures


class ReportJob:
    """A job context for generate_report run in this process: artifacts kept in memory."""

    job_id = "bench-report"
    attempt = 1

    def __init__(self) -> None:
        self.artifacts: dict[str, int] = {}

    def report_progress(self, percent: int, message: str) -> None:
        """Progress is not measured."""

    def save_artifact(self, name: str, content: bytes, media_type: str | None) -> dict[str, Any]:
        """Keep the size only."""
        self.artifacts[name] = len(content)
        return {"name": name, "size": len(content), "media_type": media_type}


def report_seconds(store: Store) -> float:
    """Seconds of a whole generate_report (summary, CSV, chart, page) over every row of `store`."""
    from functions.generate_report import generate_report
    from runner.authoring import context
    from runner.authoring.registry import Registry
    from runner.worker.environment import WorkerEnvironment, install_environment

    install_environment(WorkerEnvironment(registry=Registry(), store=store))
    try:
        with context.running(ReportJob()):
            started = time.perf_counter()
            generate_report()
            return time.perf_counter() - started
    finally:
        install_environment(None)


def stream_latencies(base: str, stop: threading.Event, out: list[tuple[float, float]]) -> None:
    """POST no-op invocations with ?wait= one after another until `stop`: (when, seconds) each."""
    session = requests.Session()
    while not stop.is_set():
        started = time.perf_counter()
        response = session.post(f"{base}/functions/noop/invocations?wait=10", json={}, timeout=15)
        if response.status_code != 200:
            raise RuntimeError(f"invocation answered {response.status_code}: {response.text[:200]}")
        out.append((started, time.perf_counter() - started))


def measure_prune(env: dict[str, str], base: str, baseline_seconds: float) -> dict[str, Any]:
    """Invocation latency (POST ?wait=, 2 workers) alone, then while `prune --older-than 30d` runs."""
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    with worker_processes(env, 2, ["bench"]):
        streamer = threading.Thread(target=stream_latencies, args=(base, stop, samples), daemon=True)
        streamer.start()
        time.sleep(baseline_seconds)  # the baseline: invocations alone, for this long
        prune_started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "runner", "prune", "--older-than", "30d"], cwd=ROOT, env=env,
                                capture_output=True, text=True, check=True)
        prune_ended = time.perf_counter()
        stop.set()
        streamer.join(30)
    before = [seconds for at, seconds in samples if at < prune_started]
    during = [seconds for at, seconds in samples if prune_started <= at < prune_ended]
    figures = {"prune_seconds": round(prune_ended - prune_started, 1), "prune_output": result.stdout.strip(),
               "invocation_alone": percentiles(before), "invocation_during_prune": percentiles(during),
               "invocations": [len(before), len(during)]}
    figures["prune_p99_ratio"] = round(figures["invocation_during_prune"]["p99_ms"]
                                       / max(figures["invocation_alone"]["p99_ms"], 0.001), 2)
    print(f"  prune: {figures}", flush=True)
    return figures


def met(value: float, bound: float, higher_is_better: bool = False) -> str:
    """'met' or 'NOT met'."""
    return "met" if (value >= bound if higher_is_better else value <= bound) else "NOT met"


def verdicts(results: dict[str, Any]) -> list[str]:
    """Each target of the issue, met or not (of the parts that ran)."""
    history, lines = results.get("history", {}), []
    for name, figure in history.items():
        if name.startswith("GET /jobs"):
            bound = TARGETS["get_p99_ms"] if "<id>" in name else TARGETS["list_p99_ms"]
            lines.append(f"{name} p99 {figure['p99_ms']} ms (target <= {bound}): {met(figure['p99_ms'], bound)}")
    if history:
        seconds = history["report_seconds"]
        lines.append(f"generate_report {seconds} s over {history['report_rows']} rows (target <= "
                     f"{TARGETS['report_seconds']}): {met(seconds, TARGETS['report_seconds'])}")
    if "prune" in results:
        ratio = results["prune"]["prune_p99_ratio"]
        lines.append(f"invocation p99 during prune / alone {ratio} (target <= {TARGETS['prune_p99_ratio']}): "
                     f"{met(ratio, TARGETS['prune_p99_ratio'])}")
    return lines + results.get("deep_queue", {}).get("verdicts", [])


def main() -> None:
    """Run every measurement, print the figures, plans and verdicts."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="history rows generated")
    parser.add_argument("--jobs", type=int, default=100_000, help="no-op jobs queued at once")
    parser.add_argument("--samples", type=int, default=500, help="requests per read measured")
    parser.add_argument("--quick", action="store_true", help="10,000 rows and 2,000 jobs: checks the harness")
    parser.add_argument("--parts", default="history,prune,queue", help="which parts to run (comma-separated)")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.jobs, args.samples = 10_000, 2_000, 100
    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="runner-bench-scale-"))
    results: dict[str, Any] = {"date": datetime.now(UTC).isoformat(), "parameters": vars(args),
                               "machine": {"cpus": os.cpu_count()}}
    with EmbeddedRedis(workdir / "redis", appendonly=False) as redis_server, \
            PostgresServer(workdir / "postgres") as postgres:
        database_url = postgres.create_database("runner_bench")
        env = {**os.environ, "PYTHONPATH": str(ROOT), "REDIS_URL": redis_server.url, "DATABASE_URL": database_url,
               "RUNNER_DATA_DIR": str(workdir / "data"), "RUNNER_FUNCTIONS_PACKAGE": "functions,bench.noop_functions",
               "RUNNER_LOG_LEVEL": LOG_LEVEL}
        env.pop("RUNNER_HISTORY_DAYS", None)  # the bench prunes when it means to
        store = Store(database_url)
        store.migrate()
        print(f"history: generating {args.rows} rows (COPY)", flush=True)
        started = time.perf_counter()
        copy_rows(store, history_rows(args.rows, datetime.now(UTC)))
        with store.engine.begin() as connection:
            connection.exec_driver_sql("ANALYZE invocations")
        results["generate_seconds"] = round(time.perf_counter() - started, 1)
        print(f"  {args.rows} rows in {results['generate_seconds']} s", flush=True)
        port = free_port()
        web = gunicorn("api:create_app()", env, port, workdir)
        base = f"http://127.0.0.1:{port}"
        try:
            parts = args.parts.split(",")
            if "history" in parts:
                results["history"] = measure_history(store, base, args.rows, args.samples)
            if "prune" in parts:
                print("prune --older-than 30d while invocations stream (2 workers)", flush=True)
                results["prune"] = measure_prune(env, base, baseline_seconds=10 if args.quick else 20)
            if "queue" in parts:
                print(f"deep queue: {args.jobs} no-op jobs", flush=True)
                results["deep_queue"] = deep_queue(env, base, redis_server, args.jobs, args.samples)
        finally:
            web.terminate()
            web.wait(15)
            store.engine.dispose()
    results["seconds"] = round(time.monotonic() - began)
    # Other work on a shared machine stretches every wall-clock figure: say how busy it was.
    results["machine"]["load_average_at_end"] = [round(load, 1) for load in os.getloadavg()]
    results["verdicts"] = verdicts(results)
    print(f"\nbench-scale took {results['seconds']} s (load average at the end: "
          f"{results['machine']['load_average_at_end']} on {os.cpu_count()} cores)")
    for line in results["verdicts"]:
        print(f"  {line}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    target = RESULTS_DIR / f"scale-{datetime.now(UTC).strftime('%Y-%m-%d-%H%M')}.json"
    target.write_text(json.dumps(results, indent=2))
    print(f"written {target.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
