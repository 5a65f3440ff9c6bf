"""Per-function totals of the invocation history, computed by the database (reports read these,
not rows: a year of history is a million rows, and Python would spend seconds just receiving them).

Two statements: counts by function and status (with retries), then the percentiles of the
durations of ended jobs: PostgreSQL's percentile_cont; on SQLite, which has none, only the rows at
the ranks the percentiles interpolate between (a window function numbers them), and Python
interpolates between two values per percentile. Both interpolate linearly (numpy's default).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from runner.status import TERMINAL_WORDS
from runner.store.sql_store import Store
from runner.store.statements import INVOCATIONS

SUMMARY_PERCENTILES = (50, 95)


@dataclass
class FunctionTotals:
    """One function's invocations in a period: counts by status, retries, duration percentiles."""

    function: str
    count: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    retries: int = 0
    # Seconds from start to end of ended jobs that started, by percentile (absent: no such job).
    duration_percentiles: dict[int, float] = field(default_factory=dict)


def summarize_history(store: Store, *, since: datetime | None = None, until: datetime | None = None,
                      function: str | None = None, leave_out: str | None = None,
                      percentiles: Sequence[int] = SUMMARY_PERCENTILES) -> list[FunctionTotals]:
    """Totals of the rows created in [since, until) (of `function`, without the row `leave_out`), by function name."""
    conditions = _period(since, until, function, leave_out)
    attempts = INVOCATIONS.c.attempts
    counts = (sa.select(INVOCATIONS.c.function, INVOCATIONS.c.status, sa.func.count(),
                        sa.func.sum(sa.case((attempts > 1, attempts - 1), else_=0)))
              .where(*conditions).group_by(INVOCATIONS.c.function, INVOCATIONS.c.status))
    totals: dict[str, FunctionTotals] = {}
    with store.session() as session:
        for name, status, count, retries in session.execute(counts):
            entry = totals.setdefault(name, FunctionTotals(name))
            entry.count += count
            entry.statuses[status] = entry.statuses.get(status, 0) + count
            entry.retries += int(retries or 0)
        if percentiles and store.engine.dialect.name == "postgresql":
            for name, values in _postgres_percentiles(session, conditions, percentiles):
                totals[name].duration_percentiles = dict(zip(percentiles, values, strict=True))
        elif percentiles:
            for name, ranked, size in _ranked_durations(session, conditions, store.engine.dialect.name, percentiles):
                totals[name].duration_percentiles = {p: _interpolate(ranked, size, p) for p in percentiles}
    return [totals[name] for name in sorted(totals)]


def _period(since: datetime | None, until: datetime | None, function: str | None,
            leave_out: str | None) -> list[sa.ColumnElement[bool]]:
    conditions: list[sa.ColumnElement[bool]] = []
    if since is not None:
        conditions.append(INVOCATIONS.c.created_at >= since.astimezone(UTC))
    if until is not None:
        conditions.append(INVOCATIONS.c.created_at < until.astimezone(UTC))
    if function:
        conditions.append(INVOCATIONS.c.function == function)
    if leave_out:
        conditions.append(INVOCATIONS.c.id != leave_out)
    return conditions


def _duration(dialect: str) -> sa.ColumnElement[float]:
    """Seconds from started_at to ended_at, to the microsecond, never negative (a clock stepped back)."""
    started, ended = INVOCATIONS.c.started_at, INVOCATIONS.c.ended_at
    if dialect == "postgresql":
        # date_part is double precision (EXTRACT is numeric since PostgreSQL 14: slower to sum up).
        seconds: sa.ColumnElement[float] = sa.func.date_part("epoch", ended - started, type_=sa.Float)
    else:
        # SQLite keeps times as text 'YYYY-MM-DD HH:MM:SS.ffffff': whole seconds by strftime('%s'),
        # microseconds from the text (julianday's doubles would blur them).
        def whole(column: sa.ColumnElement[datetime]) -> sa.ColumnElement[int]:
            return sa.cast(sa.func.strftime("%s", column), sa.Integer)

        def micros(column: sa.ColumnElement[datetime]) -> sa.ColumnElement[int]:
            return sa.cast(sa.func.substr(column, 21, 6), sa.Integer)

        fraction = (micros(ended) - micros(started)) / sa.literal(1_000_000.0)
        seconds = sa.cast((whole(ended) - whole(started)) + fraction, sa.Float)
    return sa.case((seconds < 0, sa.literal(0.0)), else_=seconds)


def _ended(conditions: list[sa.ColumnElement[bool]]) -> list[sa.ColumnElement[bool]]:
    return [*conditions, INVOCATIONS.c.status.in_(TERMINAL_WORDS), INVOCATIONS.c.started_at.is_not(None),
            INVOCATIONS.c.ended_at.is_not(None)]


def _postgres_percentiles(session: sa.orm.Session, conditions: list[sa.ColumnElement[bool]],
                          percentiles: Sequence[int]) -> list[tuple[str, list[float]]]:
    """PostgreSQL's own percentile_cont (the same linear interpolation), one sort per function."""
    fractions = postgresql.array([sa.literal(percent / 100, sa.Float) for percent in percentiles])
    wanted = sa.func.percentile_cont(fractions).within_group(_duration("postgresql"))
    query = sa.select(INVOCATIONS.c.function, wanted).where(*_ended(conditions)).group_by(INVOCATIONS.c.function)
    return [(name, [float(value) for value in values]) for name, values in session.execute(query)]


def _ranked_durations(session: sa.orm.Session, conditions: list[sa.ColumnElement[bool]], dialect: str,
                      percentiles: Sequence[int]) -> list[tuple[str, dict[int, float], int]]:
    """Per function: the durations at the ranks the percentiles need ({rank: seconds}), and how many there are."""
    duration = _duration(dialect).label("duration")
    function = INVOCATIONS.c.function
    ended = _ended(conditions)
    numbered = sa.select(
        function.label("function"), duration,
        (sa.func.row_number().over(partition_by=function, order_by=duration) - 1).label("rank"),
        sa.func.count().over(partition_by=function).label("size"),
    ).where(*ended).subquery()
    wanted = []
    for percent in percentiles:
        low = ((numbered.c.size - 1) * percent) // 100
        wanted += [numbered.c.rank == low, numbered.c.rank == low + 1]
    query = sa.select(numbered.c.function, numbered.c.rank, numbered.c.duration, numbered.c.size).where(
        sa.or_(*wanted))
    found: dict[str, tuple[dict[int, float], int]] = {}
    for name, rank, seconds, size in session.execute(query):
        found.setdefault(name, ({}, int(size)))[0][int(rank)] = float(seconds)
    return [(name, ranked, size) for name, (ranked, size) in found.items()]


def _interpolate(ranked: dict[int, float], size: int, percent: int) -> float:
    # Linear between the closest ranks (numpy's default); (n - 1) * p is exact where p / 100 is not.
    position = (size - 1) * percent / 100
    low = (size - 1) * percent // 100
    high = min(low + 1, size - 1)
    return ranked[low] + (ranked[high] - ranked[low]) * (position - low)
