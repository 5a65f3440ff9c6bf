"""A callback host whose DNS never answers: the API still answers within its bound, and keeps serving others.

A real slow DNS staged on loopback: a UDP server on a loopback address of its own that reads each
query and never answers, and gunicorn started in a mount namespace (`unshare -m`) whose
/etc/resolv.conf names that server, with glibc told to wait 30 s for it. Without the bound, each
such invocation held an API thread 30 s and then answered 422. Needs root (port 53, the mount);
skipped where the namespace cannot be made.
"""

from __future__ import annotations

import random
import shlex
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from runner.services.callbacks import API_RESOLVE_SECONDS
from tests.integration.conftest import (
    PYTHON,
    ProcessSet,
    http_ready,
    run_migrate,
    sqlite_url,
    stack_environment,
    wait_until,
)
from tests.servers import RedisServer, free_port

HOST = "hooks.never-answers.test"
# How far past its bound an answer may come (the request's own work, a loaded machine).
MARGIN = 1.5
# Slow invocations at once: fewer than one gunicorn process has threads (8), so that the kernel's
# spreading of connections over the two processes never leaves one without a free thread.
CONCURRENT = 6


class BlackHoleDns:
    """A UDP server on 127.x.y.z:53 that counts the queries it gets and answers none."""

    def __init__(self) -> None:
        self.address = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind((self.address, 53))
        self.queries: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                packet, _ = self.socket.recvfrom(4096)
            except OSError:
                return
            self.queries.append(packet)

    def asked_for(self, host: str) -> bool:
        """Whether a query named `host` came."""
        wire = b"".join(bytes([len(label)]) + label.encode() for label in host.split("."))
        return any(wire in packet for packet in self.queries)

    def close(self) -> None:
        self.socket.close()


@pytest.fixture
def black_hole_dns() -> Iterator[BlackHoleDns]:
    if subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False).returncode != 0:
        pytest.skip("cannot make a mount namespace here (unshare -m needs root)")
    try:
        server = BlackHoleDns()
    except PermissionError:
        pytest.skip("cannot listen on port 53 here")
    yield server
    server.close()


def test_invocations_whose_callback_host_never_resolves_are_answered_within_the_bound(
    black_hole_dns: BlackHoleDns, redis_server: RedisServer, spawn: ProcessSet, tmp_path: Path
) -> None:
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text(f"nameserver {black_hole_dns.address}\noptions timeout:30 attempts:1\n")
    env = stack_environment(redis_url=redis_server.url, database_url=sqlite_url(tmp_path), data_dir=tmp_path / "data")
    run_migrate(env)
    port = free_port()
    gunicorn = f"{PYTHON} -m gunicorn 'api:create_app()' --bind 127.0.0.1:{port} --workers 2"
    spawn.start("web", ["unshare", "-m", "sh", "-c",
                        f"mount --bind {shlex.quote(str(resolv_conf))} /etc/resolv.conf && exec {gunicorn}"], env)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_ready(f"{url}/readyz"), 30, "the API to be ready")

    def invoke(host: str | None) -> tuple[float, requests.Response]:
        headers = {"X-Callback-Url": f"http://{host}/hook"} if host else {}
        began = time.monotonic()
        response = requests.post(f"{url}/functions/simple_calculation/invocations", json={"expression": "6*7"},
                                 headers=headers, timeout=60)
        return time.monotonic() - began, response

    took, response = invoke(HOST)
    assert response.status_code == 202, response.text
    assert black_hole_dns.asked_for(HOST)  # the lookup did go to the silent server
    print(f"\nan invocation whose callback host never resolves: 202 in {took:.2f} s")
    assert API_RESOLVE_SECONDS <= took < API_RESOLVE_SECONDS + MARGIN

    with ThreadPoolExecutor(CONCURRENT + 1) as pool:
        slow = [pool.submit(invoke, f"n{n}.{HOST}") for n in range(CONCURRENT)]
        time.sleep(0.2)  # the slow ones hold their threads now
        plain_took, plain = invoke(None)
        answers = [future.result() for future in slow]
    print(f"{CONCURRENT} at once: slowest 202 in {max(t for t, _ in answers):.2f} s; one without a callback "
          f"meanwhile: {plain.status_code} in {plain_took:.2f} s")
    assert plain.status_code == 202 and plain_took < 1.0
    for took, response in answers:
        assert response.status_code == 202, response.text
        assert took < API_RESOLVE_SECONDS + MARGIN
