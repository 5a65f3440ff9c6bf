"""Async Task Runner: serverless-style functions on RQ.

Functions in `functions/` use only these names::

    from runner import PermanentError, current_attempt, function, progress
"""

from runner.errors import PermanentError
from runner.execution import current_attempt, progress
from runner.registry import function

__all__ = ["PermanentError", "current_attempt", "function", "progress"]
