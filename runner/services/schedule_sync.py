"""Bringing Redis's schedules in line: the ones declared in code, and the ones SQL kept when Redis lost them."""

from __future__ import annotations

import hashlib
import json
import logging
import re

from runner.authoring.registry import Registry
from runner.authoring.spec import FunctionSpec
from runner.services.backends import Backends
from runner.services.schedules import DUE_KEY, RESTORED_KEY, SCHEDULES_KEY, Schedule, save
from runner.store import schedule_rows
from runner.store.models import utcnow

log = logging.getLogger(__name__)

DECLARED_PREFIX = "fn-"
# Longest schedule id: with "-<tick>" its jobs' ids stay within a job id's 64 characters.
MAX_ID_CHARS = 48
READABLE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def declared_schedule_id(function_name: str) -> str:
    """The stable id of the schedule a function declares: `fn-<name>` (hashed when too long or unusual)."""
    readable = DECLARED_PREFIX + function_name
    if len(readable) <= MAX_ID_CHARS and READABLE_NAME.match(function_name):
        return readable
    return DECLARED_PREFIX + hashlib.sha256(function_name.encode()).hexdigest()[:32]


def register_declared(registry: Registry, backends: Backends) -> list[str]:
    """Add or update the schedules functions declare; the ids of those written (none when all are current).

    A declared schedule keeps its pause and its next tick while its declaration is unchanged, so
    workers starting again and again change nothing.
    """
    written = []
    for spec in registry:
        if spec.schedule is None:
            continue
        schedule_id = declared_schedule_id(spec.name)
        raw = backends.connection.hget(SCHEDULES_KEY, schedule_id)
        current = Schedule.from_values(json.loads(raw)) if raw is not None else None
        wanted = _declared(spec, schedule_id, current)
        if current is None or (current.function, current.input, current.timing) != (
                wanted.function, wanted.input, wanted.timing):
            save(wanted, backends)
            written.append(schedule_id)
    return written


def _declared(spec: FunctionSpec, schedule_id: str, current: Schedule | None) -> Schedule:
    assert spec.schedule is not None
    return Schedule(id=schedule_id, function=spec.name, input=spec.schedule.input, timing=spec.schedule.timing,
                    paused=current.paused if current is not None else False, declared=True,
                    created_at=current.created_at if current is not None else utcnow())


def restore_if_lost(backends: Backends) -> int:
    """When Redis lost its schedules (its marker is gone), copy SQL's back; how many were copied.

    A schedule Redis still holds is left as it is; a restored one runs from its next tick after now.
    """
    connection = backends.connection
    if connection.exists(RESTORED_KEY):
        return 0
    rows = schedule_rows.all_schedules(backends.store)
    now = utcnow()
    with connection.pipeline() as pipe:
        for values in rows:
            schedule = Schedule.from_values(values)
            pipe.hsetnx(SCHEDULES_KEY, schedule.id, schedule.to_json())
            if not schedule.paused:
                pipe.zadd(DUE_KEY, {schedule.id: int(schedule.timing.next_after(now).timestamp())}, nx=True)
        pipe.set(RESTORED_KEY, now.isoformat())
        pipe.execute()
    if rows:
        log.info("schedules: %d restored from the database into Redis", len(rows))
    return len(rows)
