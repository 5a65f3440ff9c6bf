"""`python -m runner dev`: API, workers and (when needed) Redis on one machine, one command."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from runner.config import Settings
from runner.dev.embedded_redis import EmbeddedRedis
from runner.store.sql_store import Store

# Longer than a worker's own grace period (RUNNER_WORKER_GRACE_SECONDS, 25 s) plus its exit.
STOP_GRACE_SECONDS = 35.0
GUNICORN_CONFIG = Path(__file__).resolve().parents[2] / "gunicorn.conf.py"


class DevError(RuntimeError):
    """The dev stack cannot start (port taken, no Redis binary, ...)."""


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
        return True


class DevStack:
    """Starts and stops every process of the dev stack."""

    def __init__(self, *, host: str, port: int, workers: int, data_dir: Path) -> None:
        self.host, self.port, self.workers = host, port, workers
        self.data_dir = data_dir.resolve()
        self.redis: EmbeddedRedis | None = None
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._stopping = False

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
        """Start Redis if needed, migrate the store, then the web and worker processes."""
        if not port_is_free(self.host, self.port):
            raise DevError(f"Port {self.port} on {self.host} is in use; pick another with --port.")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = self.environment()
        settings = Settings.from_env(env)
        Store(settings.effective_database_url).migrate()
        web = [sys.executable, "-m", "gunicorn", "api:create_app()", "--config", str(GUNICORN_CONFIG),
               "--bind", f"{self.host}:{self.port}", "--workers", "2"]
        self._spawn("web", web, env)
        for number in range(1, self.workers + 1):
            self._spawn(f"worker.{number}", [sys.executable, "-m", "runner", "worker"], env)
        redis_note = f"embedded Redis at {env['REDIS_URL']}" if self.redis else f"Redis at {env['REDIS_URL']}"
        print(f"\nAsync Task Runner is up: http://{self.host}:{self.port}", flush=True)
        print(f"  {redis_note}; store {settings.effective_database_url}", flush=True)
        print(f"  try: curl -s -X POST 'http://{self.host}:{self.port}/functions/simple_calculation/invocations"
              "?wait=10' -H 'Content-Type: application/json' -d '{\"expression\": \"2*(3+4)\"}'", flush=True)
        print("  Ctrl-C stops everything.\n", flush=True)

    def _spawn(self, name: str, command: list[str], env: dict[str, str]) -> None:
        self.children.append((name, subprocess.Popen(command, env=env)))

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
        """Signal handler: leave the wait loop."""
        self._stopping = True

    def stop(self) -> None:
        """Stop the children (workers finish their current job), then Redis."""
        for _name, child in self.children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for _name, child in self.children:
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if self.redis is not None:
            self.redis.stop()


def run_dev(*, host: str, port: int, workers: int, data_dir: Path) -> int:
    """Run the dev stack until interrupted."""
    stack = DevStack(host=host, port=port, workers=workers, data_dir=data_dir)
    signal.signal(signal.SIGINT, stack.request_stop)
    signal.signal(signal.SIGTERM, stack.request_stop)
    try:
        stack.start()
        return stack.wait()
    finally:
        stack.stop()
