"""Schedules: a function run with a fixed input on a cron expression or every S seconds.

SQL keeps each schedule's definition (runner.store.schedule_rows): it survives Redis, as job
history does. Redis keeps the live state the ticks run from, cheap to read on every pass:

    runner:schedules            hash: schedule id -> its definition as JSON (a copy of the row)
    runner:schedules:due        sorted set: each active schedule's id, scored by its next tick
                                (Unix seconds); paused schedules are not in it
    runner:schedules:restored   present while Redis holds every schedule of SQL; when Redis
                                lost its data, the ticker copies the rows back (runner.services.schedule_sync)

Every change writes SQL first, then Redis in one transaction.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

import pydantic

from runner.authoring.registry import Registry
from runner.authoring.spec import field_errors
from runner.authoring.timing import Timing, TimingError, check_timing
from runner.errors import InvalidInput, ScheduleNotFound
from runner.redis_connection import REDIS_ERRORS, redis_unavailable
from runner.services.backends import Backends
from runner.services.callbacks import check_callback_url
from runner.services.invocation import validated_input
from runner.store import schedule_rows
from runner.store.models import utcnow

SCHEDULES_KEY = "runner:schedules"
DUE_KEY = "runner:schedules:due"
RESTORED_KEY = "runner:schedules:restored"
CatchUp = Literal["once", "skip"]
# The widths of their SQL columns (runner.store.models.ScheduleRecord).
MAX_CRON_CHARS = 255
MAX_TIMEZONE_CHARS = 64


class ScheduleRequest(pydantic.BaseModel):
    """The body of `POST /schedules`: a function, its input, and a `cron` or an `every`."""

    model_config = pydantic.ConfigDict(extra="forbid")

    function: str = pydantic.Field(min_length=1, description="The function to run.")
    input: dict[str, Any] = pydantic.Field(default_factory=dict,
                                           description="Its input, validated now as an invocation's is.")
    cron: str | None = pydantic.Field(None, max_length=MAX_CRON_CHARS,
                                      description="A cron expression (five fields), e.g. `*/5 * * * *`.")
    timezone: str | None = pydantic.Field(None, max_length=MAX_TIMEZONE_CHARS,
                                          description="The IANA time zone `cron` is read in (UTC by default).")
    every: pydantic.StrictInt | None = pydantic.Field(None, ge=1,
                                                      description="Seconds between runs, instead of `cron`.")
    catch_up: CatchUp = pydantic.Field("once", description="A tick missed while no worker ran: run it `once` "
                                                           "late, or `skip` it.")

    def timing(self) -> Timing:
        """The timing it asks for; TimingError names a field that cannot be used."""
        return check_timing(self.cron, self.timezone, self.every)


@dataclass(frozen=True)
class Schedule:
    """A schedule's definition."""

    id: str
    function: str
    input: dict[str, Any]
    timing: Timing
    catch_up: str = "once"
    callback_url: str | None = None
    paused: bool = False
    declared: bool = False
    created_at: datetime | None = None

    def column_values(self) -> dict[str, Any]:
        """Its SQL row's columns (and, as JSON, its Redis copy)."""
        return {"id": self.id, "function": self.function, "input": self.input, "cron": self.timing.cron,
                "timezone": self.timing.timezone, "every": self.timing.every, "catch_up": self.catch_up,
                "callback_url": self.callback_url, "paused": self.paused, "declared": self.declared,
                "created_at": self.created_at or utcnow()}

    def to_json(self) -> str:
        """Its Redis copy."""
        values = self.column_values()
        return json.dumps({**values, "created_at": values["created_at"].isoformat()}, separators=(",", ":"))

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> Schedule:
        """A schedule from its row's columns, or its Redis copy read back."""
        created = values.get("created_at")
        created_at = datetime.fromisoformat(created) if isinstance(created, str) else created
        return cls(id=str(values["id"]), function=str(values["function"]), input=dict(values["input"] or {}),
                   timing=Timing(values.get("cron"), str(values.get("timezone") or "UTC"), values.get("every")),
                   catch_up=str(values.get("catch_up") or "once"), callback_url=values.get("callback_url"),
                   paused=bool(values.get("paused")),
                   declared=bool(values.get("declared")),
                   created_at=created_at.replace(tzinfo=UTC) if created_at and not created_at.tzinfo else created_at)

    def view(self, next_run: float | None) -> ScheduleView:
        """What a user sees of it, given its next tick from Redis."""
        created_at = self.created_at.isoformat() if self.created_at else None
        return ScheduleView(
            id=self.id, function=self.function, input=self.input, cron=self.timing.cron,
            timezone=self.timing.timezone, every=self.timing.every, catch_up=self.catch_up,
            callback_url=self.callback_url, paused=self.paused,
            declared=self.declared, created_at=created_at,
            next_run_at=None if next_run is None else datetime.fromtimestamp(next_run, UTC).isoformat(),
            jobs_url=f"/jobs?schedule={self.id}",
        )


@dataclass
class ScheduleView:
    """A schedule as the API shows it."""

    id: str
    function: str
    input: dict[str, Any]
    cron: str | None
    timezone: str
    every: int | None
    catch_up: str
    # Each run's completion callback (the X-Callback-Url the schedule was created with), or null.
    callback_url: str | None
    paused: bool
    # Declared in code with `@function(schedule=...)` (workers register it again as they start).
    declared: bool
    created_at: str | None
    # The next tick (ISO 8601, UTC); null while paused.
    next_run_at: str | None
    jobs_url: str


def read_request(body: Any) -> ScheduleRequest:
    """The body of a POST /schedules, or InvalidInput naming each bad field."""
    try:
        request = ScheduleRequest.model_validate(body)
    except pydantic.ValidationError as exc:
        details = field_errors(exc)
        raise InvalidInput(f"The schedule is invalid: {details[0]['field']}: {details[0]['message']}.",
                           details=details) from None
    try:
        request.timing()
    except TimingError as exc:
        raise InvalidInput(f"The schedule is invalid: {exc.field}: {exc.message}.",
                           details=[{"field": exc.field, "message": exc.message, "type": "value_error"}]) from None
    return request


def create_schedule(body: Any, registry: Registry, backends: Backends,
                    callback_url: str | None = None) -> ScheduleView:
    """Check a new schedule as an invocation is checked (its input and callback URL included), store and start it."""
    request = read_request(body)
    spec = registry.get(request.function)  # FunctionNotFound: 404, as for an invocation
    validated_input(spec, request.input, backends)
    schedule = Schedule(id=uuid.uuid4().hex, function=spec.name, input=request.input, timing=request.timing(),
                        catch_up=request.catch_up, callback_url=check_callback_url(callback_url, backends.settings),
                        created_at=utcnow())
    return save(schedule, backends)


def save(schedule: Schedule, backends: Backends, *, next_run: datetime | None = None) -> ScheduleView:
    """Write the schedule to SQL, then to Redis with its next tick (after now, unless given)."""
    schedule_rows.save_schedule(backends.store, schedule.column_values())
    following = None if schedule.paused else (next_run or schedule.timing.next_after(utcnow())).timestamp()
    try:
        with backends.connection.pipeline() as pipe:
            pipe.hset(SCHEDULES_KEY, schedule.id, schedule.to_json())
            if following is None:
                pipe.zrem(DUE_KEY, schedule.id)
            else:
                pipe.zadd(DUE_KEY, {schedule.id: int(following)})
            pipe.execute()
    except REDIS_ERRORS as exc:
        raise redis_unavailable() from exc
    return schedule.view(following)


def find(schedule_id: str, backends: Backends) -> tuple[Schedule, float | None]:
    """A schedule and its next tick, or ScheduleNotFound."""
    try:
        with backends.connection.pipeline(transaction=False) as pipe:
            pipe.hget(SCHEDULES_KEY, schedule_id)
            pipe.zscore(DUE_KEY, schedule_id)
            raw, score = pipe.execute()
    except REDIS_ERRORS as exc:
        raise redis_unavailable() from exc
    if raw is None:
        raise ScheduleNotFound(f"No schedule has the id {schedule_id!r}.")
    return Schedule.from_values(json.loads(raw)), score


def get_schedule(schedule_id: str, backends: Backends) -> ScheduleView:
    """One schedule's view."""
    schedule, score = find(schedule_id, backends)
    return schedule.view(score)


def list_schedules(backends: Backends) -> list[ScheduleView]:
    """Every schedule's view, oldest first."""
    try:
        with backends.connection.pipeline(transaction=False) as pipe:
            pipe.hgetall(SCHEDULES_KEY)
            pipe.zrange(DUE_KEY, 0, -1, withscores=True)
            definitions, scored = pipe.execute()
    except REDIS_ERRORS as exc:
        raise redis_unavailable() from exc
    next_runs = {member.decode(): score for member, score in scored}
    schedules = sorted((Schedule.from_values(json.loads(raw)) for raw in definitions.values()),
                       key=lambda schedule: (schedule.created_at or utcnow(), schedule.id))
    return [schedule.view(next_runs.get(schedule.id)) for schedule in schedules]


def set_paused(schedule_id: str, paused: bool, backends: Backends) -> ScheduleView:
    """Pause a schedule (no tick runs) or resume it (from its next tick after now)."""
    schedule, _score = find(schedule_id, backends)
    return save(replace(schedule, paused=paused), backends)


def delete_schedule(schedule_id: str, backends: Backends) -> None:
    """Delete a schedule: no tick of it runs from now on (its jobs stay in history)."""
    find(schedule_id, backends)
    schedule_rows.delete_schedule(backends.store, schedule_id)
    try:
        with backends.connection.pipeline() as pipe:
            pipe.hdel(SCHEDULES_KEY, schedule_id)
            pipe.zrem(DUE_KEY, schedule_id)
            pipe.execute()
    except REDIS_ERRORS as exc:
        raise redis_unavailable() from exc
