"""Retention of history: deleting the rows of jobs that ended long ago, with their artifacts.

Rows go in small batches, each selected and deleted in a transaction of its own, so that no lock
is held for long and invocations keep flowing while a long history is pruned. Only rows of jobs
that have ended go: the delete checks the status again, so a row retried since its selection
stays (with its artifacts, which are deleted after their row).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from runner.status import TERMINAL_WORDS
from runner.store.database import UNAVAILABLE_ERRORS
from runner.store.files import ArtifactStore
from runner.store.sql_store import Store, database_unavailable
from runner.store.statements import INVOCATIONS

log = logging.getLogger(__name__)

# Rows per batch: a delete of 500 rows takes a few milliseconds, so an invocation waiting behind it
# (SQLite's one writer) waits about that long.
PRUNE_BATCH_ROWS = 500
# After each batch a prune rests as long again as the batch took: it takes at most half of what
# the database (and this machine) can give, so invocations streaming meanwhile keep their latency
# (`make bench-scale`: invocation p99 3.6x while an unpaced prune of 918,000 rows ran, on 2 cores).
PRUNE_REST_RATIO = 1.0


@dataclass(frozen=True)
class Retention:
    """How long history is kept (RUNNER_HISTORY_DAYS), and where the artifacts pruned with it are."""

    days: int
    artifacts: ArtifactStore | None


@dataclass
class PruneOutcome:
    """What a prune deleted (or, in a dry run, would delete)."""

    rows: int = 0
    artifact_folders: int = 0
    # False when the pass stopped at its row limit with more rows to go.
    complete: bool = True


def cutoff_for(days: float, now: datetime) -> datetime:
    """The moment before which a job must have ended for a history of `days` days to drop it."""
    return now - timedelta(days=days)


def _old_and_ended(cutoff: datetime) -> sa.ColumnElement[bool]:
    # ended_at >= created_at, so created_at < cutoff lets the (created_at, id) index drive the scan.
    return sa.and_(INVOCATIONS.c.created_at < cutoff, INVOCATIONS.c.status.in_(TERMINAL_WORDS),
                   INVOCATIONS.c.ended_at < cutoff)


def count_prunable(store: Store, cutoff: datetime) -> int:
    """How many rows a prune at `cutoff` would delete now."""
    with store.session() as session:
        return int(session.scalar(sa.select(sa.func.count()).select_from(INVOCATIONS).where(_old_and_ended(cutoff)))
                   or 0)


def prune_history(store: Store, artifacts: ArtifactStore | None, cutoff: datetime, *,
                  batch_rows: int = PRUNE_BATCH_ROWS, most_rows: int | None = None,
                  after_batch: Callable[[PruneOutcome], None] | None = None,
                  rest_ratio: float = PRUNE_REST_RATIO, sleep: Callable[[float], None] = time.sleep) -> PruneOutcome:
    """Delete rows of jobs that ended before `cutoff`, oldest first, and their artifact folders.

    `most_rows`: stop after about that many (a worker's pass is bounded; the command goes to the end).
    `rest_ratio`: after each batch, rest this many times as long as it took (PRUNE_REST_RATIO).
    """
    outcome = PruneOutcome()
    position: tuple[datetime, str] | None = None
    batch_started = time.monotonic()
    while True:
        if outcome.rows and rest_ratio > 0:
            sleep((time.monotonic() - batch_started) * rest_ratio)
        batch_started = time.monotonic()
        size = batch_rows if most_rows is None else min(batch_rows, most_rows - outcome.rows)
        batch = _next_batch(store, cutoff, position, size)
        position = batch[-1] if batch else position
        deleted = _delete(store, [job_id for _, job_id in batch], cutoff) if batch else []
        outcome.rows += len(deleted)
        if artifacts is not None:
            outcome.artifact_folders += sum(artifacts.delete_job(job_id) for job_id in deleted)
        if batch and after_batch is not None:
            after_batch(outcome)
        if len(batch) < size:
            return outcome
        if most_rows is not None and outcome.rows >= most_rows:
            outcome.complete = False
            return outcome


def _next_batch(store: Store, cutoff: datetime, position: tuple[datetime, str] | None,
                batch_rows: int) -> list[tuple[datetime, str]]:
    created, job_id = INVOCATIONS.c.created_at, INVOCATIONS.c.id
    query = sa.select(created, job_id).where(_old_and_ended(cutoff))
    if position is not None:  # after the last batch: rows skipped as not ended are not read again
        query = query.where(sa.or_(created > position[0], sa.and_(created == position[0], job_id > position[1])))
    with store.session() as session:
        return [(row[0], row[1]) for row in session.execute(query.order_by(created, job_id).limit(batch_rows))]


def _delete(store: Store, job_ids: list[str], cutoff: datetime) -> list[str]:
    # The condition again: a job retried since the select is not ended any more and keeps its row.
    statement = INVOCATIONS.delete().where(INVOCATIONS.c.id.in_(job_ids), _old_and_ended(cutoff))
    try:
        with store.engine.begin() as connection:
            return [row[0] for row in connection.execute(statement.returning(INVOCATIONS.c.id))]
    except UNAVAILABLE_ERRORS as exc:
        raise database_unavailable() from exc

