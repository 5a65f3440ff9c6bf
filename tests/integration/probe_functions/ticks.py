"""Functions that schedules run in the integration tests: one appends a line per run, one is declared nightly."""

from __future__ import annotations

import os
import time

from runner import current_attempt, function


@function(queue="demo_tasks", timeout=30)
def record_run(log: str) -> dict:
    """Append one line per run (an attempt) to the file `log`: runs are counted there, not in the history."""
    with open(log, "a", encoding="utf-8") as file:
        file.write(f"{os.getpid()} {current_attempt()} {time.time()}\n")
    return {"logged": True}


@function(queue="demo_tasks", timeout=30, schedule="0 3 * * *", schedule_input={"note": "nightly"},
          schedule_timezone="Europe/Paris")
def nightly_probe(note: str) -> dict:
    """Declared with a nightly schedule; the test checks that workers registered it."""
    return {"note": note}
