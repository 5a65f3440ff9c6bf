"""Streaming statistics of a table, one value at a time, in bounded memory.

Per column: inferred type, count, missing, distinct count (exact up to a cap, then a
K-minimum-values sketch), and for numeric columns min, max, mean and the sample standard
deviation (Welford) plus quartiles: exact while a column has at most EXACT_QUANTILE_LIMIT
values, then from a fixed-size reservoir sample. Optional per-group sums, means, minima and
maxima. Nothing here grows with the number of rows beyond those caps.
"""

from __future__ import annotations

import heapq
import math
import random
from array import array
from collections.abc import Iterable, Sequence
from typing import Any

from functions._cell_types import FLOAT, INTEGER, STRING, Number, classify
from runner import PermanentError

EXACT_QUANTILE_LIMIT = 100_000
RESERVOIR_SIZE = 10_000
EXACT_DISTINCT_LIMIT = 10_000
SKETCH_SIZE = 1024  # K of the K-minimum-values sketch: about 1/sqrt(K) = 3% relative error
# Table-wide caps on the exact buffers, so a wide table cannot multiply the per-column caps.
QUANTILE_BUDGET = 4_000_000  # floats, about 32 MB
DISTINCT_BUDGET = 1_000_000  # hashes, about 64 MB
MAX_COLUMNS = 1000
MAX_GROUPS = 10_000
RESERVOIR_SEED = 0  # a fixed seed: the same file gives the same sampled quartiles
DECIMALS = 6
HASH_SPACE = 2**64

class Budget:
    """A table-wide allowance of exactly-kept values, shared by every column."""

    def __init__(self, size: int) -> None:
        self.remaining = size


class QuantileSample:
    """Every value while a column is small; a uniform reservoir sample (Algorithm R) after that."""

    def __init__(self, budget: Budget) -> None:
        self.values: array[float] = array("d")
        self.seen = 0
        self._sampling = False
        self._budget = budget
        self._random = random.Random(RESERVOIR_SEED)

    @property
    def exact(self) -> bool:
        """Whether every value seen is still kept."""
        return len(self.values) == self.seen

    def add(self, value: float) -> None:
        """Take one value into the sample."""
        self.seen += 1
        if not self._sampling:
            if len(self.values) < EXACT_QUANTILE_LIMIT and self._budget.remaining > 0:
                self.values.append(value)
                self._budget.remaining -= 1
                return
            self._start_sampling()
        if len(self.values) < RESERVOIR_SIZE:  # only when the table-wide budget ran out early
            self.values.append(value)
            return
        slot = self._random.randrange(self.seen)
        if slot < RESERVOIR_SIZE:
            self.values[slot] = value

    def _start_sampling(self) -> None:
        kept = self.values
        self._budget.remaining += len(kept)
        self.values = array("d", self._random.sample(list(kept), min(RESERVOIR_SIZE, len(kept))))
        self._sampling = True

    def quartiles(self) -> dict[str, float]:
        """p25, p50 and p75 with linear interpolation between closest ranks (numpy's default)."""
        ordered = sorted(self.values)
        return {name: _round(percentile(ordered, p)) for name, p in (("p25", 25), ("p50", 50), ("p75", 75))}


def percentile(ordered: Sequence[float], percent: float) -> float:
    """Percentile (0-100) of sorted, non-empty values, interpolating between closest ranks (numpy's default)."""
    # Divided last: (n - 1) * 95 is exact, while 0.95 is not, and that last bit can flip a rounded result.
    position = (len(ordered) - 1) * percent / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class DistinctCounter:
    """Exact distinct count of a set of hashes up to a cap, then a K-minimum-values estimate."""

    def __init__(self, budget: Budget) -> None:
        self.exact: set[int] | None = set()
        self._budget = budget
        self._heap: list[int] = []  # negated: the largest of the K smallest hashes sits on top
        self._kept: set[int] = set()

    def add(self, key: str) -> None:
        """Count one value, identified by its text key."""
        # Python's str hash is SipHash, uniform over 64 bits (salted per process).
        hashed = hash(key) % HASH_SPACE
        if self.exact is not None:
            if hashed in self.exact:
                return
            if len(self.exact) < EXACT_DISTINCT_LIMIT and self._budget.remaining > 0:
                self.exact.add(hashed)
                self._budget.remaining -= 1
                return
            self._to_sketch()
        self._sketch(hashed)

    def _to_sketch(self) -> None:
        assert self.exact is not None
        self._budget.remaining += len(self.exact)
        for hashed in self.exact:
            self._sketch(hashed)
        self.exact = None

    def _sketch(self, hashed: int) -> None:
        if hashed in self._kept:
            return
        if len(self._heap) < SKETCH_SIZE:
            heapq.heappush(self._heap, -hashed)
            self._kept.add(hashed)
        elif hashed < -self._heap[0]:
            self._kept.discard(-heapq.heappushpop(self._heap, -hashed))
            self._kept.add(hashed)

    def count(self) -> tuple[int, bool]:
        """(distinct values, whether the count is exact)."""
        if self.exact is not None:
            return len(self.exact), True
        if len(self._heap) < SKETCH_SIZE:
            return len(self._heap), True
        return round((SKETCH_SIZE - 1) * HASH_SPACE / (-self._heap[0] + 1)), False


class ColumnStats:
    """Everything known of one column so far."""

    def __init__(self, quantile_budget: Budget, distinct_budget: Budget) -> None:
        self.count = 0
        self.kinds: dict[str, int] = {}
        self.distinct = DistinctCounter(distinct_budget)
        self.sample = QuantileSample(quantile_budget)
        self.numbers = 0
        self.mean = 0.0
        self.m2 = 0.0  # sum of squared deviations from the running mean (Welford)
        self.minimum: Number | None = None
        self.maximum: Number | None = None

    def add(self, value: Any) -> tuple[str, Number | None, str] | None:
        """Take one cell; return how it was classified (None when missing)."""
        cell = classify(value)
        if cell is None:
            return None
        kind, number, key = cell
        self.count += 1
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        self.distinct.add(key)
        if number is None:
            return cell
        self.numbers += 1
        as_float = float(number)
        delta = as_float - self.mean
        self.mean += delta / self.numbers
        self.m2 += delta * (as_float - self.mean)
        if self.minimum is None or number < self.minimum:
            self.minimum = number
        if self.maximum is None or number > self.maximum:
            self.maximum = number
        self.sample.add(as_float)
        return cell

    @property
    def type(self) -> str:
        """The inferred type: one kind throughout, integers mixed with floats, else string."""
        kinds = set(self.kinds)
        if not kinds:
            return "empty"
        if len(kinds) == 1:
            return kinds.pop()
        return FLOAT if kinds <= {INTEGER, FLOAT} else STRING

    def summary(self, rows: int) -> dict[str, Any]:
        """The column's statistics as JSON."""
        distinct, exact = self.distinct.count()
        result: dict[str, Any] = {"type": self.type, "count": self.count, "missing": rows - self.count,
                                  "unique": distinct, "unique_exact": exact}
        if len(self.kinds) > 1:
            result["value_types"] = dict(sorted(self.kinds.items()))
        if self.type in (INTEGER, FLOAT) and self.numbers:
            std = math.sqrt(self.m2 / (self.numbers - 1)) if self.numbers > 1 else None
            result.update(min=self.minimum, max=self.maximum, mean=_round(self.mean),
                          std=None if std is None else _round(std), **self.sample.quartiles(),
                          quartiles_method="exact" if self.sample.exact else "reservoir",
                          quartiles_sample_size=len(self.sample.values))
        return result


class TableStats:
    """Per-column statistics of a stream of rows, and optional aggregates per group."""

    def __init__(self, group_by: str | None = None) -> None:
        self.rows = 0
        self.columns: dict[str, ColumnStats] = {}
        self.group_by = group_by
        self.groups: dict[str | None, dict[str, Any]] = {}
        self._quantile_budget = Budget(QUANTILE_BUDGET)
        self._distinct_budget = Budget(DISTINCT_BUDGET)

    def add(self, cells: Iterable[tuple[str, Any]]) -> None:
        """Take one row as (column name, value) pairs; absent columns count as missing."""
        self.rows += 1
        numbers: list[tuple[str, Number]] = []
        group_key: str | None = None
        for name, value in cells:
            column = self.columns.get(name) or self.add_column(name)
            cell = column.add(value)
            if name == self.group_by:
                group_key = None if cell is None else cell[2]
            elif cell is not None and cell[1] is not None:
                numbers.append((name, cell[1]))
        if self.group_by is not None:
            self._add_to_group(group_key, numbers)

    def add_column(self, name: str) -> ColumnStats:
        """Start statistics of a column (up to MAX_COLUMNS of them)."""
        if len(self.columns) >= MAX_COLUMNS:
            raise PermanentError(f"The data has more than {MAX_COLUMNS} columns.")
        column = self.columns[name] = ColumnStats(self._quantile_budget, self._distinct_budget)
        return column

    def _add_to_group(self, key: str | None, numbers: list[tuple[str, Number]]) -> None:
        group = self.groups.get(key)
        if group is None:
            if len(self.groups) >= MAX_GROUPS:
                raise PermanentError(
                    f"Column {self.group_by!r} has more than {MAX_GROUPS} distinct values to group by."
                )
            group = self.groups[key] = {"count": 0, "columns": {}}
        group["count"] += 1
        for name, number in numbers:
            aggregate = group["columns"].get(name)
            if aggregate is None:
                group["columns"][name] = [1, number, number, number]  # count, sum, min, max
            else:
                aggregate[0] += 1
                aggregate[1] += number
                aggregate[2] = min(aggregate[2], number)
                aggregate[3] = max(aggregate[3], number)

    def summary(self) -> dict[str, Any]:
        """Rows, per-column statistics and (when grouping) per-group aggregates of numeric columns."""
        result: dict[str, Any] = {
            "rows": self.rows,
            "columns": {name: column.summary(self.rows) for name, column in self.columns.items()},
        }
        if self.group_by is not None:
            numeric = [name for name, column in self.columns.items() if column.type in (INTEGER, FLOAT)]
            ranked = sorted(self.groups.items(), key=lambda item: (-item[1]["count"], item[0] is None, item[0] or ""))
            result["groups"] = {
                "column": self.group_by,
                "count": len(self.groups),
                "items": [_group_summary(key, group, numeric) for key, group in ranked],
            }
        return result


def _group_summary(key: str | None, group: dict[str, Any], numeric: list[str]) -> dict[str, Any]:
    columns = {}
    for name in numeric:
        if name in group["columns"]:
            count, total, low, high = group["columns"][name]
            total = _round(total) if isinstance(total, float) else total
            columns[name] = {"count": count, "sum": total, "mean": _round(total / count), "min": low, "max": high}
    return {"key": key, "count": group["count"], "columns": columns}


def _round(value: float) -> float:
    return round(float(value), DECIMALS)
