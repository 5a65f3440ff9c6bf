"""Fan-in: combine the profiles of several `data_processing` jobs (invoked with `?after=<id>,<id>,...`)
into one: rows in all, and per column the counts, missing values, min, max and mean over every part."""

from __future__ import annotations

import math
from typing import Annotated, Any, TypeGuard

from pydantic import Field

from runner import PermanentError, function, parent_results, progress

MAX_COLUMNS = 200
# Counts beyond this are no data_processing count (and their sums must stay JSON numbers).
MAX_COUNT = 2**53


@function(queue="demo_tasks", timeout=60)
def combine_profiles(
    columns: Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]] | None,
                       Field(min_length=1, max_length=MAX_COLUMNS)] = None,
    title: Annotated[str, Field(min_length=1, max_length=200)] = "Combined profile",
) -> dict[str, Any]:
    """Combine the profiles of the jobs this one waited for (`?after=`, data profiling jobs) into one."""
    parts = {job_id: _profile(job_id, result) for job_id, result in parent_results().items()}
    if not parts:
        raise PermanentError("combine_profiles fans in data_processing jobs: invoke it with "
                             "?after=<job id>,<job id>,... naming them.")
    wanted = set(columns) if columns is not None else None
    combined: dict[str, dict[str, Any]] = {}
    for _rows, profile_columns in parts.values():
        for name, stats in profile_columns.items():
            if wanted is None or name in wanted:
                _merge(combined.setdefault(name, {"count": 0, "missing": 0, "parts": 0}), stats)
    progress(90, f"combined {len(parts)} profiles")
    return {
        "title": title,
        "parts": [{"job_id": job_id, "rows": rows} for job_id, (rows, _columns) in parts.items()],
        "rows": sum(rows for rows, _columns in parts.values()),
        "columns": {name: _finish(stats) for name, stats in combined.items()},
        "missing_columns": sorted(wanted - combined.keys()) if wanted is not None else [],
    }


def _profile(job_id: str, result: Any) -> tuple[int, dict[str, dict[str, Any]]]:
    """The rows and columns of a data_processing result; PermanentError for anything else."""
    refusal = PermanentError(f"Job {job_id} is not a data_processing job: its result has no rows and columns.")
    if not isinstance(result, dict):
        raise refusal
    rows, columns = result.get("rows"), result.get("columns")
    if not _is_count(rows) or not isinstance(columns, dict) or not all(isinstance(s, dict) for s in columns.values()):
        raise refusal
    return int(rows), columns


def _is_count(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _merge(into: dict[str, Any], stats: dict[str, Any]) -> None:
    count = stats["count"] if _is_count(stats.get("count")) else 0
    into["parts"] += 1
    into["count"] += count
    into["missing"] += stats["missing"] if _is_count(stats.get("missing")) else 0
    for bound, pick in (("min", min), ("max", max)):
        if _is_number(stats.get(bound)):
            into[bound] = pick(into.get(bound, stats[bound]), stats[bound])
    if _is_number(stats.get("mean")) and count:
        into["weighted_sum"] = into.get("weighted_sum", 0.0) + float(stats["mean"]) * count
        into["numeric_count"] = into.get("numeric_count", 0) + count


def _finish(stats: dict[str, Any]) -> dict[str, Any]:
    numeric = stats.pop("numeric_count", 0)
    weighted = stats.pop("weighted_sum", None)
    if numeric and weighted is not None and math.isfinite(weighted / numeric):
        stats["mean"] = round(weighted / numeric, 6)
    return stats
