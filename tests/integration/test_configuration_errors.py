"""A wrong DATABASE_URL says what is wrong: the driver's reason and the URL (password masked), at
start-up of migrate, worker and web, and in the log line of each 503; a database without the
runner's tables is never ready and never answers 500. Real PostgreSQL, real gunicorn."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.integration.conftest import (
    PYTHON,
    READY_TIMEOUT,
    REPO_ROOT,
    ManagedProcess,
    ProcessSet,
    run_migrate,
    stack_environment,
    wait_until,
)
from tests.servers import PostgresServer, RedisServer, free_port

PASSWORD = "s3cret-Pa55"
INVOCATION = "/functions/simple_calculation/invocations"


@dataclass(frozen=True)
class BadUrl:
    """A DATABASE_URL that cannot work, and the driver's words for why."""

    url: str
    masked: str
    reason: str


@pytest.fixture(scope="module")
def password_user(postgres_server: PostgresServer) -> str:
    """A role that needs a password (the test cluster trusts everyone else), owning a database of its name."""
    name = f"pw_{uuid.uuid4().hex[:10]}"
    postgres_server.add_password_user(name, PASSWORD)
    postgres_server.execute(f"CREATE DATABASE {name} OWNER {name}")
    return name


def wrong_password(server: PostgresServer, user: str) -> BadUrl:
    host = f"127.0.0.1:{server.port}/{user}"
    return BadUrl(f"postgresql://{user}:not-{PASSWORD}@{host}", f"postgresql://{user}:***@{host}",
                  f'password authentication failed for user "{user}"')


def missing_database(server: PostgresServer, user: str) -> BadUrl:
    name = f"nope_{uuid.uuid4().hex[:8]}"
    host = f"127.0.0.1:{server.port}/{name}"
    return BadUrl(f"postgresql://{user}:{PASSWORD}@{host}", f"postgresql://{user}:***@{host}",
                  f'database "{name}" does not exist')


def closed_port(_server: PostgresServer, user: str) -> BadUrl:
    host = f"127.0.0.1:{free_port()}/{user}"
    return BadUrl(f"postgresql://{user}:{PASSWORD}@{host}", f"postgresql://{user}:***@{host}", "Connection refused")


CASES = [wrong_password, missing_database, closed_port]


@pytest.fixture(params=CASES, ids=[case.__name__ for case in CASES])
def bad_url(request: pytest.FixtureRequest, postgres_server: PostgresServer, password_user: str) -> BadUrl:
    made: BadUrl = request.param(postgres_server, password_user)
    return made


def run_command(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "runner", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def assert_names_the_cause(output: str, bad: BadUrl) -> None:
    assert bad.masked in output, output
    assert bad.reason in output, output
    assert PASSWORD not in output, output
    assert "Check DATABASE_URL." in output, output


def test_migrate_says_why_the_database_is_unavailable(bad_url: BadUrl, tmp_path: Path) -> None:
    env = stack_environment(redis_url="redis://127.0.0.1:1/0", database_url=bad_url.url, data_dir=tmp_path)
    result = run_command(["migrate"], env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert_names_the_cause(result.stderr, bad_url)
    assert "Traceback" not in result.stderr


def test_a_worker_says_why_at_start(bad_url: BadUrl, tmp_path: Path) -> None:
    env = stack_environment(redis_url="redis://127.0.0.1:1/0", database_url=bad_url.url, data_dir=tmp_path)
    result = run_command(["worker", "--burst"], env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert_names_the_cause(result.stderr, bad_url)


StartWeb = Callable[[str], tuple[ManagedProcess, str]]


@pytest.fixture
def web(spawn: ProcessSet, redis_server: RedisServer, tmp_path: Path) -> StartWeb:
    """Starts gunicorn on a database URL: the process and its base URL, once /healthz answers."""

    def start(database_url: str) -> tuple[ManagedProcess, str]:
        port = free_port()
        env = stack_environment(redis_url=redis_server.url, database_url=database_url, data_dir=tmp_path)
        process = spawn.start_web(env, port)
        url = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            try:
                return requests.get(f"{url}/healthz", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_until(answers, READY_TIMEOUT, "gunicorn to answer /healthz")
        return process, url

    return start


def test_the_web_process_says_why_at_start_and_in_each_503(web: StartWeb, bad_url: BadUrl) -> None:
    process, url = web(bad_url.url)
    wait_until(lambda: "Until then the API answers 503" in process.log_tail(), 10, "the start-up report")
    assert_names_the_cause(process.log_tail(), bad_url)

    response = requests.post(f"{url}{INVOCATION}", json={"expression": "1+1"}, timeout=15)
    assert response.status_code == 503, response.text
    assert response.json()["details"] == {"dependency": "database"}
    assert PASSWORD not in response.text and "127.0.0.1" not in response.text  # the client gets no address
    wait_until(lambda: f"POST {INVOCATION} answered 503" in process.log_tail(), 5, "the 503's log line")
    line = next(line for line in process.log_tail().splitlines() if f"POST {INVOCATION} answered 503" in line)
    assert_names_the_cause(line, bad_url)


def test_a_database_without_tables_is_not_ready_and_never_a_500(
    web: StartWeb, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    database_url = postgres_server.create_database(f"runner_bare_{uuid.uuid4().hex[:10]}")
    process, url = web(database_url)
    wait_until(lambda: "Until then the API answers 503" in process.log_tail(), 10, "the start-up report")
    assert "has no tables: run `python -m runner migrate`" in process.log_tail()

    ready = requests.get(f"{url}/readyz", timeout=10)
    assert ready.status_code == 503, ready.text
    assert ready.json()["details"]["checks"] == {"redis": "ok", "database": "missing tables"}
    for method, path, body in [("POST", INVOCATION, {"expression": "1+1"}), ("GET", "/jobs", None),
                               ("GET", f"/jobs/{uuid.uuid4().hex}", None)]:
        response = requests.request(method, f"{url}{path}", json=body, timeout=15)
        assert response.status_code == 503, (path, response.text)
        assert response.json()["error"] == "backend_unavailable", response.text
    assert "Traceback" not in process.log_tail()
    assert "lacks the runner's tables" in process.log_tail()

    # Once migrated, the same process is ready and accepts invocations: nothing to restart.
    run_migrate(stack_environment(redis_url="redis://127.0.0.1:1/0", database_url=database_url, data_dir=tmp_path))
    assert requests.get(f"{url}/readyz", timeout=10).status_code == 200
    assert requests.post(f"{url}{INVOCATION}", json={"expression": "1+1"}, timeout=15).status_code == 202
