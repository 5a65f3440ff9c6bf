"""A function that holds its worker for a moment: a burst of them keeps a pool busy (bench only)."""

import time

from runner import function


@function(queue="bench", timeout=30)
def hold(seconds: float = 0.05) -> None:
    """Hold the worker for `seconds`."""
    time.sleep(seconds)
