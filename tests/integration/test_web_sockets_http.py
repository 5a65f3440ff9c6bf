"""Real gunicorn with the project's gunicorn.conf.py: a listening socket per worker, spread connections,
and a port already in use refused rather than shared."""

from __future__ import annotations

import http.client
import os
import re
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.integration.conftest import (
    READY_TIMEOUT,
    ProcessSet,
    base_environment,
    http_ready,
    sqlite_url,
    wait_until,
)
from tests.servers import free_port

CONNECTIONS = 16
LISTEN, ESTABLISHED = "0A", "01"


def tcp_sockets(port: int) -> dict[int, str]:
    """Inode -> state of every IPv4 TCP socket whose local port is `port` (from /proc/net/tcp)."""
    found = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port:
            found[int(fields[9])] = fields[3]
    return found


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets process `pid` holds open."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if match := re.fullmatch(r"socket:\[(\d+)\]", target):
            inodes.add(int(match.group(1)))
    return inodes


def children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.fixture
def web(spawn: ProcessSet, tmp_path: Path) -> Iterator[tuple[int, int, dict[str, str]]]:
    """gunicorn (2 workers) on a free port: (master pid, port, its environment)."""
    env = base_environment(DATABASE_URL=sqlite_url(tmp_path), REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
                           RUNNER_DATA_DIR=str(tmp_path / "data"))
    port = free_port()
    process = spawn.start_web(env, port)
    wait_until(lambda: http_ready(f"http://127.0.0.1:{port}/healthz"), READY_TIMEOUT, "gunicorn")
    wait_until(lambda: len(children(process.pid)) == 2, READY_TIMEOUT, "two gunicorn workers")
    yield process.pid, port, env


def test_each_worker_listens_on_its_own_socket(web: tuple[int, int, dict[str, str]]) -> None:
    master, port, _env = web
    listening = {inode for inode, state in tcp_sockets(port).items() if state == LISTEN}
    owners = {pid: socket_inodes(pid) & listening for pid in children(master)}
    assert len(listening) == 2, listening  # one shared socket would be one inode
    assert all(len(owned) == 1 for owned in owners.values()) and set().union(*owners.values()) == listening
    assert not socket_inodes(master) & listening


def test_keep_alive_connections_are_spread_over_the_workers(web: tuple[int, int, dict[str, str]]) -> None:
    master, port, _env = web
    with ExitStack() as open_connections:
        for _ in range(CONNECTIONS):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            open_connections.callback(connection.close)
            connection.request("GET", "/healthz")
            response = connection.getresponse()
            assert response.status == 200 and response.getheader("Connection", "") != "close"
            response.read()
        established = {inode for inode, state in tcp_sockets(port).items() if state == ESTABLISHED}
        served = {pid: len(socket_inodes(pid) & established) for pid in children(master)}
    # Each connection lands on either worker at random: all 16 on one has odds of 1 in 32,768.
    assert sum(served.values()) == CONNECTIONS and all(served.values()), served


def test_a_second_server_on_the_same_port_is_refused_not_let_in(
        web: tuple[int, int, dict[str, str]], spawn: ProcessSet) -> None:
    master, port, env = web
    second = spawn.start_web(env, port, name="second-web")
    assert second.wait(READY_TIMEOUT) == 1, second.log_tail()
    assert f"Listening at 127.0.0.1:{port} failed: the address is in use by another server." in second.log_tail()
    assert len([state for state in tcp_sockets(port).values() if state == LISTEN]) == 2  # the first one's, only
    assert http_ready(f"http://127.0.0.1:{port}/healthz")


def test_reuse_port_can_be_turned_off(spawn: ProcessSet, tmp_path: Path) -> None:
    env = base_environment(DATABASE_URL=sqlite_url(tmp_path), REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
                           RUNNER_DATA_DIR=str(tmp_path / "data"), RUNNER_WEB_REUSE_PORT="0")
    port = free_port()
    process = spawn.start_web(env, port)
    wait_until(lambda: http_ready(f"http://127.0.0.1:{port}/healthz"), READY_TIMEOUT, "gunicorn")
    wait_until(lambda: len(children(process.pid)) == 2, READY_TIMEOUT, "two gunicorn workers")
    listening = {inode for inode, state in tcp_sockets(port).items() if state == LISTEN}
    assert len(listening) == 1 and listening <= socket_inodes(process.pid)
