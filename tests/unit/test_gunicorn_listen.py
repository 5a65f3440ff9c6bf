"""api.gunicorn_listen: per-worker sockets only where they are safe, and never a shared port."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from api import gunicorn_listen


class FakeConfig:
    """The two settings check_binds reads, and `set` as gunicorn's Config has it."""

    def __init__(self, address: list[Any], reuse_port: bool = True) -> None:
        self.address = address
        self.reuse_port = reuse_port

    def set(self, name: str, value: Any) -> None:
        setattr(self, name, value)


class FakeServer:
    def __init__(self, address: list[Any]) -> None:
        self.cfg = FakeConfig(address)
        self.errors: list[str] = []
        self.log = self
        self.error_log = logging.getLogger(f"test.gunicorn.error.{id(self)}")

    def error(self, message: str, *args: Any) -> None:
        self.errors.append(message % args)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A socket listening on a loopback port, as another server would."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock


def free_address() -> tuple[str, int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return "127.0.0.1", sock.getsockname()[1]


@pytest.fixture(autouse=True)
def _no_inherited_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GUNICORN_FD", raising=False)
    monkeypatch.delenv("LISTEN_FDS", raising=False)


def test_a_free_tcp_port_keeps_a_socket_per_worker() -> None:
    server = FakeServer([free_address()])
    gunicorn_listen.check_binds(server)
    assert server.cfg.reuse_port is True and server.errors == []


def test_a_port_another_server_listens_on_stops_gunicorn_with_a_clear_message(listener: socket.socket) -> None:
    host, port = listener.getsockname()
    server = FakeServer([(host, port)])
    with pytest.raises(SystemExit) as stopped:
        gunicorn_listen.check_binds(server)
    assert stopped.value.code == 1
    assert server.errors == [f"Listening at {host}:{port} failed: the address is in use by another server."]


def test_a_port_shared_with_reuse_port_by_another_gunicorn_is_refused_too() -> None:
    # The silent sharing reuse_port alone would allow: another server whose sockets set SO_REUSEPORT.
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        server = FakeServer([other.getsockname()])
        with pytest.raises(SystemExit):
            gunicorn_listen.check_binds(server)


@pytest.mark.parametrize("address", ["/tmp/runner-web.sock", 3, ("127.0.0.1", 0)],
                         ids=["unix socket", "inherited descriptor", "port 0"])
def test_addresses_that_cannot_be_shared_fall_back_to_one_socket(address: Any) -> None:
    server = FakeServer([free_address(), address])
    gunicorn_listen.check_binds(server)
    assert server.cfg.reuse_port is False and server.errors == []


@pytest.mark.parametrize("variable", ["GUNICORN_FD", "LISTEN_FDS"])
def test_inherited_listeners_fall_back_to_one_socket(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    monkeypatch.setenv(variable, "3")
    server = FakeServer([free_address()])
    gunicorn_listen.check_binds(server)
    assert server.cfg.reuse_port is False


def test_with_reuse_port_off_nothing_is_probed(listener: socket.socket) -> None:
    server = FakeServer([listener.getsockname()])
    server.cfg.reuse_port = False
    gunicorn_listen.check_binds(server)  # the port is taken, yet no probe: gunicorn reports it itself
    assert server.errors == []


@pytest.mark.parametrize(("value", "wanted"), [(None, True), ("1", True), ("0", False)])
def test_the_environment_switch(monkeypatch: pytest.MonkeyPatch, value: str | None, wanted: bool) -> None:
    if value is None:
        monkeypatch.delenv(gunicorn_listen.REUSE_PORT_ENV, raising=False)
    else:
        monkeypatch.setenv(gunicorn_listen.REUSE_PORT_ENV, value)
    assert gunicorn_listen.reuse_port_wanted() is wanted


def test_an_ipv6_address_is_probed_as_ipv6() -> None:
    try:
        other = socket.socket(socket.AF_INET6)
        other.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    port = other.getsockname()[1]
    with other:
        other.listen()
        taken = FakeServer([("::1", port)])
        with pytest.raises(SystemExit):
            gunicorn_listen.check_binds(taken)
    free = FakeServer([("::1", port)])
    gunicorn_listen.check_binds(free)  # closed now: bindable again, as IPv6
    assert free.cfg.reuse_port is True and free.errors == []


def test_the_listening_line_names_the_address_each_worker_binds(caplog: pytest.LogCaptureFixture) -> None:
    # gunicorn's master logs "Listening at: %s (%s)" with the sockets it holds: none, with a socket per worker.
    host, port = free_address()
    server = FakeServer([(host, port)])
    gunicorn_listen.check_binds(server)
    with caplog.at_level(logging.INFO, logger=server.error_log.name):
        server.error_log.info("Listening at: %s (%s)", "", 4242)
        server.error_log.info("Listening at: %s (%s)", "http://elsewhere:1", 4242)
    assert caplog.messages == [f"Listening at: http://{host}:{port} (a socket per worker) (4242)",
                               "Listening at: http://elsewhere:1 (4242)"]
