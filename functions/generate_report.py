"""Report on the runner's own invocation history: per-function counts, success rate, durations, retries."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, Field, ValidationInfo

from functions._report_render import KNOWN_STATUSES, render_chart, render_csv, render_html
from runner import function, invocation_summary, progress, save_artifact

MAX_FUNCTION_NAME_LENGTH = 128
# No control characters: no function is named with them, and PostgreSQL refuses NUL in a query.
FUNCTION_NAME_PATTERN = r"^[^\x00-\x1f\x7f]+$"
ENDED_STATUSES = frozenset({"finished", "failed", "stopped", "canceled"})
READ_START_PERCENT = 5
SUMMED_PERCENT = 60
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


def percentile(durations: dict[Any, float], percent: int) -> float | None:
    """A percentile the database computed, rounded to microseconds (the timestamps' resolution); None for none."""
    value = durations.get(percent)
    return round(value, 6) if value is not None else None


def summarize(totals: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """The report entries of the database's per-function totals (by name), and how many rows they count."""
    functions = []
    for entry in totals:
        statuses = {**dict.fromkeys(KNOWN_STATUSES, 0), **entry["statuses"]}
        ended = sum(statuses.get(status, 0) for status in ENDED_STATUSES)
        durations = entry["duration_percentiles"]
        functions.append({
            "function": str(entry["function"] or ""),
            "count": entry["count"],
            "statuses": statuses,
            "success_rate": statuses["finished"] / ended if ended else None,
            "p50_seconds": percentile(durations, 50),
            "p95_seconds": percentile(durations, 95),
            "retries": entry["retries"],
        })
    functions.sort(key=lambda entry: entry["function"])
    return functions, sum(entry["count"] for entry in functions)


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

    The database does the counting and sorting (`invocation_summary`): a year of history is a
    million rows, which would take seconds just to reach Python. The report's own job is not in it.
    """
    start = as_utc(since) if since is not None else None
    end = as_utc(until) if until is not None else None
    progress(READ_START_PERCENT, "summing up invocation history")
    functions, total = summarize(invocation_summary(start, end, function))
    progress(SUMMED_PERCENT, f"summed up {total} invocations of {len(functions)} functions")
    period = {"since": start.isoformat() if start else None, "until": end.isoformat() if end else None}

    save_artifact("report.csv", render_csv(functions), "text/csv")
    progress(70, "saved report.csv")
    chart = render_chart(functions, period)
    save_artifact("report.png", chart, "image/png")
    progress(80, "saved report.png")
    save_artifact("report.html", render_html(functions, period, total, chart), "text/html")
    progress(100, "saved report.html")
    return {**period, "functions": functions, "total": total, "artifacts": list(ARTIFACTS)}
