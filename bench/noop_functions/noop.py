"""A function that does nothing, to measure the runner's own overhead."""

from runner import function


@function(queue="bench", timeout=30)
def noop() -> None:
    """Do nothing."""
