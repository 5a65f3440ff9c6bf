"""A function that stays in flight until the test opens a gate: lets tests observe a running job."""

from __future__ import annotations

import time
from pathlib import Path

from runner import function, progress

GATE_POLL_SECONDS = 0.02
GATE_TIMEOUT_SECONDS = 30.0


@function(queue="demo_tasks", timeout=60)
def gated_progress(gate: str) -> dict:
    """Report 50%, wait until the file `gate` exists, then report 100% and finish."""
    progress(50, "halfway")
    deadline = time.monotonic() + GATE_TIMEOUT_SECONDS
    while not Path(gate).exists():
        if time.monotonic() > deadline:
            raise RuntimeError("gate never opened")
        time.sleep(GATE_POLL_SECONDS)
    progress(100, "released")
    return {"released": True}
