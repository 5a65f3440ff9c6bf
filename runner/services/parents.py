"""The state of the jobs a job waits for (`?after=`): read by job views and by whoever settles it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import redis

from runner.journal.reads import read_history
from runner.rq_seam.keys import STATUS_FIELD, job_key
from runner.status import JobStatus
from runner.store.sql_store import Store


def parent_statuses(connection: redis.Redis, store: Store | None, job_ids: Iterable[str]) -> dict[str, str | None]:
    """Each job's status: from Redis, else from its row (None when neither knows it)."""
    ids = list(dict.fromkeys(job_ids))
    if not ids:
        return {}
    with connection.pipeline(transaction=False) as pipeline:
        for job_id in ids:
            pipeline.hget(job_key(job_id), STATUS_FIELD)
        raw = pipeline.execute()
    statuses: dict[str, str | None] = {job_id: value.decode() if value else None for job_id, value in zip(ids, raw,
                                                                                                      strict=True)}
    forgotten = [job_id for job_id, status in statuses.items() if status is None]
    if forgotten and store is not None:
        history = read_history(connection, store)
        for job_id in forgotten:
            record = history.get(job_id)
            statuses[job_id] = record.status if record is not None else None
    return statuses


def waiting_for(connection: redis.Redis, store: Store | None, after: Sequence[str]) -> list[str]:
    """The jobs of `after` that have not finished yet, in order."""
    statuses = parent_statuses(connection, store, after)
    return [job_id for job_id in after if statuses.get(job_id) != JobStatus.FINISHED]
