"""Job lifecycle events (accepted, started, retried, finished, failed, stopped, canceled) and their listeners.

The API emits `accepted`; the worker emits the rest (and `canceled` for a job the runner cancels:
expired, or its dependency failed; runner.services.unstarted). Listeners (structured logs, metrics,
completion callbacks) are plain functions named in `LISTENERS` and loaded once per process.
A listener must not make a job fail: its errors are logged with their traceback, and the job
goes on.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis
from redis.client import Pipeline

from runner.store.models import utcnow

log = logging.getLogger(__name__)

EVENTS = ("accepted", "started", "retried", "finished", "failed", "stopped", "canceled")

# "module:function" of each listener, called in this order.
LISTENERS: tuple[str, ...] = (
    "runner.services.events_log:log_job_event",
    "runner.services.metrics:record_job_event",
    "runner.services.limits:track_limits",
    "runner.services.callbacks:enqueue_callbacks",
)


@dataclass(frozen=True)
class JobEvent:
    """One step in a job's life."""

    event: str
    job_id: str
    function: str
    queue: str
    attempt: int = 0
    duration_seconds: float | None = None
    error: dict[str, str] | None = None
    status: str | None = None
    # Carried by the events that end a job, so the callbacks listener need not read the job to know.
    callback_url: str | None = None
    at: datetime = field(default_factory=utcnow)
    extra: dict[str, Any] = field(default_factory=dict)


# Listeners that only write to Redis for these events: they accept a pipeline in place of the
# connection (`emit_into`), so their writes travel with the change that moves the job on, and
# cost no round trip of their own. (A retried job's limits need a read first.)
WRITE_ONLY_LISTENERS: dict[str, frozenset[str]] = {
    "runner.services.metrics:record_job_event": frozenset(EVENTS),
    "runner.services.limits:track_limits": frozenset(EVENTS) - {"retried"},
}

Listener = Callable[[redis.Redis, JobEvent], None]
_loaded: list[tuple[Listener, frozenset[str]]] | None = None


def _listeners() -> list[tuple[Listener, frozenset[str]]]:
    global _loaded
    if _loaded is None:
        loaded: list[tuple[Listener, frozenset[str]]] = []
        for path in LISTENERS:
            module_name, _, name = path.partition(":")
            loaded.append((getattr(importlib.import_module(module_name), name),
                           WRITE_ONLY_LISTENERS.get(path, frozenset())))
        _loaded = loaded
    return _loaded


def load_listeners() -> None:
    """Import every listener now: a worker does so at start, so that a broken listener stops it
    there, and its first job neither waits for the imports nor grows the process."""
    _listeners()


def emit(connection: redis.Redis, event: JobEvent, *, after_emit_into: bool = False) -> None:
    """Tell every listener about `event` (with `after_emit_into`: those `emit_into` did not)."""
    for listener, write_only in _listeners():
        if not (after_emit_into and event.event in write_only):
            _call(listener, connection, event)


def emit_into(pipeline: Pipeline, event: JobEvent) -> None:
    """Tell the write-only listeners about `event`, their writes queued in `pipeline`.

    Once the pipeline has executed, call `emit(connection, event, after_emit_into=True)`.
    """
    for listener, write_only in _listeners():
        if event.event in write_only:
            _call(listener, pipeline, event)


def _call(listener: Listener, connection: redis.Redis, event: JobEvent) -> None:
    try:
        listener(connection, event)
    except Exception:  # a listener's bug must not fail the job: log it loudly and go on
        log.exception("lifecycle listener %s failed on %s", getattr(listener, "__name__", listener), event.event)
