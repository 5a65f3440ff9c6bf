"""Integration fixtures: real redis-server, PostgreSQL, gunicorn and `python -m runner worker` processes.

``stack`` runs every test of a module against SQLite and against PostgreSQL; ``sqlite_stack`` is
one SQLite stack for tests where the backend does not matter. ``spawn`` starts ad-hoc processes
(e.g. a gunicorn pointed at a dead Redis). When a test fails, the tail of every log of the
processes it used is attached to its report.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import sqlalchemy as sa
from rq import Worker

from runner.redis_connection import connect_redis
from runner.store.models import InvocationRecord
from tests.history import ReadingStore
from tests.llm_server import FakeLLMServer
from tests.servers import PostgresServer, RedisServer, find_postgres_bin, find_redis_server, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
FUNCTIONS_PACKAGES = "functions,tests.integration.probe_functions"
STACK_WORKERS = 2
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
LOG_TAIL_CHARS = 3000
HTTP_TIMEOUT = 15.0
ROW_TIMEOUT = 10.0
TERMINAL_STATUSES = frozenset({"finished", "failed", "canceled", "stopped"})
# The slow LLM server's wait before each chunk: a 5-word prompt's answer takes 1 s to stream.
SLOW_CHUNK_DELAY = 0.2
# Variables of the outer environment that would leak into the processes under test.
SCRUBBED_VARIABLES = frozenset({"REDIS_URL", "DATABASE_URL", "WEB_CONCURRENCY", "PORT", "HOST"})


def require_service(found: object, what: str) -> None:
    """Skip when `what` is missing, unless RUNNER_REQUIRE_SERVICES=1 (then fail)."""
    if found is not None:
        return
    if os.environ.get("RUNNER_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{what} not found but RUNNER_REQUIRE_SERVICES=1")
    pytest.skip(f"{what} not installed")


def base_environment(**overrides: str) -> dict[str, str]:
    """The test process's environment without runner settings, plus `overrides`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in SCRUBBED_VARIABLES and not key.startswith("RUNNER_")
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


def stack_environment(*, redis_url: str, database_url: str, data_dir: Path) -> dict[str, str]:
    """The environment of the web and worker processes of a stack."""
    return base_environment(
        REDIS_URL=redis_url,
        DATABASE_URL=database_url,
        RUNNER_DATA_DIR=str(data_dir),
        RUNNER_FUNCTIONS_PACKAGE=FUNCTIONS_PACKAGES,
    )


def sqlite_url(directory: Path) -> str:
    """A SQLite database file in `directory`."""
    return f"sqlite:///{directory / 'runner.db'}"


def log_tail(path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    """The last `chars` characters of a log file."""
    try:
        return path.read_bytes()[-chars:].decode("utf-8", errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"


def run_migrate(env: Mapping[str, str]) -> None:
    """`python -m runner migrate`, failing the test with its output when it fails."""
    result = subprocess.run(
        [PYTHON, "-m", "runner", "migrate"],
        cwd=REPO_ROOT,
        env=dict(env),
        capture_output=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr).decode("utf-8", errors="replace")
        pytest.fail(f"`python -m runner migrate` failed ({result.returncode}):\n{output[-LOG_TAIL_CHARS:]}")


class ManagedProcess:
    """A child process in its own session, its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=REPO_ROOT,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        """The process id."""
        return self.proc.pid

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc.poll() is None

    def signal(self, signum: int) -> None:
        """Send `signum` to the process (not its group)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if it is still running after `timeout` seconds."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill_group(self) -> None:
        """SIGKILL whatever is left of the process group (work horses, schedulers, gunicorn workers)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.wait(STOP_TIMEOUT)

    def log_tail(self) -> str:
        """The end of its log."""
        return log_tail(self.log_path)


class ProcessSet:
    """Processes started together and stopped together (SIGTERM, wait, SIGKILL leftovers)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.processes: list[ManagedProcess] = []

    def start(self, name: str, argv: list[str], env: Mapping[str, str]) -> ManagedProcess:
        """Start a process logging to <log_dir>/<name>.log."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        process = ManagedProcess(name, argv, env, self.log_dir / f"{name}.log")
        self.processes.append(process)
        return process

    def start_web(self, env: Mapping[str, str], port: int, name: str = "web", workers: int = 2) -> ManagedProcess:
        """gunicorn with the project's gunicorn.conf.py, 2 workers (or `workers`), on 127.0.0.1:port."""
        argv = [PYTHON, "-m", "gunicorn", "api:create_app()", "--bind", f"127.0.0.1:{port}", "--workers", str(workers)]
        return self.start(name, argv, env)

    def start_worker(self, env: Mapping[str, str], name: str) -> ManagedProcess:
        """`python -m runner worker` on every function's queue."""
        return self.start(name, [PYTHON, "-m", "runner", "worker"], env)

    def check_alive(self) -> None:
        """Fail with the log of the first process that has exited."""
        for process in self.processes:
            if not process.alive():
                pytest.fail(f"{process.name} exited with code {process.proc.returncode}:\n{process.log_tail()}")

    def stop(self) -> None:
        """SIGTERM all, wait, then SIGKILL every leftover process group."""
        for process in self.processes:
            process.signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for process in self.processes:
            process.wait(max(0.1, deadline - time.monotonic()))
        for process in self.processes:
            process.kill_group()

    def log_report(self) -> str:
        """The tail of every log, for a failed test's report."""
        return "\n".join(f"----- {p.name} ({p.log_path}) -----\n{p.log_tail()}" for p in self.processes)


def work_processes(parent: int) -> list[int]:
    """The live direct children of `parent` (a pool's work processes), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError):
            state, ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            if int(ppid) == parent and state != "Z":
                found.append(int(entry.name))
    return found


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> float:
    """Poll `condition` until it holds and return how long that took; fail naming `what` after `timeout` seconds."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - started


def http_ready(url: str, api_key: str | None = None) -> bool:
    """True once GET url answers 200 (sending `api_key` as a bearer token when given)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        return requests.get(url, timeout=2, headers=headers).status_code == 200
    except requests.RequestException:
        return False


class Stack:
    """A running system: gunicorn + workers on a real Redis and a real database, driven over HTTP."""

    def __init__(
        self,
        backend: str,
        redis_url: str,
        database_url: str,
        directory: Path,
        *,
        extra_env: Mapping[str, str] | None = None,
        workers: int = STACK_WORKERS,
        web_workers: int = 2,
    ) -> None:
        self.backend = backend
        self.database_url = database_url
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.redis = connect_redis(redis_url, socket_timeout=5)  # REDIS_URL may name sentinels
        self.store = ReadingStore(database_url)
        self.store.connection = self.redis
        self.env = {
            **stack_environment(redis_url=redis_url, database_url=database_url, data_dir=directory / "data"),
            **(extra_env or {}),
        }
        self.processes = ProcessSet(directory / "logs")
        self.http = requests.Session()
        self.workers = workers
        self.web_workers = web_workers

    def start(self) -> None:
        """Migrate, start web + workers, and wait until /readyz is 200 and the workers registered."""
        run_migrate(self.env)
        self.processes.start_web(self.env, self.port, workers=self.web_workers)
        for number in range(1, self.workers + 1):
            self.processes.start_worker(self.env, f"worker.{number}")
        deadline = time.monotonic() + READY_TIMEOUT
        api_key = (self.env.get("RUNNER_API_KEYS") or "").split(",")[0].strip() or None
        while not (http_ready(f"{self.url}/readyz", api_key) and self.worker_count() == self.workers):
            self.processes.check_alive()
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{self.backend} stack not ready after {READY_TIMEOUT:g} s "
                    f"({self.worker_count()} workers registered):\n{self.log_report()}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop every process and release connections."""
        self.processes.stop()
        self.http.close()
        self.redis.close()
        self.store.engine.dispose()

    def worker_count(self) -> int:
        """How many RQ workers Redis knows of."""
        return len(Worker.all(connection=self.redis))

    def log_report(self) -> str:
        """The tail of every process log."""
        return self.processes.log_report()

    def post(self, path: str, json: Any = None, **kwargs: Any) -> requests.Response:
        """POST to the API."""
        kwargs.setdefault("timeout", HTTP_TIMEOUT)
        return self.http.post(f"{self.url}{path}", json=json, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        """GET from the API."""
        kwargs.setdefault("timeout", HTTP_TIMEOUT)
        return self.http.get(f"{self.url}{path}", **kwargs)

    def invoke(self, name: str, payload: Any, **params: Any) -> requests.Response:
        """POST /functions/<name>/invocations with `payload` as JSON and `params` as the query."""
        return self.post(f"/functions/{name}/invocations", json=payload, params=params)

    def job(self, job_id: str) -> dict[str, Any]:
        """GET /jobs/<id>, which must answer 200."""
        response = self.get(f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        view: dict[str, Any] = response.json()
        return view

    def wait_for(
        self, job_id: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15.0
    ) -> dict[str, Any]:
        """Poll GET /jobs/<id> until `predicate(view)` holds; return that view."""
        deadline = time.monotonic() + timeout
        while True:
            view = self.job(job_id)
            if predicate(view):
                return view
            if time.monotonic() > deadline:
                pytest.fail(f"job {job_id}: condition not met within {timeout:g} s; last view: {view}")
            time.sleep(0.05)

    def wait_until_terminal(self, job_id: str, timeout: float = 15.0) -> dict[str, Any]:
        """Poll until the job has ended."""
        return self.wait_for(job_id, lambda view: view["status"] in TERMINAL_STATUSES, timeout)

    def wait_for_row(
        self, job_id: str, predicate: Callable[[InvocationRecord], bool], timeout: float = ROW_TIMEOUT
    ) -> InvocationRecord:
        """Poll the store until the job's row satisfies `predicate` (the worker writes it just after Redis)."""
        deadline = time.monotonic() + timeout
        while True:
            row = self.store.get(job_id)
            if row is not None and predicate(row):
                return row
            if time.monotonic() > deadline:
                described = (
                    None if row is None else {c: getattr(row, c) for c in ("status", "progress_percent", "attempts")}
                )
                pytest.fail(f"job {job_id}: store row never matched within {timeout:g} s; last row: {described}")
            time.sleep(0.05)

    def row_count(self) -> int:
        """How many invocation rows the store holds (what waits in the journal applied first)."""
        self.store.get("")
        with self.store.session() as session:
            return int(session.scalar(sa.select(sa.func.count()).select_from(InvocationRecord)) or 0)

    def job_keys(self) -> set[bytes]:
        """Every RQ job hash in Redis."""
        return set(self.redis.scan_iter(match="rq:job:*"))


def build_stack(
    backend: str,
    redis_server: RedisServer,
    directory: Path,
    postgres: PostgresServer | None,
    extra_env: Mapping[str, str] | None = None,
    workers: int = STACK_WORKERS,
    web_workers: int = 2,
) -> Stack:
    """Flush Redis, make a fresh database and start a stack on them (the caller stops it)."""
    redis.Redis.from_url(redis_server.url).flushall()
    if backend == "postgresql":
        assert postgres is not None
        database_url = postgres.create_database(f"runner_it_{uuid.uuid4().hex[:12]}")
    else:
        database_url = sqlite_url(directory)
    stack = Stack(backend, redis_server.url, database_url, directory, extra_env=extra_env, workers=workers,
                  web_workers=web_workers)
    try:
        stack.start()
    except BaseException:
        stack.stop()
        raise
    return stack


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the session (stacks FLUSHALL it when they start)."""
    require_service(find_redis_server(), "redis-server")
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """One real PostgreSQL cluster for the session (each stack creates its own database)."""
    require_service(find_postgres_bin(), "PostgreSQL server binaries")
    with PostgresServer(tmp_path_factory.mktemp("postgres")) as server:
        yield server


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stack(
    request: pytest.FixtureRequest, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """A full stack per backend: the module's tests run once on SQLite and once on PostgreSQL."""
    backend: str = request.param
    postgres = request.getfixturevalue("postgres_server") if backend == "postgresql" else None
    started = build_stack(backend, redis_server, tmp_path_factory.mktemp(f"stack-{backend}"), postgres)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def sqlite_stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One SQLite stack, for tests where the database backend does not matter."""
    started = build_stack("sqlite", redis_server, tmp_path_factory.mktemp("stack-sqlite"), None)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def stack_factory(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Stack]]:
    """Build SQLite stacks with extra environment (`extra_env=`), workers (`workers=`), web processes (`web_workers=`).

    One at a time: each new stack flushes Redis, and the workers of an older one would take its
    jobs, so building a stack stops the one built before. The last is stopped with the module.
    """
    current: list[Stack] = []

    def build(extra_env: Mapping[str, str] | None = None, workers: int = STACK_WORKERS, web_workers: int = 2) -> Stack:
        while current:
            current.pop().stop()
        stack = build_stack("sqlite", redis_server, tmp_path_factory.mktemp("stack-custom"), None,
                            extra_env=extra_env, workers=workers, web_workers=web_workers)
        current.append(stack)
        return stack

    yield build
    while current:
        current.pop().stop()


@pytest.fixture
def slow_llm_server() -> Iterator[FakeLLMServer]:
    """An OpenAI-compatible server on 127.0.0.1 (tests.llm_server) that waits SLOW_CHUNK_DELAY s before each
    chunk of every answer, like a model that takes its time per token; `.environment()` points workers at
    it, `.peak_in_flight` says how many answers it streamed at once."""
    with FakeLLMServer(chunk_delay=SLOW_CHUNK_DELAY) as server:
        yield server


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[ProcessSet]:
    """Start ad-hoc processes for one test; all of them are stopped afterwards."""
    processes = ProcessSet(tmp_path / "logs")
    yield processes
    processes.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On a failed test, attach the tail of the logs of the processes it used."""
    report: pytest.TestReport = yield
    if report.failed:
        for name, value in getattr(item, "funcargs", {}).items():
            log_report = getattr(value, "log_report", None)
            if callable(log_report):
                report.sections.append((f"process logs ({name})", log_report()))
    return report
