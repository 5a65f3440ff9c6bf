"""The engines the benchmark compares: our runner, raw RQ (forking and simple workers), Celery prefork.

Each engine starts its own worker processes on the benchmark's Redis, runs a batch of jobs
(time from the first enqueue to the last result) and single jobs (enqueue -> result).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rq import Queue, Worker

from runner.redis_connection import connect_redis

ROOT = Path(__file__).resolve().parent.parent
POLL_SECONDS = 0.001
# Every engine logs at one level, Celery's default: a log line per job is a deployment's choice
# (RUNNER_LOG_LEVEL=INFO, rq's default), not overhead of the engine being measured.
LOG_LEVEL = "WARNING"


def rss_kib(pid: int) -> int:
    """Resident memory of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int, with_reaped_children: bool = True) -> float:
    """CPU time (user + system) of a process, and of its children it has reaped (RQ's work horses)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if with_reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def process_tree(root: int, depth: int | None = None) -> list[int]:
    """`root` and every live process below it (only `depth` levels down, when given)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    pending = [(root, 0)]
    while pending:
        pid, level = pending.pop()
        found.append(pid)
        if depth is None or level < depth:
            pending.extend((child, level + 1) for child in children.get(pid, []))
    return found


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    """Poll `predicate` until true; RuntimeError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Engine:
    """Worker processes of one engine, and how to feed them."""

    name = "engine"
    # The kinds of job it runs (fill's `kind`): "noop" everywhere, "calc" ours, "wait" the waiting section's.
    kinds: tuple[str, ...] = ("noop",)

    def __init__(self, redis_url: str, workdir: Path) -> None:
        self.redis_url = redis_url
        self.workdir = workdir
        self.connection = connect_redis(redis_url, socket_timeout=None)  # the runner's URL forms, Sentinel's too
        self.processes: list[subprocess.Popen[bytes]] = []

    def env(self) -> dict[str, str]:
        """Environment of the worker processes."""
        # Untraced: the figures are the runner's with tracing off (OTEL_* unset; bench.run checks it).
        untraced = {name: value for name, value in os.environ.items() if not name.startswith("OTEL_")}
        return {**untraced, "PYTHONPATH": str(ROOT), "BENCH_REDIS_URL": self.redis_url, "REDIS_URL": self.redis_url}

    def spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        """Start one process, output to a log file in the work folder."""
        log = open(self.workdir / f"{self.name}-{len(self.processes)}.log", "wb")  # noqa: SIM115
        process = subprocess.Popen(argv, cwd=ROOT, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        self.processes.append(process)
        return process

    def start(self, workers: int) -> None:
        """Start `workers` worker processes and wait until they are ready."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop every process this engine started."""
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.processes.clear()

    # The Redis list this engine's workers take jobs from.
    queue_key = ""

    def fill(self, count: int, kind: str = "noop") -> Callable[[], bool]:
        """Enqueue `count` jobs; return a check that says whether all of them have their results."""
        raise NotImplementedError

    def run_batch(self, count: int, kind: str = "noop") -> float:
        """Seconds from the first enqueue until all `count` jobs have results."""
        started = time.perf_counter()
        done = self.fill(count, kind)
        wait_until(done, 600, f"{count} {self.name} jobs")
        return time.perf_counter() - started

    def one(self) -> float:
        """Seconds from enqueue to result for one job."""
        raise NotImplementedError

    def worker_pids(self) -> list[int]:
        """The worker processes' pids (parents, not work horses)."""
        return [process.pid for process in self.processes]

    def cpu_seconds(self) -> float:
        """CPU time used so far by every process this engine started, and their children."""
        return sum(cpu_seconds(pid) for process in self.processes for pid in process_tree(process.pid))


class RunnerEngine(Engine):
    """Our runner: validation, SQL row, RQ job with retry policy, store updates from the worker."""

    name = "runner"
    queue_key = "rq:queue:bench"
    kinds: tuple[str, ...] = ("noop", "calc")

    def __init__(self, redis_url: str, workdir: Path, database_url: str | None = None) -> None:
        # SQLite in the work folder unless given (`make bench` gives a PostgreSQL it started too).
        self.database_url = database_url or f"sqlite:///{workdir / 'runner.db'}"
        if database_url:
            self.name = "runner-postgres"
        super().__init__(redis_url, workdir)
        from runner.authoring.registry import Registry
        from runner.config import Settings
        from runner.services.backends import open_backends

        self.settings = Settings.from_env(self.env())
        self.registry = Registry.discover(self.settings.functions_package)
        self.backends = open_backends(self.settings)

    def env(self) -> dict[str, str]:
        return {
            **super().env(),
            "DATABASE_URL": self.database_url,
            "RUNNER_DATA_DIR": str(self.workdir / "data"),
            "RUNNER_FUNCTIONS_PACKAGE": "functions,bench.noop_functions",
            "RUNNER_LOG_LEVEL": LOG_LEVEL,
        }

    def start(self, workers: int) -> None:
        self.backends.store.migrate()
        for _ in range(workers):
            self.spawn([sys.executable, "-m", "runner", "worker", "bench", "demo_tasks"])
        wait_until(lambda: Worker.count(connection=self.connection) >= workers, 30, "runner workers")

    def _payload(self, kind: str) -> tuple[str, dict[str, Any]]:
        return ("noop", {}) if kind == "noop" else ("simple_calculation", {"expression": "(2+3)*4-5/2"})

    def fill(self, count: int, kind: str = "noop") -> Callable[[], bool]:
        import sqlalchemy as sa

        from runner.services.invocation import enqueue_invocation
        from runner.status import JobStatus
        from runner.store.models import InvocationRecord

        name, payload = self._payload(kind)
        spec = self.registry.get(name)
        with self.backends.store.session() as session:
            session.query(InvocationRecord).delete()
        for _ in range(count):
            enqueue_invocation(spec, payload, self.backends)
        table = InvocationRecord.__table__
        failed_row = sa.select(table.c.error).where(table.c.status == JobStatus.FAILED).limit(1)
        waiting = (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED, JobStatus.STARTED)
        unfinished_row = sa.select(table.c.id).where(table.c.status.in_(waiting)).limit(1)
        finished_count = sa.select(sa.func.count()).select_from(table).where(table.c.status == JobStatus.FINISHED)

        def done() -> bool:
            # Done means the SQL rows say finished: the store updates are part of the work. A failed
            # job ends the batch at once: its engine is broken, and waiting out the timeout says less.
            # Looked at every 10 ms while the workers run, so the look is light, as the other engines'
            # are (a GET per new result): two index seeks while a row waits, the count once none does.
            # (A count by status of 20,000 SQLite rows is 1.8 ms of CPU: at 100 looks a second it took
            # 8-16 % from our no-op drain, the harness's cost, not the engine's.)
            with self.backends.store.engine.connect() as connection:
                failed = connection.execute(failed_row).first()
                if failed is not None:
                    raise RuntimeError(f"{name} jobs failed on {self.name}, one with {json.dumps(failed[0])[:300]}")
                if connection.execute(unfinished_row).first() is not None:
                    return False
                return bool(connection.execute(finished_count).scalar_one() >= count)

        return done

    def worker_pids(self) -> list[int]:
        # `python -m runner worker` runs its jobs in a work process, its direct child: that one's memory counts.
        return [pid for process in self.processes for pid in process_tree(process.pid, depth=1)[1:]]

    def one(self) -> float:
        from runner.journal.reads import read_history
        from runner.services.invocation import enqueue_invocation
        from runner.services.job_views import wait_for_job

        started = time.perf_counter()
        record = enqueue_invocation(self.registry.get("noop"), {}, self.backends)
        view = wait_for_job(record.id, self.backends, 30, fresh=True)
        # The clock stops when the waiter has the result; the row is checked after, read as the API
        # reads history (the journal applied first, as every read of history does): from this
        # moment every reader sees it finished. Were it not, the time would run on until it is.
        elapsed = time.perf_counter() - started
        while (row := read_history(self.connection, self.backends.store).get(record.id)) is None \
                or row.status != "finished":
            if view.status != "finished" or time.perf_counter() - started > 30:
                raise RuntimeError(f"job ended {view.status}, its row says {row and row.status}")
            time.sleep(POLL_SECONDS)
            elapsed = time.perf_counter() - started
        return elapsed


class RawRQEngine(Engine):
    """RQ as it comes: `rq worker` with the forking Worker or the SimpleWorker."""

    queue_key = "rq:queue:bench_rq"

    def __init__(self, redis_url: str, workdir: Path, worker_class: str) -> None:
        super().__init__(redis_url, workdir)
        self.worker_class = worker_class
        self.name = "rq-" + worker_class.rsplit(".", 1)[-1].lower()
        self.queue = Queue("bench_rq", connection=self.connection)

    def start(self, workers: int) -> None:
        rq_cli = str(Path(sys.executable).parent / "rq")
        for _ in range(workers):
            self.spawn([rq_cli, "worker", "--url", self.redis_url, "-w", self.worker_class, "-q", "bench_rq",
                        "--logging_level", LOG_LEVEL])
        wait_until(lambda: Worker.count(connection=self.connection) >= workers, 30, f"{self.name} workers")

    def fill(self, count: int, kind: str = "noop") -> Callable[[], bool]:
        registry = self.queue.finished_job_registry
        before = registry.count
        for _ in range(count):
            self.queue.enqueue("bench.rq_tasks.noop")
        return lambda: bool(registry.count - before >= count)

    def one(self) -> float:
        started = time.perf_counter()
        job = self.queue.enqueue("bench.rq_tasks.noop")
        while job.get_status(refresh=True) not in ("finished", "failed"):
            time.sleep(POLL_SECONDS)
        return time.perf_counter() - started


class CeleryEngine(Engine):
    """Celery with the prefork pool, `-c` = worker count, broker and results on Redis."""

    name = "celery-prefork"
    queue_key = "bench_celery"

    def __init__(self, redis_url: str, workdir: Path) -> None:
        super().__init__(redis_url, workdir)
        os.environ["BENCH_REDIS_URL"] = redis_url
        from bench.celery_app import app, noop, wait

        self.app, self.task = app, noop
        self.tasks = {"noop": noop, "wait": wait}

    def start(self, workers: int) -> None:
        self.spawn([sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker", "-P", "prefork",
                    "-c", str(workers), "-Q", "bench_celery", "--without-gossip", "--without-mingle",
                    "--without-heartbeat", "-l", LOG_LEVEL])
        wait_until(lambda: bool(self.app.control.ping(timeout=0.5)), 60, "celery worker")

    def fill(self, count: int, kind: str = "noop") -> Callable[[], bool]:
        task = self.tasks[kind]
        results = [task.delay() for _ in range(count)]
        ready = 0

        def done() -> bool:
            nonlocal ready  # results are checked in order, each once it is ready
            while ready < count and results[ready].ready():
                ready += 1
            return ready >= count

        return done

    def one(self) -> float:
        started = time.perf_counter()
        self.task.delay().get(timeout=30)
        return time.perf_counter() - started
