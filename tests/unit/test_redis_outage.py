"""A worker's one voice about Redis being away: the backoff, a line per retry, a line when Redis is back."""

from __future__ import annotations

import logging
import time

import pytest

from runner.redis_connection import REDIS_ERRORS, connect_redis
from runner.worker.redis_outage import RedisOutage, pause

PASSWORD = "hunter2/with@signs"


def refused(port: int) -> Exception:
    """The error a real client raises for a port with nothing listening."""
    try:
        connect_redis(f"redis://127.0.0.1:{port}/0").ping()
    except REDIS_ERRORS as exc:
        return exc
    raise AssertionError("something answered on a closed port")


def test_each_retry_writes_one_line_naming_the_masked_url_and_the_variable(
    closed_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    outage = RedisOutage(f"redis://:{PASSWORD}@127.0.0.1:{closed_port}/0")
    caplog.set_level(logging.DEBUG, logger="runner.worker.redis_outage")
    delays = [outage.failed(refused(closed_port)) for _ in range(8)]
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30]
    assert len(caplog.records) == 8 and outage.down
    for record, delay in zip(caplog.records, delays, strict=True):
        message = record.getMessage()
        assert message.startswith(f"Redis at redis://:***@127.0.0.1:{closed_port}/0 is unavailable: ")
        assert "Connection refused" in message and "Check REDIS_URL." in message
        assert f"Retrying in {delay:g} s" in message
        assert PASSWORD not in message and record.exc_info is None


def test_a_caller_may_bound_its_own_wait_and_the_count_goes_on(closed_port: int) -> None:
    outage = RedisOutage(f"redis://127.0.0.1:{closed_port}/0")
    error = refused(closed_port)
    assert [outage.failed(error, most=5) for _ in range(5)] == [1, 2, 4, 5, 5]
    assert outage.failed(error) == 30  # the doubling went on underneath: 16, then 32 bounded at 30


def test_redis_answering_again_is_said_once_and_starts_the_backoff_over(
    closed_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    outage = RedisOutage(f"redis://:{PASSWORD}@127.0.0.1:{closed_port}/0")
    outage.answered()  # no outage: nothing to say
    caplog.set_level(logging.INFO, logger="runner.worker.redis_outage")
    error = refused(closed_port)
    outage.failed(error)
    outage.failed(error)
    caplog.clear()
    outage.answered()
    outage.answered()
    [record] = caplog.records
    assert record.getMessage().startswith(f"Redis at redis://:***@127.0.0.1:{closed_port}/0 answers again after ")
    assert not outage.down and outage.failed(error) == 1


def test_a_pause_ends_early_when_the_worker_stops() -> None:
    began = time.monotonic()
    pause(30, lambda: time.monotonic() - began > 0.2)
    assert time.monotonic() - began < 1
    began = time.monotonic()
    pause(0.3, lambda: False)
    assert time.monotonic() - began >= 0.3

