"""A function with a retry policy that always raises PermanentError: it must not be retried."""

from __future__ import annotations

from runner import PermanentError, function


@function(queue="demo_tasks", timeout=30, retries=3, backoff=[1, 1, 1])
def permanent_failure(reason: str = "this input can never succeed") -> dict:
    """Fail for good on the first attempt, despite retries=3."""
    raise PermanentError(reason)
