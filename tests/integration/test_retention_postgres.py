"""Retention and summaries on a real PostgreSQL stack: `python -m runner prune` while invocations
stream in, the workers' own pruning when RUNNER_HISTORY_DAYS is set, GET /jobs cutting long
inputs in SQL, and the history summed up by PostgreSQL (generate_report's numbers)."""

from __future__ import annotations

import json
import random
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy
import pytest
import sqlalchemy as sa

from runner.store.history_summary import summarize_history
from runner.store.models import LISTED_JSON_CHARS, InvocationRecord
from runner.worker.duties import PRUNE_PASS_KEY
from tests.history import copy_rows
from tests.integration.conftest import PYTHON, REPO_ROOT, Stack, build_stack, wait_until
from tests.servers import PostgresServer, RedisServer

OLD_ROWS = 3000


@pytest.fixture(scope="module")
def pg_stack(redis_server: RedisServer, postgres_server: PostgresServer,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    started = build_stack("postgresql", redis_server, tmp_path_factory.mktemp("stack-retention"), postgres_server,
                          extra_env={"RUNNER_HISTORY_DAYS": "30"})
    yield started
    started.stop()


def old_history(stack: Stack, prefix: str, count: int) -> set[str]:
    """`count` rows of jobs that ended 40 to 400 days ago, and two old rows of jobs not ended;
    the ids of the ended ones. Every tenth has an artifact on disk."""
    now = datetime.now(UTC)

    def rows() -> Iterator[dict[str, Any]]:
        for number in range(count):
            at = now - timedelta(days=40 + number % 360, seconds=number)
            yield {"id": f"{prefix}{number:06}", "function": "simple_calculation", "queue": "demo_tasks",
                   "status": ("finished", "failed", "canceled")[number % 3], "input": {"expression": "1+1"},
                   "result": 2, "attempts": 1, "progress_percent": 100, "progress_message": "",
                   "created_at": at, "started_at": at, "ended_at": at, "updated_at": at}
        for status in ("queued", "started"):
            at = now - timedelta(days=100)
            yield {"id": f"{prefix}{status}", "function": "simple_calculation", "queue": "demo_tasks",
                   "status": status, "input": {}, "attempts": 0, "progress_percent": 0, "progress_message": status,
                   "created_at": at, "updated_at": at}

    copy_rows(stack.store, rows())
    artifacts = Path(stack.env["RUNNER_DATA_DIR"]) / "artifacts"
    for number in range(0, count, 10):
        folder = artifacts / f"{prefix}{number:06}"
        folder.mkdir(parents=True)
        (folder / "out.txt").write_text("old")
    return {f"{prefix}{number:06}" for number in range(count)}


def ids_with_prefix(stack: Stack, prefix: str) -> set[str]:
    with stack.store.session() as session:
        return set(session.scalars(sa.select(InvocationRecord.id).where(InvocationRecord.id.startswith(prefix))))


def test_workers_prune_old_history_by_themselves(pg_stack: Stack) -> None:
    ended = old_history(pg_stack, "w-", 1200)
    pg_stack.redis.delete(PRUNE_PASS_KEY)  # the pass made when the workers started found nothing
    folders = [Path(pg_stack.env["RUNNER_DATA_DIR"]) / "artifacts" / job_id for job_id in ended]
    # Rows go first, then their artifacts: wait for both.
    wait_until(lambda: not ids_with_prefix(pg_stack, "w-") - {"w-queued", "w-started"}
               and not any(folder.exists() for folder in folders), 30, "the workers' pruning of old history")
    assert ids_with_prefix(pg_stack, "w-") == {"w-queued", "w-started"}


def test_prune_command_while_invocations_stream(pg_stack: Stack) -> None:
    pg_stack.redis.set(PRUNE_PASS_KEY, "test", ex=600)  # the workers leave this one to the command
    ended = old_history(pg_stack, "c-", OLD_ROWS)
    accepted: list[str] = []
    refused: list[str] = []
    stop = threading.Event()

    def stream() -> None:
        while not stop.is_set():
            response = pg_stack.invoke("simple_calculation", {"expression": "6*7"})
            (accepted.append(response.json()["id"]) if response.status_code == 202 else refused.append(response.text))

    streamer = threading.Thread(target=stream)
    streamer.start()
    try:
        wait_until(lambda: len(accepted) >= 20, 30, "invocations streaming")
        result = subprocess.run([PYTHON, "-m", "runner", "prune", "--older-than", "30d"], cwd=REPO_ROOT,
                                env=pg_stack.env, capture_output=True, text=True, timeout=120, check=False)
        wait_until(lambda: len(accepted) >= 40, 30, "invocations streaming after the prune")
    finally:
        stop.set()
        streamer.join(30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Deleted {OLD_ROWS} jobs")
    assert f"the artifacts of {OLD_ROWS // 10}" in result.stdout
    assert refused == []
    assert ids_with_prefix(pg_stack, "c-") == {"c-queued", "c-started"}
    assert not any((Path(pg_stack.env["RUNNER_DATA_DIR"]) / "artifacts" / job_id).exists() for job_id in ended)
    for job_id in accepted:  # nothing streamed in was lost or pruned
        assert pg_stack.wait_until_terminal(job_id)["result"]["result"] == 42
        pg_stack.wait_for_row(job_id, lambda row: row.status == "finished")


def test_list_rows_are_cut_in_sql_on_postgresql(pg_stack: Stack) -> None:
    text = "é" * 100_000  # six characters of JSON text each, as SQLAlchemy (and copy_rows) write it
    now = datetime.now(UTC)
    copy_rows(pg_stack.store, [{"id": "big-input", "function": "big", "queue": "q", "status": "finished",
                                "input": {"note": text}, "result": {"short": True}, "attempts": 1,
                                "progress_percent": 100, "progress_message": "", "created_at": now,
                                "ended_at": now, "updated_at": now}])
    [listed] = pg_stack.get("/jobs", params={"function": "big"}).json()["jobs"]
    assert (listed["input"], listed["input_truncated"]) == (json.dumps({"note": text})[:LISTED_JSON_CHARS], True)
    assert (listed["result"], listed["result_truncated"]) == ({"short": True}, False)
    whole = pg_stack.job("big-input")
    assert (whole["input"], whole["input_truncated"]) == ({"note": text}, False)


def test_history_is_summed_up_by_postgresql_as_numpy_would(pg_stack: Stack) -> None:
    chance = random.Random(5)
    micros = [chance.randrange(1, 300_000_000) for _ in range(301)]
    at = datetime(2020, 1, 1, tzinfo=UTC)  # a period of its own: the other tests' rows are not in it

    def rows() -> Iterator[dict[str, Any]]:
        for number, duration in enumerate(micros):
            started = at + timedelta(minutes=number)
            yield {"id": f"sum-{number}", "function": "summed", "queue": "q", "status": "finished",
                   "input": {}, "attempts": 1 + number % 3, "progress_percent": 100, "progress_message": "",
                   "created_at": started, "started_at": started,
                   "ended_at": started + timedelta(microseconds=duration), "updated_at": started}
        yield {"id": "sum-running", "function": "summed", "queue": "q", "status": "started", "input": {},
               "attempts": 1, "progress_percent": 0, "progress_message": "", "created_at": at,
               "started_at": at, "updated_at": at}

    copy_rows(pg_stack.store, rows())
    period = {"since": at, "until": at + timedelta(days=1)}
    [totals] = summarize_history(pg_stack.store, **period)
    assert (totals.function, totals.count, totals.statuses) == ("summed", 302, {"finished": 301, "started": 1})
    assert totals.retries == sum(number % 3 for number in range(301))
    seconds = [value / 1e6 for value in micros]
    for percent in (50, 95):
        assert totals.duration_percentiles[percent] == pytest.approx(numpy.percentile(seconds, percent), abs=1e-6)
    [without] = summarize_history(pg_stack.store, leave_out="sum-running", **period)
    assert without.count == 301
