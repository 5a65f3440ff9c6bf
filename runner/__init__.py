"""Async Task Runner: serverless-style functions on RQ.

Functions in `functions/` use only these names::

    from runner import PermanentError, UploadId, function, progress, save_artifact, upload_path, ...
"""

from runner.authoring.inputs import UploadId
from runner.authoring.registry import function
from runner.errors import PermanentError
from runner.worker.execution import current_attempt, invocation_history, progress, save_artifact, upload_path

__all__ = [
    "PermanentError",
    "UploadId",
    "current_attempt",
    "function",
    "invocation_history",
    "progress",
    "save_artifact",
    "upload_path",
]
