"""A gated function with `concurrency=1` and `max_queued=2`: lets tests watch the limits across workers."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

from pydantic import Field

from runner import PermanentError, function, progress

GATE_POLL_SECONDS = 0.02
GATE_TIMEOUT_SECONDS = 30.0
# A gate is a file a test creates in its own temporary folder.
GATE_PATTERN = r"^/.+/gate-[a-z]$"


@function(queue="demo_tasks", timeout=60, concurrency=1, max_queued=2)
def limited_gate(gate: Annotated[str, Field(pattern=GATE_PATTERN)]) -> dict:
    """Wait until the file `gate` exists; at most one runs at a time, at most two wait."""
    started = time.time()
    if not Path(gate).parent.is_dir():
        # Generated inputs (API fuzzing) name no real folder: do not hold a worker for them.
        raise PermanentError(f"The gate's folder {Path(gate).parent} does not exist.")
    progress(10, "at the gate")  # tells tests the attempt holds its slot
    deadline = time.monotonic() + GATE_TIMEOUT_SECONDS
    while not Path(gate).exists():
        if time.monotonic() > deadline:
            raise RuntimeError("gate never opened")
        time.sleep(GATE_POLL_SECONDS)
    return {"gate": gate, "started": started, "ended": time.time()}
