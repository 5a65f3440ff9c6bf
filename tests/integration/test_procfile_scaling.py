"""The Procfile under honcho: `-c worker=3` gives three workers that share the jobs, and SIGTERM stops them all."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import uuid
from pathlib import Path

import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families
from rq import Worker

from tests.integration.conftest import (
    TERMINAL_STATUSES,
    ProcessSet,
    http_ready,
    run_migrate,
    stack_environment,
    wait_until,
)
from tests.servers import PostgresServer, RedisServer, free_port

HONCHO = str(Path(sys.executable).parent / "honcho")
WORKERS = 3
JOBS = 30
STOP_TIMEOUT = 20.0


@pytest.fixture(autouse=True)
def _honcho_installed() -> None:
    if not Path(HONCHO).exists():
        pytest.fail(f"honcho is not installed in this virtualenv ({HONCHO}); install requirements.txt")


def process_tree(root: int) -> set[tuple[int, str]]:
    """(pid, start time) of `root` and all its descendants, from /proc (start time guards against reuse)."""
    parents: dict[int, list[tuple[int, str]]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            parents.setdefault(int(fields[1]), []).append((int(entry.name), fields[19]))
    found: set[tuple[int, str]] = set()
    pending = [root]
    while pending:
        for child in parents.get(pending.pop(), []):
            found.add(child)
            pending.append(child[0])
    return found


def still_running(processes: set[tuple[int, str]]) -> set[tuple[int, str]]:
    """Those of `processes` that still exist (same pid and start time) and are not zombies."""
    alive = set()
    for pid, started in processes:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            if fields[19] == started and fields[0] != "Z":
                alive.add((pid, started))
    return alive


def test_three_procfile_workers_share_the_jobs_and_stop_with_honcho(
    redis_server: RedisServer, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    redis.Redis.from_url(redis_server.url).flushall()
    database_url = postgres_server.create_database(f"runner_honcho_{uuid.uuid4().hex[:12]}")
    env = stack_environment(redis_url=redis_server.url, database_url=database_url, data_dir=tmp_path / "data")
    # The Procfile says `python` and `gunicorn`: this virtualenv's, as on a platform's PATH.
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", WEB_CONCURRENCY="1")
    run_migrate(env)  # the Procfile's `release` step, which a platform runs before the processes
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    connection = redis.Redis.from_url(redis_server.url)
    processes = ProcessSet(tmp_path / "logs")
    honcho = processes.start(
        "honcho", [HONCHO, "start", "-f", "Procfile", "-p", str(port), "-c", f"worker={WORKERS}", "web", "worker"], env
    )
    started: set[tuple[int, str]] = set()
    try:
        wait_until(lambda: http_ready(f"{url}/readyz") and len(Worker.all(connection=connection)) == WORKERS,
                   30, f"web and {WORKERS} workers from the Procfile")
        names = {worker.name for worker in Worker.all(connection=connection)}
        started = process_tree(honcho.pid)
        with requests.Session() as http:
            ids = [
                http.post(f"{url}/functions/simple_calculation/invocations", json={"expression": f"{n}*{n}"},
                          timeout=10).json()["id"]
                for n in range(JOBS)
            ]

            def all_ended() -> bool:
                return all(http.get(f"{url}/jobs/{job_id}", timeout=10).json()["status"] in TERMINAL_STATUSES
                           for job_id in ids)

            wait_until(all_ended, 30, f"{JOBS} jobs to end", interval=0.2)
            views = [http.get(f"{url}/jobs/{job_id}", timeout=10).json() for job_id in ids]
            metrics = {sample.name + str(sorted(sample.labels.items())): sample.value
                       for family in text_string_to_metric_families(http.get(f"{url}/metrics", timeout=10).text)
                       for sample in family.samples}
        assert [view["result"]["result"] for view in views] == [n * n for n in range(JOBS)]
        ran_on = [connection.hget(f"rq:job:{job_id}", "worker_name") for job_id in ids]
        per_worker = {name: ran_on.count(name.encode()) for name in names}
        assert sum(per_worker.values()) == JOBS, per_worker
        assert sum(1 for count in per_worker.values() if count) >= 2, f"jobs were not shared: {per_worker}"
        assert metrics["runner_workers[]"] == WORKERS
        assert metrics["runner_invocations_total[('function', 'simple_calculation'), ('outcome', 'finished')]"] == JOBS

        honcho.signal(signal.SIGTERM)
        assert honcho.wait(STOP_TIMEOUT) is not None, "honcho did not stop after SIGTERM"
        wait_until(lambda: not still_running(started), 10, "every process honcho started to exit")
        # A warm shutdown unregisters each worker: none is left behind for the dashboard or /metrics.
        assert Worker.all(connection=connection) == []
        print(f"jobs per worker: {sorted(per_worker.values())}")
    finally:
        for pid, _ in still_running(started):  # only what this test started, by pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        processes.stop()
        connection.close()
