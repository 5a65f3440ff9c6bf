"""The one way history is read: through the journal, so a read sees every job Redis has accepted."""

from __future__ import annotations

import logging

import redis

from runner.journal.projector import MAX_BATCH, Projector
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
