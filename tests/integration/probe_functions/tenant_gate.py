"""A gated function with `concurrency=1` per `tenant`: lets tests watch per-key limits across workers."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

from pydantic import Field

from runner import PermanentError, function, progress

GATE_POLL_SECONDS = 0.02
GATE_TIMEOUT_SECONDS = 30.0
GATE_PATTERN = r"^/.+/gate-[a-z0-9-]+$"


@function(queue="demo_tasks", timeout=60, concurrency=1, concurrency_key="tenant")
def tenant_gate(tenant: Annotated[str, Field(min_length=1, max_length=64)],
                gate: Annotated[str, Field(pattern=GATE_PATTERN)]) -> dict:
    """Wait until the file `gate` exists; at most one runs at a time per tenant."""
    started = time.time()
    if not Path(gate).parent.is_dir():
        # Generated inputs (API fuzzing) name no real folder: do not hold a worker for them.
        raise PermanentError(f"The gate's folder {Path(gate).parent} does not exist.")
    progress(10, "at the gate")  # tells tests the attempt holds its tenant's slot
    deadline = time.monotonic() + GATE_TIMEOUT_SECONDS
    while not Path(gate).exists():
        if time.monotonic() > deadline:
            raise RuntimeError("gate never opened")
        time.sleep(GATE_POLL_SECONDS)
    return {"tenant": tenant, "started": started, "ended": time.time()}
