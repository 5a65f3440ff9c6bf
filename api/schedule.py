"""`?delay=S`, `?at=<ISO 8601>`, `?after=<id>,...` and `?expires=S`: when an invocation should run, and
until when it may start."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from flask import Request

from api.payload import parse_number, refuse_parameter
from runner.errors import MalformedRequest
from runner.services.dependencies import MAX_AFTER
from runner.services.invocation import MAX_SCHEDULE_AHEAD
from runner.store.models import utcnow

# A `+hh:mm` offset sent unencoded in a query string arrives as ` hh:mm`: give it its plus back.
DECODED_PLUS_OFFSET = re.compile(r" (\d{2}(:?\d{2})?)$")


def read_seconds(name: str, raw: str) -> float:
    """Query parameter `name` as a positive number of seconds, at most MAX_SCHEDULE_AHEAD (30 days)."""
    limit = MAX_SCHEDULE_AHEAD.total_seconds()
    reason = f"must be a number of seconds, more than 0 and at most {limit:g} ({MAX_SCHEDULE_AHEAD.days} days)"
    seconds = parse_number(name, raw, reason)
    if not 0 < seconds <= limit:
        raise refuse_parameter(name, raw, reason)
    return seconds


def read_delay(raw: str) -> timedelta:
    """`delay` as a positive number of seconds, at most MAX_SCHEDULE_AHEAD."""
    return timedelta(seconds=read_seconds("delay", raw))


def read_expires(request: Request) -> float | None:
    """`expires`: seconds after acceptance past which the job never starts (None when absent)."""
    raw = request.args.get("expires")
    return None if raw is None else read_seconds("expires", raw)


def read_after(request: Request) -> tuple[str, ...]:
    """`after`: the ids of the jobs the invocation waits for, without repeats (() when absent).

    None, or more than MAX_AFTER, is a 400; an id no job has is the 422 of
    runner.services.dependencies.check_after."""
    raw = request.args.get("after")
    if raw is None:
        return ()
    ids = tuple(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))
    if not ids or len(ids) > MAX_AFTER:
        raise refuse_parameter("after", raw[:200], f"must be 1 to {MAX_AFTER} job ids, separated by commas")
    if request.args.get("delay") is not None or request.args.get("at") is not None:
        raise MalformedRequest("Give 'after' or a time ('delay', 'at'), not both.", details={"after": raw[:200]})
    return ids


def read_at(raw: str) -> datetime:
    """`at` as an aware datetime no more than MAX_SCHEDULE_AHEAD from now."""
    text = DECODED_PLUS_OFFSET.sub(r"+\1", raw.strip()) if "T" in raw else raw.strip()
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise refuse_parameter("at", raw, "must be an ISO 8601 date and time, e.g. 2030-01-31T09:30:00Z") from None
    if when.tzinfo is None or when.utcoffset() is None:
        raise refuse_parameter("at", raw, "needs a time zone (e.g. 'Z' or '+02:00')")
    try:
        too_far = when - utcnow() > MAX_SCHEDULE_AHEAD
    except OverflowError:
        too_far = True
    if too_far:
        raise refuse_parameter("at", raw, f"must be at most {MAX_SCHEDULE_AHEAD.days} days ahead")
    return when


def read_schedule(request: Request) -> datetime | None:
    """When to run the invocation: None for now (no parameter, or an `at` that has already passed)."""
    # Unlike `?wait=` or a listing's filters, an empty `?delay=` or `?at=` is refused rather than
    # ignored: ignoring it would run at once a job the client meant to schedule.
    delay, at = request.args.get("delay"), request.args.get("at")
    if delay is not None and at is not None:
        raise MalformedRequest("Give 'delay' or 'at', not both.", details={"delay": delay, "at": at})
    if delay is not None:
        return utcnow() + read_delay(delay)
    if at is not None:
        when = read_at(at)
        # A time already passed (clock skew, a slow client) runs now, like Celery's eta or Cloud Tasks.
        return when if when > utcnow() else None
    return None
