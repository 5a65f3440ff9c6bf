"""The journal on real Redis, SQLite and PostgreSQL, gunicorn and workers: a stream of invocations is
listed at once, every row finishes, and rows journaled by a process that never applies them land."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from runner.authoring.registry import Registry
from runner.config import Settings
from runner.journal import entries as journal
from runner.services.backends import Backends
from runner.services.invocation import accept_invocation
from runner.store.models import NewInvocation, utcnow
from runner.store.sql_store import Store
from tests.integration.conftest import Stack, wait_until
from tests.reliability.conftest import PROBE_PACKAGES, start_stack
from tests.servers import RedisServer

CALCULATION = {"expression": "6*7"}
STREAM = 60
SETTLED_WITHIN = 20.0


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stack(request: pytest.FixtureRequest, redis_server: RedisServer,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    backend: str = request.param
    postgres = request.getfixturevalue("postgres_server") if backend == "postgresql" else None
    started = start_stack(backend, redis_server, tmp_path_factory.mktemp(f"journal-{backend}"), postgres)
    yield started
    started.stop()


@pytest.fixture
def backends(stack: Stack, tmp_path: Path) -> Iterator[Backends]:
    """This test process as an API process of the stack (it never applies the journal itself)."""
    built = Backends(redis.Redis.from_url(stack.env["REDIS_URL"]), Store(stack.database_url),
                     Settings(data_dir=str(tmp_path / "data")))
    yield built
    built.store.engine.dispose()


def journal_is_empty(stack: Stack) -> bool:
    return stack.redis.xlen(journal.JOURNAL_KEY) == 0


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
    wait_until(lambda: journal_is_empty(stack), SETTLED_WITHIN, "the journal to empty")


def test_rows_journaled_by_a_process_that_never_applies_them_land(stack: Stack, backends: Backends) -> None:
    spec = Registry.discover(PROBE_PACKAGES).get("simple_calculation")
    ids = [accept_invocation(spec, CALCULATION, backends).job_id for _ in range(20)]
    unread = Store(stack.database_url)  # reads SQL as it is: the workers' projector must apply the rows
    try:
        for job_id in ids:
            wait_until(lambda job_id=job_id: (row := unread.get(job_id)) is not None and row.status == "finished",
                       SETTLED_WITHIN, f"the row of {job_id} to say finished")
            row = unread.get(job_id)
            assert row is not None and (row.input, row.result["result"]) == (CALCULATION, 42)
    finally:
        unread.engine.dispose()
    wait_until(lambda: journal_is_empty(stack), SETTLED_WITHIN, "the journal to empty")


def test_a_journaled_row_whose_job_never_runs_lands(stack: Stack) -> None:
    values = NewInvocation(id="never-ran", function="simple_calculation", queue="demo_tasks", status="queued",
                           input=CALCULATION, created_at=utcnow()).column_values()
    journal.append(stack.redis, "never-ran", values, fence=0, new=True)
    unread = Store(stack.database_url)
    try:
        wait_until(lambda: unread.get("never-ran") is not None, SETTLED_WITHIN, "the row to land")
        assert unread.get("never-ran").input == CALCULATION  # type: ignore[union-attr]
    finally:
        unread.engine.dispose()
    assert journal_is_empty(stack)
