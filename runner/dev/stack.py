"""`python -m runner dev`: API, workers and (when needed) Redis on one machine, one command.

Every child runs in a process group of its own, so Ctrl-C in the terminal reaches this process
alone, and it stops each child with one signal, in order (web and workers, then Redis). When
the terminal's SIGINT reached the gunicorn workers too, their master signalled them again, and
a worker caught inside its first signal handler by the second one could deadlock on a lock of
its thread pool: gunicorn SIGKILLed it 30 s later ("Perhaps out of memory?"), in 3 stops of 7.
A second Ctrl-C stops at once: running jobs go back to their queue, uncounted. The children die
with this process if it is killed (PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType

import redis
from rq import Worker

from runner.config import Settings, masked_url
from runner.dev.embedded_redis import EmbeddedRedis
from runner.errors import BackendUnavailable
from runner.redis_connection import REDIS_ERRORS, connect_redis
from runner.services.backend_checks import describe_unavailable
from runner.store.sql_store import Store
from runner.worker.process_ties import die_with_parent

# Longer than a worker's own grace period (RUNNER_WORKER_GRACE_SECONDS, 25 s) plus its exit.
STOP_GRACE_SECONDS = 35.0
# How long the web process and the workers get to start before the dev command gives up.
READY_TIMEOUT_SECONDS = 60.0
READY_POLL_SECONDS = 0.1
GUNICORN_CONFIG = "python:api.gunicorn_config"
# Signals that stop a child at once, once it was asked to stop gracefully (SIGTERM) and a second Ctrl-C came.
WEB_FORCE_SIGNAL = signal.SIGQUIT
WORKER_FORCE_SIGNAL = signal.SIGINT


class DevError(RuntimeError):
    """The dev stack cannot start (port taken, no Redis binary, database away, ...)."""


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
        return True


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class DevStack:
    """Starts and stops every process of the dev stack."""

    def __init__(self, *, host: str, port: int, workers: int | None, data_dir: Path) -> None:
        self.host, self.port = host, port
        # None: one worker pool that autoscales from 1 to the CPU count; a number: that many fixed workers.
        self.pool_max = None if workers is not None else (os.cpu_count() or 1)
        self.workers = workers if workers is not None else 1
        self.data_dir = data_dir.resolve()
        self.redis: EmbeddedRedis | None = None
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._stopping = False
        self._stop_signals_sent = False

    @property
    def url(self) -> str:
        """Where the API answers (loopback when it listens on every interface)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def environment(self) -> dict[str, str]:
        """The environment every child gets: ours, plus the embedded defaults."""
        env = dict(os.environ)
        env.setdefault("RUNNER_DATA_DIR", str(self.data_dir))
        if not env.get("REDIS_URL"):
            self.redis = EmbeddedRedis(self.data_dir / "redis")
            self.redis.start()
            env["REDIS_URL"] = self.redis.url
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start(self) -> None:
        """Start Redis if needed, migrate the store, start web and workers, and say so once they answer."""
        if not port_is_free(self.host, self.port):
            raise DevError(f"Port {self.port} on {self.host} is in use; pick another with --port.")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = self.environment()
        settings = Settings.from_env(env)
        database_url = settings.effective_database_url
        try:
            Store(database_url).migrate()
        except BackendUnavailable as exc:
            raise DevError(describe_unavailable("database", database_url, exc.__cause__ or exc)) from None
        web = [sys.executable, "-m", "gunicorn", "api:create_app()", "--config", GUNICORN_CONFIG,
               "--bind", f"{self.host}:{self.port}", "--workers", "2"]
        self._spawn("web", web, env)
        if self.pool_max is not None:
            self._spawn("worker", [sys.executable, "-m", "runner", "worker", "--min", "1", "--max",
                                   str(self.pool_max)], env)
        else:
            for number in range(1, self.workers + 1):
                self._spawn(f"worker.{number}", [sys.executable, "-m", "runner", "worker"], env)
        if self._wait_until_serving(env["REDIS_URL"]):
            self._print_banner(env["REDIS_URL"], database_url, settings)

    def _spawn(self, name: str, command: list[str], env: dict[str, str]) -> None:
        child = subprocess.Popen(command, env=env, start_new_session=True,
                                 preexec_fn=functools.partial(die_with_parent, os.getpid()))
        self.children.append((name, child))

    def _wait_until_serving(self, redis_url: str) -> bool:
        """Block until the API answers and every worker registered; False when a stop came first."""
        connection = connect_redis(redis_url)  # REDIS_URL may name sentinels
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        try:
            while not self._stopping:
                self._check_children()
                if _answers(f"{self.url}/healthz") and self._workers_registered(connection):
                    return True
                if time.monotonic() > deadline:
                    raise DevError(f"The API and {self.workers} workers did not start within "
                                   f"{READY_TIMEOUT_SECONDS:g} s; see their output above.")
                time.sleep(READY_POLL_SECONDS)
            return False
        finally:
            connection.close()

    def _workers_registered(self, connection: redis.Redis) -> bool:
        try:
            return Worker.count(connection=connection) >= self.workers
        except REDIS_ERRORS:
            return False  # the workers say why in their own output

    def _check_children(self) -> None:
        for name, child in self.children:
            code = child.poll()
            if code is not None:
                raise DevError(f"{name} exited with code {code} while starting; see its output above.")

    def _print_banner(self, redis_url: str, database_url: str, settings: Settings) -> None:
        redis_note = f"embedded Redis at {redis_url}" if self.redis else f"Redis at {masked_url(redis_url)}"
        auth = " -H \"Authorization: Bearer $RUNNER_API_KEY\"" if settings.api_keys or settings.api_keys_file else ""
        lines = [
            "",
            f"Async Task Runner is up: {self.url}",
            f"  dashboard {self.url}/dashboard/   API docs {self.url}/docs",
            f"  {redis_note}; store {masked_url(database_url)}; {self._workers_note()}",
            f"  try: curl -s -X POST '{self.url}/functions/simple_calculation/invocations?wait=10'{auth} "
            "-H 'Content-Type: application/json' -d '{\"expression\": \"2*(3+4)\"}'",
            "  Ctrl-C stops everything.",
            "",
        ]
        print("\n".join(lines), flush=True)

    def _workers_note(self) -> str:
        if self.pool_max is None:
            return f"{self.workers} workers"
        return f"workers autoscale from 1 to {self.pool_max} (python -m runner worker --min 1 --max {self.pool_max})"

    def wait(self) -> int:
        """Block until Ctrl-C/SIGTERM or a child dies; return the exit code."""
        while not self._stopping:
            for name, child in self.children:
                code = child.poll()
                if code is not None:
                    print(f"{name} exited with code {code}; stopping the dev stack.", file=sys.stderr)
                    return 1
            time.sleep(0.2)
        return 0

    def request_stop(self, _signum: int = 0, _frame: FrameType | None = None) -> None:
        """Signal handler: leave the wait loop; a second stop request while stopping stops at once."""
        if self._stopping and self._stop_signals_sent:
            self._force_stop()
        self._stopping = True

    def _force_stop(self) -> None:
        print("Stopping at once: running jobs go back to their queue.", file=sys.stderr, flush=True)
        for name, child in self.children:
            if child.poll() is None:
                child.send_signal(WEB_FORCE_SIGNAL if name == "web" else WORKER_FORCE_SIGNAL)

    def stop(self) -> None:
        """Stop the children (workers finish their current job), then Redis."""
        running = [child for _name, child in self.children if child.poll() is None]
        if running:
            print("Stopping (workers finish their current job; Ctrl-C again to stop at once)...",
                  file=sys.stderr, flush=True)
        for child in running:
            child.send_signal(signal.SIGTERM)
        self._stop_signals_sent = True
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for _name, child in self.children:
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)  # the child leads its own group: its processes too
                child.wait()
        if self.redis is not None:
            self.redis.stop()


def run_dev(*, host: str, port: int, workers: int | None, data_dir: Path) -> int:
    """Run the dev stack until interrupted."""
    stack = DevStack(host=host, port=port, workers=workers, data_dir=data_dir)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stack.request_stop)
    try:
        stack.start()
        return stack.wait()
    finally:
        stack.stop()
