"""The task raw RQ runs in the benchmarks."""


def noop() -> None:
    """Do nothing."""
