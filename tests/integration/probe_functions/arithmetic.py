"""A quick function with a retry policy: an attempt whose end a Redis failover lost runs again."""

from __future__ import annotations

from runner import function


@function(queue="demo_tasks", timeout=30, retries=3)
def retried_sum(a: int, b: int) -> int:
    """a + b."""
    return a + b
