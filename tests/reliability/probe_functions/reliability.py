"""Probes for the reliability suite: real work whose result can be checked, and a job that waits on a gate."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path
from typing import Annotated

from pydantic import Field

from runner import current_attempt, function, progress

GATE_POLL_SECONDS = 0.02
GATE_TIMEOUT_SECONDS = 90.0


def sha256_chain(seed: str, rounds: int) -> str:
    """SHA-256 applied `rounds` times to `seed`: what `hash_chain` computes."""
    digest = seed.encode()
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()


@function(queue="demo_tasks", timeout=30, retries=5, backoff=[1])
def hash_chain(seed: str, rounds: Annotated[int, Field(ge=1, le=1_000_000)] = 20_000) -> dict:
    """Hash `seed` `rounds` times (tens of milliseconds of CPU); survives five killed workers."""
    return {"seed": seed, "rounds": rounds, "sha256": sha256_chain(seed, rounds), "attempt": current_attempt()}


@function(queue="demo_tasks", timeout=120, retries=1)
def gated_retry(gate: str) -> dict:
    """Report 50%, then wait until the file `gate` exists; one retry if its worker dies."""
    progress(50, "waiting for the gate")
    wait_for_gate(gate)
    return {"attempt": current_attempt()}


def wait_for_gate(gate: str) -> None:
    """Block until the file `gate` exists (the test opens it); RuntimeError if it never does."""
    deadline = time.monotonic() + GATE_TIMEOUT_SECONDS
    while not Path(gate).exists():
        if time.monotonic() > deadline:
            raise RuntimeError("gate never opened")
        time.sleep(GATE_POLL_SECONDS)


@function(queue="demo_tasks", timeout=30, retries=1)
def crash_first_attempt() -> dict:
    """End its own process on the first attempt (as a segfault would); succeed on the second."""
    if current_attempt() == 1:
        os._exit(70)
    return {"attempt": current_attempt()}


@function(queue="demo_tasks", timeout=1)
def hang_past_timeout(seconds: Annotated[float, Field(gt=0, le=120)] = 60) -> dict:
    """Sleep past the 1 s timeout with the timeout alarm blocked, as C code that never checks signals would."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    time.sleep(seconds)
    return {"slept": seconds}
