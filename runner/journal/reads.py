"""The one way history is read: through the journal, so a read sees every job Redis has accepted."""

from __future__ import annotations

import logging
from contextlib import suppress
from typing import Any

import redis
from redis.client import Pipeline

from runner.errors import BackendUnavailable
from runner.journal.entries import ENTRY_FIELD, JOURNAL_KEY, decode
from runner.journal.projector import MAX_BATCH, Projector, fold
from runner.redis_connection import REDIS_ERRORS
from runner.store.sql_store import Store

log = logging.getLogger(__name__)

# What a read applies at most before it reads (the rest of a long backlog waits for the projector).
READ_THROUGH_MOST = 5 * MAX_BATCH


def read_history(connection: redis.Redis, store: Store, most: int = READ_THROUGH_MOST) -> Store:
    """The store, once the journal's waiting entries are applied (up to `most`); when Redis is
    away, the store as it is. BackendUnavailable when the database is away."""
    try:
        Projector(connection, store).catch_up(most)
    except REDIS_ERRORS as exc:
        log.warning("journal: not applied before a read, Redis is unavailable (%s)", exc)
    return store


def queue_read_of_waiting(pipeline: Pipeline) -> None:
    """Queue a read of the journal's waiting entries in `pipeline` (for `apply_read`)."""
    pipeline.xrange(JOURNAL_KEY, "-", "+", count=READ_THROUGH_MOST)


def apply_read(store: Store, reply: Any) -> None:
    """Apply the entries `queue_read_of_waiting` read, so a read of history that follows sees them;
    they stay in the journal for the projector to delete. A database away leaves them to it."""
    entries = [decode(stream_id, fields[ENTRY_FIELD.encode()]) for stream_id, fields in reply or ()]
    if entries:
        with suppress(BackendUnavailable):
            store.apply(fold(entries))
