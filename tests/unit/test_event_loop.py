"""The event loop of jobs in slots: a task that blocks it is named and counted; an idle loop is not blamed."""

from __future__ import annotations

import logging
import time

import pytest

from runner.worker.event_loop import LAG_WARNING_SECONDS, LoopThread


async def spin(seconds: float) -> None:
    """CPU work in a coroutine: the mistake the loop's watch reports."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass


def test_a_task_that_blocks_the_loop_is_named_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    loop = LoopThread("test-loop")
    try:
        loop.start_task("job-1", spin(LAG_WARNING_SECONDS + 0.4))
        time.sleep(0.05)
        loop.check_lag()  # the probe waits behind the spinning task
        time.sleep(LAG_WARNING_SECONDS + 0.1)
        with caplog.at_level(logging.WARNING, logger="runner.worker.event_loop"):
            loop.check_lag()
        assert loop.blocked_count == 1
        assert "by job job-1" in caplog.text and "in spin" in caplog.text
        assert loop.take_worst_lag() >= LAG_WARNING_SECONDS
    finally:
        loop.close()


def test_an_idle_loop_short_of_time_is_not_blamed(caplog: pytest.LogCaptureFixture) -> None:
    loop = LoopThread("test-loop")
    try:
        loop._probe_sent = time.monotonic() - 2 * LAG_WARNING_SECONDS  # a probe sent, its answer late
        with caplog.at_level(logging.WARNING, logger="runner.worker.event_loop"):
            loop.check_lag()  # nothing runs on the loop: no job blocks it
        assert loop.blocked_count == 0 and "blocked" not in caplog.text
    finally:
        loop.close()
