"""History rows of jobs that Redis lost (a restart without persistence, a flush): marked failed, `JobLost`.

A row says `started` while its job runs. If Redis then loses the job (and with it whatever its
end would have journaled), nothing would ever move the row on. Recovery passes look for rows
`started` and untouched for longer than the dead-worker window whose job Redis no longer holds,
and journal their end. They first apply the journal, and look only if it then holds nothing
older than that moment: a row whose end still waits there is not lost.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import cast

import redis
import sqlalchemy as sa

from runner.journal import entries as journal
from runner.journal.reads import read_history
from runner.rq_seam.keys import job_key
from runner.status import JobStatus
from runner.store.models import InvocationRecord, utcnow
from runner.store.sql_store import Store

log = logging.getLogger(__name__)

BATCH = 100
JOB_LOST = {"type": "JobLost", "message": "Redis no longer holds this job, so how it ended is unknown."}


def stale_started_rows(store: Store, older_than_seconds: float, limit: int = BATCH) -> list[InvocationRecord]:
    """Rows `started` and not updated for `older_than_seconds`, oldest first."""
    cutoff = utcnow() - timedelta(seconds=older_than_seconds)
    query = (
        sa.select(InvocationRecord)
        .where(InvocationRecord.status == JobStatus.STARTED.value, InvocationRecord.updated_at < cutoff)
        .order_by(InvocationRecord.updated_at)
        .limit(limit)
    )
    with store.session() as session:
        return list(session.scalars(query))


def journal_holds_entries_before(connection: redis.Redis, moment: float) -> bool:
    """Whether the journal holds an entry written before `moment` (epoch seconds): not caught up."""
    oldest = cast(list[tuple[bytes, object]], connection.xrange(journal.JOURNAL_KEY, "-", "+", count=1))
    return bool(oldest) and journal.position_of(oldest[0][0]) // journal.POSITION_SCALE / 1000 < moment


def mark_lost_jobs(store: Store, connection: redis.Redis, older_than_seconds: float) -> int:
    """Journal the end of stale `started` rows whose job Redis lost; how many."""
    moment = time.time()
    read_history(connection, store)
    if journal_holds_entries_before(connection, moment):
        return 0
    rows = stale_started_rows(store, older_than_seconds)
    if not rows:
        return 0
    with connection.pipeline(transaction=False) as pipeline:
        for row in rows:
            pipeline.exists(job_key(row.id))
        held = pipeline.execute()
    lost = [row for row, exists in zip(rows, held, strict=True) if not exists]
    if lost:
        now = utcnow()
        with connection.pipeline() as pipeline:
            for row in lost:
                journal.append(pipeline, row.id, {"status": JobStatus.FAILED.value, "error": JOB_LOST, "ended_at": now},
                               fence=row.fence)
            pipeline.execute()
        for row in lost:
            log.error("job %s: its row said started but Redis no longer holds it; marked failed", row.id)
    return len(lost)
