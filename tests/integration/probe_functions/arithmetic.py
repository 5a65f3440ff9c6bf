"""Quick functions with a retry policy, for the fleet tests: failovers and workers cut off."""

from __future__ import annotations

import time
from typing import Annotated

from pydantic import Field

from runner import current_attempt, function, progress


@function(queue="demo_tasks", timeout=30, retries=3)
def retried_sum(a: int, b: int) -> int:
    """a + b (an attempt whose end a Redis failover lost runs again)."""
    return a + b


@function(queue="demo_tasks", timeout=60, retries=2)
def attempt_report(seconds: Annotated[float, Field(ge=0, le=30)] = 0.0) -> dict:
    """Say which attempt runs (in its progress too), take `seconds`, and say it again as the result."""
    progress(50, f"attempt {current_attempt()}")
    time.sleep(seconds)
    return {"attempt": current_attempt()}


@function(queue="demo_tasks", timeout=30, retries=1)
def fails_first() -> dict:
    """Fail the first attempt (a RuntimeError), finish the second."""
    if current_attempt() == 1:
        raise RuntimeError("the first attempt fails")
    return {"attempt": current_attempt()}


@function(queue="demo_tasks", timeout=60, retries=1)
def held_first(seconds: Annotated[float, Field(ge=0, le=30)] = 0.0) -> dict:
    """Hold the first attempt for `seconds` (long enough for a test to kill its process), finish the next at once."""
    progress(50, f"attempt {current_attempt()}")
    if current_attempt() == 1:
        time.sleep(seconds)
    return {"attempt": current_attempt()}
