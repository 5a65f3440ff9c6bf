"""A worker without Redis: one log line per retry, with backoff, the masked URL and "Check REDIS_URL".

A real `python -m runner worker` and a real redis-server that the test stops and starts. Redis
away at start, while the worker is idle, and while it runs a job: over a fixed window the log
holds one line per retry of the schedule (1 s doubling; up to 30 s idle, up to the heartbeat
interval while a job runs) and nothing else, no traceback, no new work process; once Redis is
back the worker takes jobs again by itself.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rq.job import Job
from rq.serializers import JSONSerializer

from runner.authoring.registry import Registry
from runner.config import Settings
from runner.rq_seam.job_reads import job_status
from runner.services.backends import Backends, open_backends
from runner.services.invocation import enqueue_invocation
from runner.worker.redis_outage import FIRST_RETRY_SECONDS, MAX_RETRY_SECONDS
from tests.integration.conftest import (
    ManagedProcess,
    ProcessSet,
    require_service,
    run_migrate,
    stack_environment,
    wait_until,
)
from tests.servers import RedisServer, find_redis_server

PASSWORD = "s3cret-in-the-url"
# How long each test watches the log of a worker that cannot reach Redis.
WINDOW_SECONDS = 8.0
# A job's heartbeat interval with the default dead-worker window (15 s): the backoff's bound while a job runs.
HEARTBEAT_SECONDS = 5.0
STARTED = re.compile(r"work process \d+ \(\w+\) started")
RETRY = re.compile(r"Retrying in (\d+(?:\.\d+)?) s")


def retry_times(window: float, bound: float) -> list[float]:
    """When retries come (seconds after the first failure) within `window`, by the backoff schedule."""
    times, at, delay = [0.0], 0.0, FIRST_RETRY_SECONDS
    while at + min(delay, bound) <= window:
        at += min(delay, bound)
        times.append(at)
        delay *= 2
    return times


class Worker:
    """One `python -m runner worker` on a Redis URL with a password, and a way to read its log."""

    def __init__(self, redis: RedisServer, directory: Path) -> None:
        self.url = redis.url.replace("redis://", f"redis://:{PASSWORD}@")
        self.masked = redis.url.replace("redis://", "redis://:***@")
        self.env = stack_environment(redis_url=self.url, database_url=f"sqlite:///{directory / 'runner.db'}",
                                     data_dir=directory / "data")
        self.processes = ProcessSet(directory / "logs")
        self.process: ManagedProcess | None = None
        self.settings = Settings.from_env(self.env)
        self.registry = Registry.discover(self.settings.functions_package)
        run_migrate(self.env)  # before the test enqueues; the worker migrates too, later

    def start(self) -> None:
        self.process = self.processes.start_worker(self.env, "worker")

    def log(self) -> str:
        assert self.process is not None
        return self.process.log_path.read_text(errors="replace")

    def backends(self) -> Backends:
        return open_backends(self.settings)

    def run_job(self, name: str, payload: dict[str, str], timeout: float) -> Job:
        """Enqueue an invocation of `name` and wait until it has ended; the RQ job."""
        backends = self.backends()
        row = enqueue_invocation(self.registry.get(name), payload, backends)
        job = Job(row.id, connection=backends.connection, serializer=JSONSerializer)
        wait_until(lambda: job_status(job.refresh() or job) in ("finished", "failed"), timeout, f"{name} to end")
        return job

    def outage_lines(self, window: float) -> list[str]:
        """The log's lines from its first outage line on, `window` seconds after that line appeared."""
        wait_until(lambda: "is unavailable" in self.log(), 20, "the worker to say Redis is unavailable")
        time.sleep(window)
        text = self.log()
        first = text.index("is unavailable")
        return text[text.rfind("\n", 0, first) + 1:].splitlines()

    def check_outage_lines(self, lines: list[str], bound: float) -> None:
        """One line per retry of the schedule, each naming the masked URL and REDIS_URL, with the backoff."""
        expected = retry_times(WINDOW_SECONDS, bound)
        print(f"\n{len(lines)} log lines in {WINDOW_SECONDS:g} s without Redis (schedule: {expected}):")
        print("\n".join(lines))
        assert len(expected) - 1 <= len(lines) <= len(expected) + 1, lines
        for line in lines:
            assert f"Redis at {self.masked} is unavailable" in line and "Check REDIS_URL." in line, line
        delays = [float(RETRY.findall(line)[0]) for line in lines]
        assert delays == [min(FIRST_RETRY_SECONDS * 2 ** n, bound) for n in range(len(lines))]

    def check_whole_log(self, work_processes: int = 1) -> None:
        text = self.log()
        assert "Traceback" not in text
        assert PASSWORD not in text
        assert len(STARTED.findall(text)) == work_processes, STARTED.findall(text)
        assert "answers again" in text

    def stop(self) -> None:
        self.processes.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of its own (append-only, so that a restart keeps the jobs), not started."""
    require_service(find_redis_server(), "redis-server")
    server = RedisServer(tmp_path / "redis", appendonly=True)
    yield server
    server.close()


@pytest.fixture
def worker(redis_server: RedisServer, tmp_path: Path) -> Iterator[Worker]:
    started = Worker(redis_server, tmp_path)
    yield started
    started.stop()


def test_a_worker_started_without_redis_waits_for_it_and_starts_one_work_process(
    redis_server: RedisServer, worker: Worker
) -> None:
    worker.start()
    lines = worker.outage_lines(WINDOW_SECONDS)
    assert not STARTED.search(worker.log())  # no work process while Redis is away
    worker.check_outage_lines(lines, MAX_RETRY_SECONDS)
    redis_server.start()
    job = worker.run_job("simple_calculation", {"expression": "6*7"}, timeout=MAX_RETRY_SECONDS + 10)
    assert job_status(job) == "finished"
    worker.check_whole_log()


def test_an_idle_worker_keeps_its_work_process_while_redis_is_away(redis_server: RedisServer, worker: Worker) -> None:
    redis_server.start()
    worker.start()
    assert job_status(worker.run_job("simple_calculation", {"expression": "1+1"}, timeout=20)) == "finished"
    redis_server.stop()
    worker.check_outage_lines(worker.outage_lines(WINDOW_SECONDS), MAX_RETRY_SECONDS)
    redis_server.start()
    job = worker.run_job("simple_calculation", {"expression": "6*7"}, timeout=MAX_RETRY_SECONDS + 10)
    assert job_status(job) == "finished"
    worker.check_whole_log()


def test_a_busy_worker_keeps_its_job_while_redis_is_away(redis_server: RedisServer, worker: Worker,
                                                         tmp_path: Path) -> None:
    redis_server.start()
    worker.start()
    backends = worker.backends()
    gate = tmp_path / "gate"
    row = enqueue_invocation(worker.registry.get("gated_progress"), {"gate": str(gate)}, backends)
    job = Job(row.id, connection=backends.connection, serializer=JSONSerializer)
    wait_until(lambda: (job.refresh() or job).meta.get("progress", {}).get("percent") == 50, 20, "the job to run")
    redis_server.stop()
    worker.check_outage_lines(worker.outage_lines(WINDOW_SECONDS), HEARTBEAT_SECONDS)
    redis_server.start()
    gate.touch()
    wait_until(lambda: job_status(job.refresh() or job) == "finished", HEARTBEAT_SECONDS + 15, "the job to finish")
    assert job.meta["attempts"] == 1  # it ran through the outage: not re-run as if its worker had died
    worker.check_whole_log()
