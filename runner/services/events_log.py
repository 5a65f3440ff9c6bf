"""One structured JSON log line per job event, so a log pipeline can follow a job."""

from __future__ import annotations

import json
import logging

import redis

from runner.services.lifecycle import JobEvent

log = logging.getLogger("runner.events")


def log_job_event(_connection: redis.Redis, event: JobEvent) -> None:
    """Write `event` as one JSON line on the `runner.events` logger."""
    if not log.isEnabledFor(logging.INFO):  # e.g. under gunicorn, whose loggers are its own
        return
    record = {
        "event": event.event,
        "job_id": event.job_id,
        "function": event.function,
        "queue": event.queue,
        "attempt": event.attempt,
        "at": event.at.isoformat(),
    }
    if event.duration_seconds is not None:
        record["duration_seconds"] = round(event.duration_seconds, 6)
    if event.status:
        record["status"] = event.status
    if event.error:
        record["error"] = event.error
    log.info(json.dumps(record, default=str))
