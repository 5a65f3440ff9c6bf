"""Retention of history on SQLite: which rows a prune deletes, in batches, with their artifacts;
the duration the command reads; the worker duty that prunes once across the fleet."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from click.testing import CliRunner

from runner.cli.main import main
from runner.config import parse_duration
from runner.store import retention
from runner.store.files import ArtifactStore
from runner.store.models import InvocationRecord
from runner.store.retention import PruneOutcome, Retention, count_prunable, prune_history
from runner.store.sql_store import Store
from runner.worker.duties import PRUNE_PASS_KEY, RECOVERY_PASS_KEY, Duties
from tests.history import insert_rows

NOW = datetime(2026, 6, 1, tzinfo=UTC)
CUTOFF = NOW - timedelta(days=30)


def row(job_id: str, *, age_days: float, status: str = "finished", ended_days: float | None = None,
        now: datetime = NOW) -> InvocationRecord:
    """A row created `age_days` before `now`; an ended one ended `ended_days` before (default: when created)."""
    created = now - timedelta(days=age_days)
    ended = None if status in ("queued", "started", "scheduled", "deferred") else (
        now - timedelta(days=age_days if ended_days is None else ended_days))
    return InvocationRecord(id=job_id, function="f", queue="q", status=status, input={}, attempts=1,
                            created_at=created, ended_at=ended)


def ids(store: Store) -> set[str]:
    return {listed.record.id for listed in store.list(limit=100)[0]}


@pytest.fixture
def artifacts(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts")


def test_only_rows_of_jobs_that_ended_before_the_cutoff_go(store: Store, artifacts: ArtifactStore) -> None:
    insert_rows(store, row("old-finished", age_days=40), row("old-failed", age_days=40, status="failed"),
                row("old-canceled", age_days=31, status="canceled"), row("old-stopped", age_days=50, status="stopped"),
                row("old-queued", age_days=40, status="queued"), row("old-started", age_days=40, status="started"),
                row("old-scheduled", age_days=40, status="scheduled"),
                row("ended-lately", age_days=40, ended_days=2), row("recent", age_days=1))
    stale = row("started-again", age_days=40)  # an end time left from an earlier attempt: the status decides
    stale.status = "started"
    insert_rows(store, stale)
    assert count_prunable(store, CUTOFF) == 4
    outcome = prune_history(store, artifacts, CUTOFF)
    assert outcome == PruneOutcome(rows=4, artifact_folders=0, complete=True)
    assert ids(store) == {"old-queued", "old-started", "old-scheduled", "ended-lately", "recent", "started-again"}
    assert prune_history(store, artifacts, CUTOFF).rows == 0


def test_artifacts_go_with_their_rows_only(store: Store, artifacts: ArtifactStore) -> None:
    insert_rows(store, row("old", age_days=40), row("running", age_days=40, status="started"))
    for job_id in ("old", "running"):
        artifacts.write(job_id, "out.txt", b"data")
    assert prune_history(store, artifacts, CUTOFF).artifact_folders == 1
    assert not (artifacts.directory / "old").exists()
    assert artifacts.path("running", "out.txt").read_bytes() == b"data"


def test_rows_go_in_batches_oldest_first_and_a_pass_can_stop_early(store: Store) -> None:
    insert_rows(store, *[row(f"job{n:02}", age_days=100 - n) for n in range(10)],
                *[row(f"live{n}", age_days=100 - n, status="queued") for n in range(5)])  # skipped, not re-read
    seen: list[int] = []
    outcome = prune_history(store, None, CUTOFF, batch_rows=3, most_rows=6,
                            after_batch=lambda progress: seen.append(progress.rows))
    assert (seen, outcome.rows, outcome.complete) == ([3, 6], 6, False)
    assert ids(store) == {f"job{n:02}" for n in range(6, 10)} | {f"live{n}" for n in range(5)}
    seen.clear()
    assert prune_history(store, None, CUTOFF, batch_rows=3, after_batch=lambda p: seen.append(p.rows)).complete
    assert seen == [3, 4]
    assert ids(store) == {f"live{n}" for n in range(5)}


def test_a_prune_rests_between_batches_as_long_as_each_took(store: Store) -> None:
    insert_rows(store, *[row(f"job{n:02}", age_days=100 - n) for n in range(7)])
    rests: list[float] = []
    outcome = prune_history(store, None, CUTOFF, batch_rows=3, rest_ratio=2.0, sleep=rests.append)
    assert outcome.rows == 7 and len(rests) == 2  # after the first and the second batch; none after the last
    assert all(0 < rest < 10 for rest in rests)
    rests.clear()
    insert_rows(store, *[row(f"again{n}", age_days=100 - n) for n in range(4)])
    prune_history(store, None, CUTOFF, batch_rows=3, rest_ratio=0, sleep=rests.append)
    assert rests == []


def test_a_row_retried_after_its_batch_was_selected_stays(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    insert_rows(store, row("old", age_days=40), row("retried", age_days=40))
    selected = retention._next_batch

    def select_then_retry(*args: Any) -> list[tuple[datetime, str]]:
        batch = selected(*args)
        if batch:  # the job is retried (its row queued again) between the select and the delete
            with store.engine.begin() as connection:
                connection.exec_driver_sql("UPDATE invocations SET status = 'queued', ended_at = NULL "
                                           "WHERE id = 'retried'")
        return batch

    monkeypatch.setattr(retention, "_next_batch", select_then_retry)
    assert prune_history(store, None, CUTOFF).rows == 1
    assert ids(store) == {"retried"}


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("15m", 900), ("12h", 43200), ("30d", 2592000),
                                               ("1.5h", 5400), (" 7D ", 604800)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "d", "30x", "-1d", "0s", "abcd", "nand", "1e400d", "36501d", "3 0d"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


@pytest.fixture
def cli(tmp_path: Path, store: Store) -> Callable[..., Any]:
    def run(*args: str, **env: str) -> Any:
        environ = {"DATABASE_URL": store.url, "RUNNER_DATA_DIR": str(tmp_path), **env}
        return CliRunner(env=environ).invoke(main, ["prune", *args])

    return run


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--older-than", "30"], {}, "'30' is not a duration"),
    (["--older-than", "soon"], {}, "'soon' is not a duration"),
    ([], {}, "--older-than 30d, or set RUNNER_HISTORY_DAYS"),
    ([], {"RUNNER_HISTORY_DAYS": "a month"}, "RUNNER_HISTORY_DAYS='a month' is not a number"),
])
def test_prune_command_refuses_bad_values_with_exit_2(cli: Callable[..., Any], args: list[str],
                                                      env: dict[str, str], message: str) -> None:
    result = cli(*args, **env)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_prune_command_dry_run_counts_then_prunes(cli: Callable[..., Any], store: Store) -> None:
    now = datetime.now(UTC)  # the command prunes by the clock
    insert_rows(store, row("old", age_days=400, now=now), row("recent", age_days=1, now=now),
                row("waiting", age_days=400, status="queued", now=now))
    dry = cli("--older-than", "30d", "--dry-run")
    assert (dry.exit_code, ids(store)) == (0, {"old", "recent", "waiting"})
    assert dry.output.startswith("1 jobs ended before")
    done = cli(**{"RUNNER_HISTORY_DAYS": "30"})
    assert done.exit_code == 0 and done.output.startswith("Deleted 1 jobs")
    assert ids(store) == {"recent", "waiting"}


class FleetWorker:
    """What the prune duty reads of a worker (the recovery parts are not under test here)."""

    connection: fakeredis.FakeRedis
    store: Store
    dead_after = 15.0
    heartbeat_seconds = 5.0
    execution = None
    running_job = None
    stop_requested = True

    def __init__(self, name: str, connection: fakeredis.FakeRedis, store: Store) -> None:
        self.name, self.connection, self.store = name, connection, store

    def queue_names(self) -> list[str]:
        return [self.name]  # each its own recovery turn: only the prune lease is shared


def test_workers_prune_once_across_the_fleet_and_again_soon_while_a_backlog_lasts(
    store: Store, connection: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("runner.worker.duties.recover_abandoned_jobs", lambda *args, **kwargs: None)
    monkeypatch.setattr("runner.worker.duties.mark_lost_jobs", lambda *args: 0)
    monkeypatch.setattr("runner.worker.duties.PRUNE_PASS_ROWS", 2)
    now = datetime.now(UTC)  # the duty prunes by the clock
    insert_rows(store, *[row(f"old{n}", age_days=400 + n, now=now) for n in range(3)],
                row("recent", age_days=1, now=now))
    fleet = [Duties(FleetWorker(f"w{n}", connection, store)) for n in range(3)]  # type: ignore[arg-type]
    for duties in fleet:
        duties.retention = Retention(30, None)
        duties.run()
    assert ids(store) == {"old0", "recent"}  # one pass of at most 2 rows, by one worker
    assert 0 < connection.ttl(PRUNE_PASS_KEY) <= 3  # a backlog: the next pass comes in seconds
    connection.delete(PRUNE_PASS_KEY, *connection.keys(RECOVERY_PASS_KEY + "*"))  # seconds later
    for duties in fleet:
        duties._next_pass = 0.0
        duties.run()
    assert ids(store) == {"recent"}
    assert connection.ttl(PRUNE_PASS_KEY) > 3  # done: the next pass waits the whole interval


def test_workers_do_not_prune_when_history_is_kept_forever(store: Store, connection: fakeredis.FakeRedis,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("runner.worker.duties.recover_abandoned_jobs", lambda *args, **kwargs: None)
    insert_rows(store, row("old", age_days=4000))
    Duties(FleetWorker("w", connection, store)).run()  # type: ignore[arg-type]
    assert ids(store) == {"old"} and not connection.exists(PRUNE_PASS_KEY)
