"""Our faster stand-ins for two RQ helpers answer exactly as RQ's own do."""

from __future__ import annotations

import pytest
from rq import serializers, utils
from rq.serializers import JSONSerializer, PickleSerializer

from runner.rq_seam import fast_paths as rq_fast_paths


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-28T20:29:12.713348Z",  # RQ's format
        "2026-11-28T20:29:12.000000Z",
        "2026-11-28T20:29:12Z",  # RQ's older format: left to RQ's parser
        "2026-11-28T20:29:12.7133Z",  # other shapes too
    ],
)
def test_timestamps_parse_as_rq_parses_them(text: str) -> None:
    theirs = rq_fast_paths._original_utcparse(text)
    ours = rq_fast_paths.utcparse_iso(text)
    assert (ours, ours.tzinfo) == (theirs, theirs.tzinfo)


@pytest.mark.parametrize("text", [
    "2026-11-28",
    "2026-11-28T20:29:12.713348+01:00",
    "2026-13-28T20:29:12.713348Z",  # RQ's shape, so it tries the fast path first: month 13
    "not a date at all, 27 chars",
])
def test_what_rq_refuses_is_still_refused(text: str) -> None:
    with pytest.raises(ValueError):
        rq_fast_paths._original_utcparse(text)
    with pytest.raises(ValueError):
        rq_fast_paths.utcparse_iso(text)


def test_serializers_resolve_as_rq_resolves_them_and_bad_ones_still_fail() -> None:
    for serializer in (None, "json", JSONSerializer, PickleSerializer, "rq.serializers.JSONSerializer"):
        assert rq_fast_paths.resolve_serializer_once(serializer) is rq_fast_paths._original(serializer)
    with pytest.raises(NotImplementedError):
        rq_fast_paths.resolve_serializer_once(object())


def test_install_is_idempotent_and_reaches_the_modules_rq_reads_from() -> None:
    rq_fast_paths.install()
    rq_fast_paths.install()
    import rq.job

    assert utils.utcparse is rq_fast_paths.utcparse_iso
    assert serializers.resolve_serializer is rq_fast_paths.resolve_serializer_once
    assert rq.job.resolve_serializer is rq_fast_paths.resolve_serializer_once  # type: ignore[attr-defined]
