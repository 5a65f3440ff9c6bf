"""How often the slots of a work process free (runner.worker.in_flight), from the durations of recent
jobs, and so how many started jobs may wait "on deck" for the next free slot.

A slot that frees begins the job on deck at once, in the thread its job ended in, with no claim,
start or thread hop on the way; jobs claimed and started together also share one script call. So
jobs wait on deck while slots free every SOON_SECONDS or sooner, as many as free within
SOON_SECONDS (none waits much longer), at most DECK_MOST_JOBS. What it buys: docs/architecture.md,
"Complications".
"""

from __future__ import annotations

import time

from runner.worker.claims import MAX_CLAIM_BATCH

# How many recent jobs the typical duration of a job follows.
TYPICAL_OF_JOBS = 16
# Slots free often when one of them frees this often or sooner.
SOON_SECONDS = 0.05
# The most a claim takes: no-op drains of 10,000 jobs ran 13-19 % faster with 16 on deck than with 4, as
# fast as with 24.
DECK_MOST_JOBS = MAX_CLAIM_BATCH


class SlotPace:
    """The typical duration of recent jobs, and when a slot last freed."""

    def __init__(self) -> None:
        self.typical_seconds = float("inf")
        self.last_freed = float("-inf")  # monotonic

    def freed(self, took: float) -> None:
        """A job's code returned after `took` seconds: its slot is free."""
        typical = self.typical_seconds
        self.typical_seconds = took if typical == float("inf") else typical + (took - typical) / TYPICAL_OF_JOBS
        self.last_freed = time.monotonic()

    def frees_often(self, capacity: int) -> bool:
        """Whether one of `capacity` slots frees every SOON_SECONDS or sooner, and one did lately: slots all
        taken by jobs longer than those (none freed for twice the typical duration, or SOON_SECONDS) take no
        more jobs on deck, where they would wait, go back, be taken again."""
        typical = self.typical_seconds
        return (typical / capacity < SOON_SECONDS
                and time.monotonic() - self.last_freed < max(2 * typical, SOON_SECONDS))

    def deck_size(self, capacity: int) -> int:
        """How many jobs may wait on deck now: as many as `capacity` slots free within SOON_SECONDS, at
        least one and at most DECK_MOST_JOBS while they free often, else none."""
        if not self.frees_often(capacity):
            return 0
        return min(DECK_MOST_JOBS, max(1, round(capacity * SOON_SECONDS / max(self.typical_seconds, 1e-6))))
