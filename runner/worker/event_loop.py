"""The event loop a work process runs the jobs of `async def` functions on, in a thread of its own,
and the watch on its lag: a job that does CPU work or blocking I/O in a coroutine stalls every
other job on the loop, so it is named in the logs and counted (`loop_blocked`, `/metrics`).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)

# A loop that has not run a callback for this long is blocked by a job: said once per blocking.
LAG_WARNING_SECONDS = 0.5


class LoopThread:
    """An asyncio loop running for ever in a daemon thread; jobs are tasks named after their job ids."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._probe_sent: float | None = None
        self._warned = False
        self._worst_lag = 0.0
        self.blocked_count = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start_task(self, name: str, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run `coroutine` as the task `name` (a job id), from any thread."""
        if threading.get_ident() == self._thread.ident:
            self._create(name, coroutine)  # a job ended on the loop passed its slot on: no wake-up needed
        else:
            self.loop.call_soon_threadsafe(self._create, name, coroutine)

    def _create(self, name: str, coroutine: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coroutine, name=name)
        self._tasks[name] = task
        task.add_done_callback(lambda _task: self._tasks.pop(name, None))

    def close(self) -> None:
        """Stop the loop (its thread ends); tasks still on it are dropped with it."""
        self.loop.call_soon_threadsafe(self.loop.stop)

    def cancel(self, name: str) -> None:
        """Cancel the task `name` if it still runs, from any thread."""
        self.loop.call_soon_threadsafe(self._cancel, name)

    def _cancel(self, name: str) -> None:
        task = self._tasks.get(name)
        if task is not None:
            task.cancel()

    # Lag: called by the in-flight watch every tick (runner.worker.in_flight)

    def check_lag(self) -> None:
        """Send a probe through the loop, or measure how late the last one is; warn past the bound."""
        sent = self._probe_sent
        if sent is None:
            self._probe_sent = time.monotonic()
            self.loop.call_soon_threadsafe(self._probe_answered)
            return
        lag = time.monotonic() - sent
        self._worst_lag = max(self._worst_lag, lag)
        # A loop waiting in its selector is idle, only short of the GIL: no job of it is to blame.
        if lag >= LAG_WARNING_SECONDS and not self._warned and self.running_task() is not None:
            self._warned = True
            self.blocked_count += 1
            log.warning("event loop blocked for %.2f s by job %s, at %s: an async def function must not do CPU "
                        "work or blocking I/O on the loop (use `await asyncio.to_thread(...)`); every other async "
                        "job of this worker waits meanwhile", lag, self.running_task() or "?", self.blocked_at())

    def _probe_answered(self) -> None:
        sent = self._probe_sent
        if sent is not None:
            self._worst_lag = max(self._worst_lag, time.monotonic() - sent)
        self._probe_sent = None
        self._warned = False

    def take_worst_lag(self) -> float:
        """The worst lag seen since the last call (seconds)."""
        worst, self._worst_lag = self._worst_lag, 0.0
        return worst

    def running_task(self) -> str | None:
        """The name (job id) of the task the loop is running now, if any."""
        task = asyncio.current_task(self.loop)  # a read of the loop's current task: safe from another thread
        return task.get_name() if task is not None else None

    def blocked_at(self) -> str:
        """Where the loop's thread is now: file, line and function of its innermost frame."""
        frame = sys._current_frames().get(self._thread.ident or 0)
        if frame is None:
            return "?"
        return f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"
