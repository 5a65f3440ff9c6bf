"""Two of RQ's helpers, answered faster with the same results.

- `resolve_serializer`: RQ resolves the serializer each time it builds a job, queue,
  registry or result (about five times per job), each time with an `isinstance` against a
  runtime-checkable Protocol, which Python 3.11 answers by listing the protocol's attributes
  anew (about 4 % of a worker's CPU for a short job). The answer for a given serializer never
  changes, so it is kept.
- `utcparse`: every job read from Redis parses its timestamps with `strptime` (a regular
  expression per call). RQ's own format is ISO 8601, which `datetime.fromisoformat` reads
  several times faster; anything not in exactly that shape still goes to RQ's parser.

Installed in worker processes only (runner.worker.run), never in the API. Each is a patch of
RQ's module names, kept because the worker's CPU per job is the figure it buys (README,
Performance); an RQ that caches `resolve_serializer`'s answer (or checks the protocol once per
class) and parses its timestamps with `datetime.fromisoformat` would remove them.
tests/unit/test_rq_fast_paths.py checks that each answers as RQ's own does.
"""

from __future__ import annotations

import datetime
import importlib
from typing import Any

from rq import serializers, utils

# The RQ modules that imported `resolve_serializer` by name, so hold their own reference to it.
_IMPORTERS = ("rq.job", "rq.queue", "rq.registry", "rq.results", "rq.scheduler", "rq.worker.base")
# Serializers are a handful of classes, modules and dotted paths; anything past this is not kept.
_MOST_KEPT = 64

_original = serializers.resolve_serializer
_resolved: dict[Any, serializers.Serializer] = {}
_original_utcparse = utils.utcparse
# RQ's timestamp: 2026-11-28T20:29:12.713348Z (len 27).
_RQ_TIMESTAMP_LENGTH = 27


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


def utcparse_iso(string: str) -> datetime.datetime:
    """What RQ's `utcparse(string)` returns: an aware UTC datetime."""
    if len(string) == _RQ_TIMESTAMP_LENGTH and string[10] == "T" and string[-1] == "Z" and string[19] == ".":
        try:
            return datetime.datetime.fromisoformat(string)
        except ValueError:
            pass
    return _original_utcparse(string)


def install() -> None:
    """Make RQ use `resolve_serializer_once` and `utcparse_iso` (idempotent)."""
    serializers.resolve_serializer = resolve_serializer_once  # type: ignore[assignment]
    utils.utcparse = utcparse_iso  # str_to_date, which reads every job's dates, calls it from there
    for name in _IMPORTERS:
        module = importlib.import_module(name)
        if getattr(module, "resolve_serializer", None) is _original:
            module.resolve_serializer = resolve_serializer_once  # type: ignore[attr-defined]
