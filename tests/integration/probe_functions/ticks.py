"""Functions that schedules run in the integration tests: one appends a line per run, one is declared nightly."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from runner import PermanentError, current_attempt, function


@function(queue="demo_tasks", timeout=30)
def record_run(log: str) -> dict:
    """Append one line per run (an attempt) to the file `log`: runs are counted there, not in the history.

    Only a `.log` file under the temporary directory: a fuzzer (tests/integration/test_schemathesis.py)
    invokes every function with made-up input, and this worker runs as whoever runs the tests.
    """
    path = Path(log)
    if not (path.is_absolute() and path.suffix == ".log" and Path(tempfile.gettempdir()) in path.parents):
        raise PermanentError("log must be an absolute path of a .log file under the temporary directory")
    with path.open("a", encoding="utf-8") as file:
        file.write(f"{os.getpid()} {current_attempt()} {time.time()}\n")
    return {"logged": True}


@function(queue="demo_tasks", timeout=30, schedule="0 3 * * *", schedule_input={"note": "nightly"},
          schedule_timezone="Europe/Paris")
def nightly_probe(note: str) -> dict:
    """Declared with a nightly schedule; the test checks that workers registered it."""
    return {"note": note}
