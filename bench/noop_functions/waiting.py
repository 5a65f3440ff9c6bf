"""Jobs that wait 100 ms, and no-op jobs, in each way a worker runs them (bench only: `make bench-waiting`).

The sleep is the workload: it stands for a call to an LLM server or a webhook, a job that waits on
the network while its CPU idles.
"""

import asyncio
import time

from bench.noop_functions import WAIT_SECONDS
from runner import function


@function(queue="bench", timeout=30)
async def wait_async() -> None:
    """Wait 100 ms on the event loop."""
    await asyncio.sleep(WAIT_SECONDS)


@function(queue="bench", timeout=30, threads=True)
def wait_threads() -> None:
    """Wait 100 ms in a thread of the worker's pool."""
    time.sleep(WAIT_SECONDS)


@function(queue="bench", timeout=30)
def wait_sync() -> None:
    """Wait 100 ms holding the work process: one job at a time, as a plain sync function runs."""
    time.sleep(WAIT_SECONDS)


@function(queue="bench", timeout=30)
async def noop_async() -> None:
    """Return at once, from the event loop."""


@function(queue="bench", timeout=30, threads=True)
def noop_threads() -> None:
    """Return at once, from a thread of the worker's pool."""
