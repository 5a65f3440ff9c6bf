"""When a schedule's runs fall: a cron expression read in a time zone, or every S seconds.

Cron expressions are croniter's (five fields, or an alias such as `@daily`), evaluated in the
schedule's zoneinfo time zone: croniter decides what a wall-clock time skipped or repeated by a
daylight-saving change means. `every` ticks fall on whole multiples of S seconds since the Unix
epoch, so every process computes the same ticks for a schedule without being told when it began.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

DEFAULT_TIMEZONE = "UTC"
CRON_FIELDS = 5


class TimingError(ValueError):
    """Raised when a schedule's timing cannot be used; `field` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Timing:
    """A checked cron-in-a-time-zone or every-S-seconds rule."""

    cron: str | None
    timezone: str
    every: int | None

    def next_after(self, moment: datetime) -> datetime:
        """The first tick strictly after `moment` (aware), in UTC."""
        if self.every is not None:
            seconds = (math.floor(moment.timestamp()) // self.every + 1) * self.every
            return datetime.fromtimestamp(seconds, UTC)
        assert self.cron is not None
        local = moment.astimezone(ZoneInfo(self.timezone))
        following: datetime = croniter(self.cron, local).get_next(datetime)
        return following.astimezone(UTC)


def check_timing(cron: Any, timezone: Any, every: Any) -> Timing:
    """A Timing from a schedule's raw fields; TimingError names the first field that cannot be used."""
    if (cron is None) == (every is None):
        raise TimingError("cron" if cron is None else "every", "give exactly one of 'cron' and 'every'")
    if every is not None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise TimingError("every", "must be a whole number of seconds, 1 or more")
        if timezone is not None:
            check_timezone(timezone)
        return Timing(None, DEFAULT_TIMEZONE if timezone is None else timezone, every)
    zone = DEFAULT_TIMEZONE if timezone is None else check_timezone(timezone)
    if not isinstance(cron, str) or not cron.strip():
        raise TimingError("cron", "must be a cron expression such as '*/5 * * * *'")
    expression = " ".join(cron.split())
    if not expression.startswith("@") and len(expression.split()) != CRON_FIELDS:
        raise TimingError("cron", f"must have {CRON_FIELDS} fields (minute hour day month weekday), "
                                  f"got {len(expression.split())}")
    timing = Timing(expression, zone, None)
    try:
        croniter(expression)
    except (CroniterError, ValueError) as exc:
        raise TimingError("cron", f"is not a usable cron expression: {exc}") from None
    try:  # `0 0 30 2 *` parses, but no date ever matches it
        timing.next_after(datetime.now(UTC))
    except (CroniterError, ValueError):
        raise TimingError("cron", "matches no date (e.g. the 30th of February)") from None
    return timing


def check_timezone(timezone: Any) -> str:
    """The name of an IANA time zone zoneinfo knows, or TimingError."""
    if not isinstance(timezone, str) or not timezone:
        raise TimingError("timezone", "must be an IANA time zone name such as 'Europe/Paris'")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name too long for a file
        raise TimingError("timezone", f"unknown time zone {timezone!r}") from None
    return timezone
