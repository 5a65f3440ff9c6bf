"""Async Task Runner: serverless-style functions on RQ.

Functions in `functions/` use only these names::

    from runner import PermanentError, UploadId, function, progress, save_artifact, upload_path, ...
    from runner import aprogress, asave_artifact, aparent_results  # in an `async def` function

They are loaded when first asked for, and load neither RQ, Redis nor SQLAlchemy; importing a
subpackage (the HTTP client, say) does not load them at all.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.authoring.context import (
        aparent_results,
        aprogress,
        asave_artifact,
        current_attempt,
        invocation_history,
        invocation_summary,
        parent_results,
        progress,
        save_artifact,
        upload_path,
    )
    from runner.authoring.inputs import UploadId
    from runner.authoring.registry import function
    from runner.errors import PermanentError

# Each public name and the module that defines it.
_PUBLIC = {
    "PermanentError": "runner.errors",
    "UploadId": "runner.authoring.inputs",
    "aparent_results": "runner.authoring.context",
    "aprogress": "runner.authoring.context",
    "asave_artifact": "runner.authoring.context",
    "current_attempt": "runner.authoring.context",
    "function": "runner.authoring.registry",
    "invocation_history": "runner.authoring.context",
    "parent_results": "runner.authoring.context",
    "invocation_summary": "runner.authoring.context",
    "progress": "runner.authoring.context",
    "save_artifact": "runner.authoring.context",
    "upload_path": "runner.authoring.context",
}

__all__ = [
    "PermanentError",
    "UploadId",
    "aparent_results",
    "aprogress",
    "asave_artifact",
    "current_attempt",
    "function",
    "invocation_history",
    "parent_results",
    "invocation_summary",
    "progress",
    "save_artifact",
    "upload_path",
]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'runner' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value  # looked up once
    return value
