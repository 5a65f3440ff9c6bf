"""Function settings read from the environment at call time, never at import.

A bad value raises PermanentError: a worker's configuration does not change between retries.
"""

from __future__ import annotations

import math
import os

from runner import PermanentError


def env_text(name: str, default: str = "") -> str:
    """The variable's value without surrounding blanks; `default` when it is unset or blank."""
    return os.environ.get(name, "").strip() or default


def env_seconds(name: str, default: float) -> float:
    """A positive, finite number of seconds; `default` when unset or blank, PermanentError when not a number."""
    raw = env_text(name)
    if not raw:
        return default
    try:
        seconds = float(raw)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < math.inf:  # also refuses "nan", which compares false with everything
        raise PermanentError(f"{name}={raw!r} is not a positive number of seconds.")
    return seconds
