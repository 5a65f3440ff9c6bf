"""Rows written behind (runner.journal.new_rows) on real Redis, SQLite and PostgreSQL, gunicorn and workers:
a stream of invocations is listed at once, and a row whose API process died before its commit
still lands."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from runner.authoring.registry import Registry
from runner.config import Settings
from runner.journal.new_rows import NEW_ROWS_KEY, encode_row
from runner.services.backends import Backends
from runner.services.invocation import accept_invocation
from runner.store.models import NewInvocation, utcnow
from runner.store.sql_store import Store
from tests.integration.conftest import Stack, wait_until
from tests.reliability.conftest import PROBE_PACKAGES, start_stack
from tests.servers import RedisServer

CALCULATION = {"expression": "6*7"}
STREAM = 60
# Peers take turns at the recovery pass (which commits leftover journaled rows) every this many seconds.
DEAD_AFTER_SECONDS = 3
SETTLED_WITHIN = 20.0


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stack(request: pytest.FixtureRequest, redis_server: RedisServer,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    backend: str = request.param
    postgres = request.getfixturevalue("postgres_server") if backend == "postgresql" else None
    started = start_stack(backend, redis_server, tmp_path_factory.mktemp(f"new-rows-{backend}"), postgres,
                          RUNNER_WORKER_DEAD_AFTER_SECONDS=str(DEAD_AFTER_SECONDS))
    yield started
    started.stop()


@pytest.fixture
def backends(stack: Stack, tmp_path: Path) -> Iterator[Backends]:
    """This test process as an API process of the stack."""
    built = Backends(redis.Redis.from_url(stack.env["REDIS_URL"]), Store(stack.database_url),
                     Settings(data_dir=str(tmp_path / "data")))
    yield built
    built.store.engine.dispose()


def test_a_stream_over_http_is_listed_at_once_and_every_row_finishes(stack: Stack) -> None:
    ids = []
    for index in range(STREAM):
        response = stack.invoke("simple_calculation", {"expression": f"{index}*2"})
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    # Right after the last answer, from whichever gunicorn worker answers: every row is there.
    listed = stack.get("/jobs", params={"function": "simple_calculation", "limit": 100}).json()["jobs"]
    assert set(ids) <= {job["id"] for job in listed}
    for index, job_id in enumerate(ids):
        row = stack.wait_for_row(job_id, lambda row: row.status == "finished")
        assert (row.input, row.result["result"]) == ({"expression": f"{index}*2"}, index * 2)
    assert stack.redis.hlen(NEW_ROWS_KEY) == 0


def test_rows_of_an_api_process_that_died_before_its_commit_still_land(stack: Stack, backends: Backends) -> None:
    # The rows are journaled with their jobs, and the process never commits them.
    backends.new_rows.hand = lambda values: None  # type: ignore[method-assign]
    spec = Registry.discover(PROBE_PACKAGES).get("simple_calculation")
    ids = [accept_invocation(spec, CALCULATION, backends).record.id for _ in range(20)]
    assert stack.redis.hlen(NEW_ROWS_KEY) == 19  # the first of the stream went the direct way
    for job_id in ids:  # the workers that run the jobs commit the rows before their updates
        row = stack.wait_for_row(job_id, lambda row: row.status == "finished")
        assert (row.input, row.result["result"]) == (CALCULATION, 42)
    # Nobody read history through the API: the workers' recovery pass empties the journal.
    wait_until(lambda: stack.redis.hlen(NEW_ROWS_KEY) == 0, SETTLED_WITHIN, "the journal to empty")


def test_a_journaled_row_whose_job_never_runs_lands_by_the_recovery_pass(stack: Stack) -> None:
    values = NewInvocation(id="never-ran", function="simple_calculation", queue="demo_tasks", status="queued",
                           input=CALCULATION, created_at=utcnow()).column_values()
    stack.redis.hset(NEW_ROWS_KEY, "never-ran", encode_row(values))
    row = stack.wait_for_row("never-ran", lambda row: row.status == "queued", timeout=SETTLED_WITHIN)
    assert row.input == CALCULATION
    assert stack.redis.hlen(NEW_ROWS_KEY) == 0
