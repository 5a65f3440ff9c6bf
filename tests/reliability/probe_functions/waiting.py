"""Probes that wait: `async def` and `threads=True` functions a worker runs many at once.

The gates are files the test creates: a job stays in flight until its gate exists, so a test can
act (cancel, SIGTERM, SIGKILL) on jobs known to be running.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Annotated

from pydantic import Field

from runner import function, progress
from tests.reliability.probe_functions.reliability import GATE_POLL_SECONDS, GATE_TIMEOUT_SECONDS, wait_for_gate


async def gate_opened(gate: str) -> None:
    """Wait on the loop until the file `gate` exists (the test opens it); RuntimeError if it never does."""
    deadline = time.monotonic() + GATE_TIMEOUT_SECONDS
    while not Path(gate).exists():
        if time.monotonic() > deadline:
            raise RuntimeError("gate never opened")
        await asyncio.sleep(GATE_POLL_SECONDS)


@function(queue="waiting", timeout=120, retries=1)
async def gated_async(gate: str, tag: int = 0) -> dict:
    """Report 50 %, wait (on the loop) until the file `gate` exists, then finish."""
    progress(50, "waiting for the gate")
    await gate_opened(gate)
    return {"tag": tag}


@function(queue="waiting", timeout=120, retries=1, threads=True)
def gated_thread(gate: str, tag: int = 0) -> dict:
    """Report 50 %, wait (in a pool thread) until the file `gate` exists, then finish."""
    progress(50, "waiting for the gate")
    wait_for_gate(gate)
    return {"tag": tag}


@function(queue="waiting", timeout=30)
async def wait_async(seconds: Annotated[float, Field(ge=0, le=10)]) -> dict:
    """Wait `seconds` on the loop (a call to a slow server, say), then finish."""
    started = time.monotonic()
    await asyncio.sleep(seconds)
    return {"waited": round(time.monotonic() - started, 3)}


@function(queue="waiting", timeout=30, threads=True)
def wait_thread(seconds: Annotated[float, Field(ge=0, le=10)]) -> dict:
    """Wait `seconds` in a pool thread, then finish."""
    started = time.monotonic()
    time.sleep(seconds)
    return {"waited": round(time.monotonic() - started, 3)}


@function(queue="waiting", timeout=1)
async def overstay_async(seconds: Annotated[float, Field(gt=0, le=60)] = 30) -> dict:
    """Wait past its 1 s timeout."""
    await asyncio.sleep(seconds)
    return {"overstayed": False}


@function(queue="waiting", timeout=1, threads=True)
def overstay_thread(seconds: Annotated[float, Field(gt=0, le=60)] = 30) -> dict:
    """Wait past its 1 s timeout, in short sleeps (a thread is interrupted between two of them)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(GATE_POLL_SECONDS)
    return {"overstayed": False}


@function(queue="waiting", timeout=30)
async def spin_async(seconds: Annotated[float, Field(gt=0, le=10)] = 1.0) -> dict:
    """CPU work in a coroutine: blocks the worker's event loop for `seconds` (the mistake the worker reports)."""
    deadline = time.monotonic() + seconds
    spins = 0
    while time.monotonic() < deadline:
        spins += 1
    return {"spins": spins}


@function(queue="waiting", timeout=120, concurrency=2)
async def limited_async(gate: str, tag: int = 0) -> dict:
    """At most 2 at once across workers (`concurrency`): report 50 %, wait for the gate, finish."""
    progress(50, "waiting for the gate")
    await gate_opened(gate)
    return {"tag": tag}
