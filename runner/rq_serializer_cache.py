"""RQ's `resolve_serializer`, remembered per serializer.

RQ resolves the serializer each time it builds a job, queue, registry or result: about five
times per job, and each time an `isinstance` against a runtime-checkable Protocol, which
Python 3.11 answers by listing the protocol's attributes anew (about 4 % of a worker's CPU
for a short job). The answer for a given serializer never changes, so it is kept.
"""

from __future__ import annotations

import importlib
from typing import Any

from rq import serializers

# The RQ modules that imported `resolve_serializer` by name, so hold their own reference to it.
_IMPORTERS = ("rq.job", "rq.queue", "rq.registry", "rq.results", "rq.scheduler", "rq.worker.base")
# Serializers are a handful of classes, modules and dotted paths; anything past this is not kept.
_MOST_KEPT = 64

_original = serializers.resolve_serializer
_resolved: dict[Any, serializers.Serializer] = {}


def resolve_serializer_once(serializer: Any = None) -> serializers.Serializer:
    """What RQ's `resolve_serializer(serializer)` returns, checked once per serializer."""
    try:
        return _resolved[serializer]
    except (KeyError, TypeError):  # TypeError: an unhashable serializer, resolved every time
        pass
    resolved = _original(serializer)
    try:
        if len(_resolved) < _MOST_KEPT:
            _resolved[serializer] = resolved
    except TypeError:
        pass
    return resolved


def install() -> None:
    """Make RQ use `resolve_serializer_once` (idempotent)."""
    serializers.resolve_serializer = resolve_serializer_once  # type: ignore[assignment]
    for name in _IMPORTERS:
        module = importlib.import_module(name)
        if getattr(module, "resolve_serializer", None) is _original:
            module.resolve_serializer = resolve_serializer_once  # type: ignore[attr-defined]
