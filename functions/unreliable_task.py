"""A function that fails on purpose for a while, to show the retry policy at work."""

from __future__ import annotations

import random
from typing import Annotated, Any

from pydantic import Field

from runner import current_attempt, function, progress

# A signed 64-bit seed: an unbounded integer of more than 4,300 digits cannot even be written as text.
SEED_LIMIT = 2**63 - 1


@function(queue="demo_tasks", timeout=30, retries=3, backoff=[1, 2, 3])
def unreliable_task(
    fail_times: Annotated[int, Field(ge=0, le=100)] = 0,
    failure_rate: Annotated[float | None, Field(ge=0.0, le=1.0)] = None,
    seed: Annotated[int | None, Field(ge=-SEED_LIMIT, le=SEED_LIMIT)] = None,
) -> dict[str, Any]:
    """Fail the first `fail_times` attempts (or randomly with `failure_rate`), then succeed: shows retries."""
    attempt = current_attempt()
    progress(50, "checking whether this attempt fails")
    # RuntimeError, not PermanentError: these failures are transient, so the policy retries them.
    if attempt <= fail_times:
        raise RuntimeError(f"Simulated failure on attempt {attempt} of {fail_times} planned failures")
    if failure_rate is not None:
        # Seeded per attempt, so a replayed job fails on exactly the same attempts.
        draw = random.Random(f"{seed}:{attempt}").random() if seed is not None else random.random()
        if draw < failure_rate:
            raise RuntimeError(
                f"Simulated random failure on attempt {attempt}: drew {draw:.4f}, below failure_rate {failure_rate}"
            )
    progress(100, "succeeded")
    return {
        "attempt": attempt,
        "succeeded_on_attempt": attempt,
        "planned_failures": fail_times,
        "failure_rate": failure_rate,
    }
