"""Fan-in: combine the profiles of several `data_processing` jobs (invoked with `?after=<id>,<id>,...`)
into one: rows in all, and per column the counts, missing values, min, max and mean over every part."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from runner import PermanentError, function, parent_results, progress

MAX_COLUMNS = 200
# What a part must carry to be combined: a data_processing result.
PROFILE_KEYS = frozenset({"rows", "columns"})


@function(queue="demo_tasks", timeout=60)
def combine_profiles(
    columns: Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]] | None,
                       Field(min_length=1, max_length=MAX_COLUMNS)] = None,
    title: Annotated[str, Field(min_length=1, max_length=200)] = "Combined profile",
) -> dict[str, Any]:
    """Combine the data_processing profiles of the jobs this one waited for (`?after=`) into one."""
    parts = parent_results()
    if not parts:
        raise PermanentError("combine_profiles fans in data_processing jobs: invoke it with "
                             "?after=<job id>,<job id>,... naming them.")
    for job_id, profile in parts.items():
        if not isinstance(profile, dict) or not PROFILE_KEYS <= profile.keys():
            raise PermanentError(f"Job {job_id} is not a data_processing job: its result has no rows and columns.")
    wanted = set(columns) if columns is not None else None
    combined: dict[str, dict[str, Any]] = {}
    for profile in parts.values():
        for name, stats in profile["columns"].items():
            if wanted is None or name in wanted:
                _merge(combined.setdefault(name, {"count": 0, "missing": 0, "parts": 0}), stats)
    progress(90, f"combined {len(parts)} profiles")
    return {
        "title": title,
        "parts": [{"job_id": job_id, "rows": profile["rows"]} for job_id, profile in parts.items()],
        "rows": sum(int(profile["rows"]) for profile in parts.values()),
        "columns": {name: _finish(stats) for name, stats in combined.items()},
        "missing_columns": sorted(wanted - combined.keys()) if wanted is not None else [],
    }


def _merge(into: dict[str, Any], stats: dict[str, Any]) -> None:
    count = int(stats.get("count", 0))
    into["parts"] += 1
    into["count"] += count
    into["missing"] += int(stats.get("missing", 0))
    for bound, pick in (("min", min), ("max", max)):
        if isinstance(stats.get(bound), int | float):
            into[bound] = pick(into.get(bound, stats[bound]), stats[bound])
    if isinstance(stats.get("mean"), int | float) and count:
        into["weighted_sum"] = into.get("weighted_sum", 0.0) + stats["mean"] * count
        into["numeric_count"] = into.get("numeric_count", 0) + count


def _finish(stats: dict[str, Any]) -> dict[str, Any]:
    numeric = stats.pop("numeric_count", 0)
    weighted = stats.pop("weighted_sum", None)
    if numeric:
        stats["mean"] = round(weighted / numeric, 6)
    return stats
