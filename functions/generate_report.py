"""Report on the runner's own invocation history: per-function counts, success rate, durations, retries."""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, Field, ValidationInfo

from functions import _column_stats as column_stats
from functions._report_render import KNOWN_STATUSES, render_chart, render_csv, render_html
from runner import function, invocation_history, progress, save_artifact

MAX_FUNCTION_NAME_LENGTH = 128
# No control characters: no function is named with them, and PostgreSQL refuses NUL in a query.
FUNCTION_NAME_PATTERN = r"^[^\x00-\x1f\x7f]+$"
ENDED_STATUSES = frozenset({"finished", "failed", "stopped", "canceled"})
# Rows are counted in a stream of unknown length: report at 500, 1000, 2000, ... rows, so even
# ten million rows give ~15 progress calls.
FIRST_PROGRESS_ROWS = 500
READ_START_PERCENT = 5
READ_END_PERCENT = 55
ARTIFACTS = ("report.csv", "report.html", "report.png")  # the page holds the chart too


def as_utc(value: datetime) -> datetime:
    """`value` in UTC; a naive datetime is taken to be UTC already."""
    if value.tzinfo is None or value.utcoffset() is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _in_utc_range(value: datetime | None) -> datetime | None:
    # 0001-01-01T00:00+14:00 is a valid datetime that has no UTC time (before year 1): refused in the schema.
    if value is not None:
        try:
            as_utc(value)
        except OverflowError:
            raise ValueError("is out of range once converted to UTC") from None
    return value


def _until_after_since(value: datetime | None, info: ValidationInfo) -> datetime | None:
    # Checked here, not in the body: the API answers 422 instead of enqueueing a doomed job; the worker re-validates.
    since = info.data.get("since")
    if value is not None and isinstance(since, datetime) and as_utc(since) >= as_utc(value):
        raise ValueError("must be later than 'since'")
    return value


@dataclass
class FunctionStats:
    """Running totals of one function's invocations."""

    name: str
    count: int = 0
    statuses: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KNOWN_STATUSES, 0))
    # 8 bytes a value instead of a float object's 32: exact percentiles need every duration kept.
    durations: array[float] = field(default_factory=lambda: array("d"))
    retries: int = 0

    def add(self, row: dict[str, Any]) -> None:
        """Count one history row."""
        status = str(row.get("status") or "unknown")
        self.count += 1
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.retries += max(int(row.get("attempts") or 0) - 1, 0)
        started, ended = row.get("started_at"), row.get("ended_at")
        if status in ENDED_STATUSES and isinstance(started, datetime) and isinstance(ended, datetime):
            # invocation_history yields UTC-aware times; a wall-clock step (NTP) must not give a negative duration.
            self.durations.append(max((ended - started).total_seconds(), 0.0))

    def summary(self) -> dict[str, Any]:
        """The report entry of this function."""
        ended = sum(self.statuses.get(status, 0) for status in ENDED_STATUSES)
        ordered = sorted(self.durations)
        return {
            "function": self.name,
            "count": self.count,
            "statuses": dict(self.statuses),
            "success_rate": self.statuses["finished"] / ended if ended else None,
            "p50_seconds": percentile(ordered, 50),
            "p95_seconds": percentile(ordered, 95),
            "retries": self.retries,
        }


def percentile(ordered: list[float], percent: float) -> float | None:
    """Percentile of sorted durations, rounded to microseconds (the timestamps' resolution); None for no values."""
    return round(column_stats.percentile(ordered, percent), 6) if ordered else None


def _read_percent(report_number: int) -> float:
    # The total is unknown while streaming: each report closes half the remaining gap to READ_END_PERCENT.
    span = READ_END_PERCENT - READ_START_PERCENT
    return READ_START_PERCENT + span * (1 - 0.5**report_number)


def summarize(rows: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Per-function summaries (by name) and the number of rows read, reporting progress as rows arrive."""
    stats: dict[str, FunctionStats] = {}
    total, next_report, reports = 0, FIRST_PROGRESS_ROWS, 0
    for row in rows:
        name = str(row.get("function") or "")
        stats.setdefault(name, FunctionStats(name)).add(row)
        total += 1
        if total == next_report:
            reports += 1
            progress(_read_percent(reports), f"read {total} rows")
            next_report *= 2
    progress(READ_END_PERCENT + 5, f"read {total} rows from {len(stats)} functions")
    return [stats[name].summary() for name in sorted(stats)], total


@function(queue="demo_tasks", timeout=300, retries=2, backoff=[5, 30])
def generate_report(
    since: Annotated[
        datetime | None,
        Field(description="Only invocations created at or after this time (naive = UTC)."),
        AfterValidator(_in_utc_range),
    ] = None,
    until: Annotated[
        datetime | None,
        Field(description="Only invocations created before this time (naive = UTC)."),
        AfterValidator(_in_utc_range),
        AfterValidator(_until_after_since),
    ] = None,
    function: Annotated[
        str | None,
        Field(min_length=1, max_length=MAX_FUNCTION_NAME_LENGTH, pattern=FUNCTION_NAME_PATTERN,
              description="Only this function."),
    ] = None,
) -> dict[str, Any]:
    """Report per-function counts, success rate, p50/p95 durations and retries as CSV, HTML (with the chart) and PNG.

    The report's own job is not in it: it reads the history through `invocation_history`, which
    leaves the calling job out.
    """
    start = as_utc(since) if since is not None else None
    end = as_utc(until) if until is not None else None
    progress(READ_START_PERCENT, "reading invocation history")
    functions, total = summarize(invocation_history(start, end, function))
    period = {"since": start.isoformat() if start else None, "until": end.isoformat() if end else None}

    save_artifact("report.csv", render_csv(functions), "text/csv")
    progress(70, "saved report.csv")
    chart = render_chart(functions, period)
    save_artifact("report.png", chart, "image/png")
    progress(80, "saved report.png")
    save_artifact("report.html", render_html(functions, period, total, chart), "text/html")
    progress(100, "saved report.html")
    return {**period, "functions": functions, "total": total, "artifacts": list(ARTIFACTS)}
