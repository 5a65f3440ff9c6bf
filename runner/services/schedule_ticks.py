"""Running schedules' ticks: each tick one job, however many tickers look at once.

A due schedule (its score in `runner:schedules:due` at or before now) is run as an ordinary
invocation (runner.services.invocation: validation, history row, limits, retries, callbacks)
whose job id is derived from the schedule and the tick, `<schedule id>-<tick in Unix seconds>`,
and whose Idempotency-Key claim is that pair too: a second ticker that runs the same tick gets the
first one's job back, never a second job. Only then is the schedule moved on to its next tick,
and only if its score still names the tick run (a compare-and-set in one script). So a ticker
that dies between the two leaves the tick due, and whoever runs it next gets the same job: no
tick is run twice, and none is dropped while some ticker runs.

A tick more than LATE_AFTER_SECONDS old was missed while no ticker ran: the schedule's
`catch_up` says whether it runs once, late (`once`, one job however many ticks were missed), or
is skipped (`skip`). Either way the next tick is the first one after now. A tick less late (a
slow pass) is run, and its schedule moves to the tick after it, so each of its ticks gets a job.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

from runner.authoring.registry import Registry
from runner.errors import FunctionNotFound, InvalidInput, TooManyRequests
from runner.services.backends import Backends
from runner.services.invocation import InvocationOptions, accept_invocation
from runner.services.schedules import DUE_KEY, SCHEDULES_KEY, Schedule

log = logging.getLogger(__name__)

# A tick this much older than now was missed (no ticker ran): `catch_up` decides.
LATE_AFTER_SECONDS = 10.0
# Due schedules run per pass at most (the rest wait for the next pass, a moment later).
MOST_PER_PASS = 100
IDEMPOTENCY_PREFIX = "runner-schedule:"

# KEYS[1]: the due set; ARGV[1]: schedule id, ARGV[2]: the tick just run, ARGV[3]: the next tick.
# Move the schedule on only if no one else moved it (or paused or deleted it) meanwhile.
_ADVANCE = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  return 1
end
return 0
"""
# KEYS[1]: the due set; ARGV[1]: schedule id, ARGV[2]: its tick. Drop a schedule whose definition is gone.
_FORGET = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
"""


def tick_job_id(schedule_id: str, tick: int) -> str:
    """The id of the job of a schedule's tick."""
    return f"{schedule_id}-{tick}"


@dataclass(frozen=True)
class TickOutcome:
    """What became of one due tick: its job (None when skipped or refused) and the next tick."""

    schedule_id: str
    tick: int
    job_id: str | None
    next_tick: int | None


def run_due(backends: Backends, registry: Registry, now: datetime) -> list[TickOutcome]:
    """Run every tick due at `now`; BackendUnavailable (and Redis errors) leave the rest due."""
    connection = backends.connection
    due = cast(list[tuple[bytes, float]],
               connection.zrangebyscore(DUE_KEY, "-inf", int(now.timestamp()), start=0, num=MOST_PER_PASS,
                                        withscores=True))
    return [outcome for member, score in due
            if (outcome := run_tick(backends, registry, member.decode(), int(score), now)) is not None]


def run_tick(backends: Backends, registry: Registry, schedule_id: str, tick: int,
             now: datetime) -> TickOutcome | None:
    """Run one due tick (or skip it) and move its schedule on; None when it is no longer due (another
    ticker ran it, or it was paused or deleted)."""
    connection = backends.connection
    with connection.pipeline(transaction=False) as pipe:
        pipe.hget(SCHEDULES_KEY, schedule_id)
        pipe.zscore(DUE_KEY, schedule_id)
        raw, score = pipe.execute()
    if score is None or int(score) != tick:  # run, paused or deleted since it was seen due
        return None
    if raw is None:
        connection.eval(_FORGET, 1, DUE_KEY, schedule_id, tick)
        return None
    schedule = Schedule.from_values(json.loads(raw))
    late = now.timestamp() - tick > LATE_AFTER_SECONDS
    job_id = None
    if late and schedule.catch_up == "skip":
        log.info("schedule %s: tick %s missed while no worker ran; skipped", schedule_id, _iso(tick))
    else:
        job_id = _start_job(backends, registry, schedule, tick)
    # A tick run on time is followed by the next one, even if that is due already (a slow pass runs
    # each); a late one by the first after now (the ticks between were missed with it).
    next_tick = int(schedule.timing.next_after(now if late else datetime.fromtimestamp(tick, UTC)).timestamp())
    moved = connection.eval(_ADVANCE, 1, DUE_KEY, schedule_id, tick, next_tick)
    return TickOutcome(schedule_id, tick, job_id, next_tick if moved else None)


def _start_job(backends: Backends, registry: Registry, schedule: Schedule, tick: int) -> str | None:
    """The job of the tick (the one already made, if another ticker ran it); None when refused for good."""
    options = InvocationOptions(idempotency_key=f"{IDEMPOTENCY_PREFIX}{schedule.id}:{tick}", schedule=schedule.id,
                                job_id=tick_job_id(schedule.id, tick), callback_url=schedule.callback_url)
    try:
        return accept_invocation(registry.get(schedule.function), schedule.input, backends, options).job_id
    except (FunctionNotFound, InvalidInput) as exc:  # the code (or the callback's host) changed: this tick cannot run
        log.error("schedule %s: tick %s not run: %s", schedule.id, _iso(tick), exc.message)
    except TooManyRequests as exc:  # the function's queue is full: this tick is dropped, as a 429 would be
        log.warning("schedule %s: tick %s not run: %s", schedule.id, _iso(tick), exc.message)
    # IdempotencyConflict (another ticker is making this very job) goes up: the tick stays due.
    return None


def _iso(tick: int) -> str:
    return datetime.fromtimestamp(tick, UTC).isoformat()
