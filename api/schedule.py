"""`?delay=S` and `?at=<ISO 8601>`: when an invocation should run."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from flask import Request

from api.payload import parse_number, refuse_parameter
from runner.errors import MalformedRequest
from runner.services.invocation import MAX_SCHEDULE_AHEAD
from runner.store.models import utcnow

# A `+hh:mm` offset sent unencoded in a query string arrives as ` hh:mm`: give it its plus back.
DECODED_PLUS_OFFSET = re.compile(r" (\d{2}(:?\d{2})?)$")


def read_delay(raw: str) -> timedelta:
    """`delay` as a positive number of seconds, at most MAX_SCHEDULE_AHEAD."""
    limit = MAX_SCHEDULE_AHEAD.total_seconds()
    reason = f"must be a number of seconds, more than 0 and at most {limit:g} ({MAX_SCHEDULE_AHEAD.days} days)"
    seconds = parse_number("delay", raw, reason)
    if not 0 < seconds <= limit:
        raise refuse_parameter("delay", raw, reason)
    return timedelta(seconds=seconds)


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
