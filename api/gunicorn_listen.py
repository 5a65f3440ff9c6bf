"""One listening socket per gunicorn worker (SO_REUSEPORT), so the kernel spreads connections.

With one socket shared by every worker, whichever worker wakes first accepts. A few long-lived
keep-alive connections (a proxy's upstream pool, a load test) can then all land on one worker
while the others idle: on 2 cores, half the capacity, seen in 1 load-test run in 8. With a
socket per worker (gunicorn's `reuse_port`), the kernel spreads connections over them.

Two things `reuse_port` alone would get wrong, which `check_binds` (the `on_starting` hook)
handles before any worker binds:
- A second server on the same port would share it silently, instead of failing: the port is
  probed without SO_REUSEPORT first, and a port in use stops gunicorn with a clear message.
- Unix sockets, inherited descriptors and port 0 cannot be shared that way (each worker would
  replace the socket file, or get a port of its own): for those, one shared socket as usual.

The price: a connection waits in the accept queue of one worker, not of all. When that worker
stops (a restart, a graceful reload) before accepting it, the client sees the connection reset
and no answer, so nothing was accepted and a retry is safe (with an Idempotency-Key, even
after an answer was lost). Linux 5.14+ can hand such connections to a sibling instead
(`sysctl net.ipv4.tcp_migrate_req=1`). RUNNER_WEB_REUSE_PORT=0 goes back to one shared socket.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from typing import Any

# The setting's environment switch: "0" turns per-worker sockets off.
REUSE_PORT_ENV = "RUNNER_WEB_REUSE_PORT"


def reuse_port_wanted() -> bool:
    """Per-worker sockets where the kernel supports them, unless RUNNER_WEB_REUSE_PORT=0."""
    return hasattr(socket, "SO_REUSEPORT") and os.environ.get(REUSE_PORT_ENV, "1") != "0"


def _shareable(address: Any) -> bool:
    # A (host, port) pair with a fixed port; unix socket paths are str, inherited descriptors int.
    return isinstance(address, tuple) and int(address[1]) != 0


def _probe(address: tuple[Any, ...]) -> None:
    """Bind `address` as a lone listener would (SO_REUSEADDR, no SO_REUSEPORT): OSError when taken."""
    family = socket.AF_INET6 if ":" in str(address[0]) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address[:2])


def check_binds(server: Any) -> None:
    """gunicorn's on_starting hook: keep `reuse_port` only where it is safe, and never share a port."""
    if not server.cfg.reuse_port:
        return
    inherited = "GUNICORN_FD" in os.environ or "LISTEN_FDS" in os.environ
    if inherited or not all(_shareable(address) for address in server.cfg.address):
        server.cfg.set("reuse_port", False)
        return
    for address in server.cfg.address:
        try:
            _probe(address)
        except OSError as exc:
            taken = exc.errno == errno.EADDRINUSE
            reason = "is in use by another server" if taken else f"cannot be bound ({exc.strerror})"
            server.log.error("Listening at %s:%s failed: the address %s.", address[0], address[1], reason)
            raise SystemExit(1) from None
    # The master holds no socket now, so gunicorn's "Listening at:" line would name none.
    server.log.error_log.addFilter(ListeningAddresses(server.cfg.address))


LISTENING_MESSAGE = "Listening at: %s (%s)"


def base_url(address: tuple[Any, ...]) -> str:
    """http://host:port of a bound TCP address (IPv6 hosts in brackets)."""
    host = str(address[0])
    return f"http://[{host}]:{address[1]}" if ":" in host else f"http://{host}:{address[1]}"


class ListeningAddresses(logging.Filter):
    """Fills in the addresses of gunicorn's "Listening at:" line when the workers bind their own sockets."""

    def __init__(self, addresses: list[tuple[Any, ...]]) -> None:
        super().__init__()
        self.addresses = ",".join(base_url(address) for address in addresses)

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite that one line (blank address) and let every record through."""
        if record.msg == LISTENING_MESSAGE and isinstance(record.args, tuple) and record.args and not record.args[0]:
            record.args = (f"{self.addresses} (a socket per worker)", *record.args[1:])
        return True


def _browsable(address: tuple[Any, ...]) -> tuple[Any, ...]:
    # A server bound to every interface is reached on this machine through loopback.
    wildcard = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}
    return (wildcard.get(str(address[0]), address[0]), address[1])


def announce_urls(server: Any) -> None:
    """gunicorn's when_ready hook: say where the dashboard (and the API's docs) are, not just a socket."""
    from api.dashboard import DASHBOARD_PREFIX

    tcp = [address for address in server.cfg.address if isinstance(address, tuple)]
    if not tcp:
        return
    url = base_url(_browsable(tcp[0]))
    if "create_dashboard_app" in str(getattr(server.app, "app_uri", "")):
        server.log.info("Dashboard: %s%s/", url, DASHBOARD_PREFIX)
    else:
        server.log.info("API: %s (dashboard: %s%s/, docs: %s/docs)", url, url, DASHBOARD_PREFIX, url)
