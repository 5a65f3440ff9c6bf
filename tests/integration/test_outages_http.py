"""Redis or the database away: gunicorn answers 503 with the JSON error shape, and recovers by itself."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from runner.store.sql_store import Store
from tests.integration.conftest import (
    ProcessSet,
    http_ready,
    require_service,
    run_migrate,
    sqlite_url,
    stack_environment,
    wait_until,
)
from tests.servers import PostgresServer, RedisServer, find_postgres_bin, find_redis_server, free_port

FAST_ANSWER_SECONDS = 3.0
RECOVERY_TIMEOUT = 15.0
PAYLOAD = {"expression": "2*(3+4)"}


class Web:
    """A gunicorn started by a test, and the calls the tests make to it."""

    def __init__(self, spawn: ProcessSet, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        spawn.start_web(env, self.port)

        def answering() -> bool:
            spawn.check_alive()
            return http_ready(f"{self.url}/healthz")

        wait_until(answering, 20, "gunicorn to answer /healthz")

    def invoke(self) -> tuple[requests.Response, float]:
        """POST an invocation; return the response and how long it took."""
        started = time.monotonic()
        response = requests.post(f"{self.url}/functions/simple_calculation/invocations", json=PAYLOAD, timeout=15)
        return response, time.monotonic() - started

    def get(self, path: str) -> requests.Response:
        """GET a path."""
        return requests.get(f"{self.url}{path}", timeout=15)


def assert_unavailable(response: requests.Response, dependency: str) -> dict[str, Any]:
    """A 503 in the error shape, with Retry-After, naming `dependency` in its details."""
    assert response.status_code == 503, response.text
    assert response.headers["Content-Type"].split(";")[0] == "application/json"
    body = response.json()
    assert set(body) == {"error", "message", "details"}, body
    assert body["error"] and body["message"]
    assert int(response.headers["Retry-After"]) > 0
    assert dependency in str(body["details"]), body
    return body


def store_rows(database_url: str) -> int:
    """How many invocations the store holds."""
    store = Store(database_url)
    try:
        return len(store.list(limit=100)[0])
    finally:
        store.engine.dispose()


def test_redis_unreachable(spawn: ProcessSet, tmp_path: Path) -> None:
    database_url = sqlite_url(tmp_path)
    env = stack_environment(
        redis_url=f"redis://127.0.0.1:{free_port()}/0", database_url=database_url, data_dir=tmp_path / "data"
    )
    run_migrate(env)
    web = Web(spawn, env)

    response, elapsed = web.invoke()
    assert_unavailable(response, "redis")
    assert elapsed < FAST_ANSWER_SECONDS
    assert store_rows(database_url) == 0, "a refused invocation left a row in the store"

    ready = web.get("/readyz")
    body = assert_unavailable(ready, "redis")
    assert body["details"]["checks"] == {"redis": "unavailable", "database": "ok"}
    assert web.get("/healthz").status_code == 200

    job = web.get("/jobs/0123456789abcdef0123456789abcdef")
    assert_unavailable(job, "redis")


def test_database_unreachable(spawn: ProcessSet, redis_server: RedisServer, tmp_path: Path) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    env = stack_environment(
        redis_url=redis_server.url,
        database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/runner",
        data_dir=tmp_path / "data",
    )
    web = Web(spawn, env)

    response, elapsed = web.invoke()
    assert_unavailable(response, "database")
    assert elapsed < FAST_ANSWER_SECONDS
    assert client.llen("rq:queue:demo_tasks") == 0
    assert list(client.scan_iter(match="rq:job:*")) == []

    body = assert_unavailable(web.get("/readyz"), "database")
    assert body["details"]["checks"] == {"redis": "ok", "database": "unavailable"}
    assert web.get("/healthz").status_code == 200


def test_redis_down_then_back(spawn: ProcessSet, tmp_path: Path) -> None:
    require_service(find_redis_server(), "redis-server")
    # Append-only, so jobs accepted before the outage are still queued after it.
    server = RedisServer(tmp_path / "redis", appendonly=True)
    server.start()
    try:
        database_url = sqlite_url(tmp_path)
        env = stack_environment(redis_url=server.url, database_url=database_url, data_dir=tmp_path / "data")
        run_migrate(env)
        web = Web(spawn, env)
        wait_until(lambda: http_ready(f"{web.url}/readyz"), 10, "/readyz to answer 200")
        before, _ = web.invoke()
        assert before.status_code == 202, before.text

        server.stop()
        response, elapsed = web.invoke()
        assert_unavailable(response, "redis")
        assert elapsed < FAST_ANSWER_SECONDS
        assert_unavailable(web.get("/readyz"), "redis")

        server.start()  # same port and directory
        deadline = time.monotonic() + RECOVERY_TIMEOUT
        while (after := web.invoke()[0]).status_code != 202:
            assert after.status_code == 503, after.text
            if time.monotonic() > deadline:
                pytest.fail(f"the API still answers {after.status_code} {RECOVERY_TIMEOUT:g} s after Redis came back")
            time.sleep(0.1)
        # Every gunicorn worker (not just the one that answered) has recovered, without a restart.
        for _ in range(6):
            again, _ = web.invoke()
            assert again.status_code == 202, again.text
        assert web.get("/readyz").status_code == 200

        accepted = [before.json()["id"], after.json()["id"]]
        client = redis.Redis.from_url(server.url)
        queued = {job_id.decode() for job_id in client.lrange("rq:queue:demo_tasks", 0, -1)}
        assert set(accepted) <= queued, "an accepted invocation was lost"
        # Through the API, as a user reads history: the last ones' rows may still wait in the journal
        # (for a few ms), and GET /jobs applies those before it reads.
        listed = web.get("/jobs?limit=100").json()["jobs"]
        assert len(listed) == 2 + 6, "the refused invocation left a row, or an accepted one has none"
        assert store_rows(database_url) == 2 + 6
    finally:
        server.close()


def test_database_outage_at_job_end_does_not_leave_stale_history(
    spawn: ProcessSet, redis_server: RedisServer, tmp_path: Path
) -> None:
    """A job that ends while PostgreSQL is briefly away must still reach the history once it is back."""
    require_service(find_postgres_bin(), "PostgreSQL server binaries")
    redis.Redis.from_url(redis_server.url).flushall()
    with PostgresServer(tmp_path / "pg") as postgres:
        # The explicit driver keeps this test about the outage, not about the URL scheme.
        database_url = postgres.create_database("runner").replace("postgresql://", "postgresql+psycopg2://", 1)
        env = stack_environment(redis_url=redis_server.url, database_url=database_url, data_dir=tmp_path / "data")
        run_migrate(env)
        web = Web(spawn, env)
        spawn.start_worker(env, "worker")
        gate = tmp_path / "gate"
        response = requests.post(
            f"{web.url}/functions/gated_progress/invocations", json={"gate": str(gate)}, timeout=15
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]

        def job() -> dict[str, Any]:
            reply = web.get(f"/jobs/{job_id}")
            assert reply.status_code == 200, reply.text
            view: dict[str, Any] = reply.json()
            return view

        wait_until(lambda: job()["progress"]["percent"] == 50, 20, "the job to report 50%")
        postgres.stop()
        gate.touch()
        wait_until(lambda: job()["status"] == "finished", 15, "the job to finish in Redis")
        postgres.start()
        wait_until(lambda: http_ready(f"{web.url}/readyz"), 15, "/readyz to answer 200 again")

        def listed_status() -> str:
            reply = web.get("/jobs?function=gated_progress")
            assert reply.status_code == 200, reply.text
            return str(reply.json()["jobs"][0]["status"])

        deadline = time.monotonic() + 10
        while listed_status() != "finished" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert listed_status() == "finished", (
            f"GET /jobs still lists the job as {listed_status()!r} after the database came back, "
            f"while GET /jobs/<id> says {job()['status']!r}"
        )
