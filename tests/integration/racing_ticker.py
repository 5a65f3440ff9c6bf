"""A schedule ticker without a lease, for tests: `python -m tests.integration.racing_ticker SECONDS`.

Runs what is due in a tight loop for SECONDS, racing the workers' ticker and any other copy of
itself on the same ticks: only the job id and idempotency claim of each tick keep it to one job.
"""

from __future__ import annotations

import sys
import time

from runner.authoring.registry import Registry
from runner.config import Settings
from runner.services.backends import open_backends
from runner.services.schedule_ticks import run_due
from runner.store.models import utcnow


def main(seconds: float) -> int:
    settings = Settings.from_env()
    backends = open_backends(settings)
    registry = Registry.discover(settings.functions_package)
    deadline = time.monotonic() + seconds
    fired = 0
    while time.monotonic() < deadline:
        fired += sum(1 for outcome in run_due(backends, registry, utcnow()) if outcome.job_id)
        time.sleep(0.005)
    print(f"ticks run (or found already run): {fired}")
    return 0


if __name__ == "__main__":
    sys.exit(main(float(sys.argv[1])))
