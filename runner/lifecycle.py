"""Job lifecycle events (accepted, started, retried, finished, failed, stopped) and their listeners.

The API emits `accepted`; the worker emits the rest. Listeners (structured logs, metrics,
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

from runner.models import utcnow

log = logging.getLogger(__name__)

EVENTS = ("accepted", "started", "retried", "finished", "failed", "stopped")

# "module:function" of each listener, called in this order.
LISTENERS: tuple[str, ...] = (
    "runner.events_log:log_job_event",
    "runner.metrics:record_job_event",
    "runner.limits:track_limits",
    "runner.callbacks:enqueue_callbacks",
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


Listener = Callable[[redis.Redis, JobEvent], None]
_loaded: list[Listener] | None = None


def _listeners() -> list[Listener]:
    global _loaded
    if _loaded is None:
        loaded: list[Listener] = []
        for path in LISTENERS:
            module_name, _, name = path.partition(":")
            loaded.append(getattr(importlib.import_module(module_name), name))
        _loaded = loaded
    return _loaded


def emit(connection: redis.Redis, event: JobEvent) -> None:
    """Tell every listener about `event`."""
    for listener in _listeners():
        try:
            listener(connection, event)
        except Exception:  # a listener's bug must not fail the job: log it loudly and go on
            log.exception("lifecycle listener %s failed on %s", getattr(listener, "__name__", listener), event.event)
