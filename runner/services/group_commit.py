"""Group commit: threads of one process that write at the same moment share one write.

Each API thread sends its invocation's job (and its row's journal entry) to Redis before it
answers. That call's fixed cost (a system call each way and a wake-up) is larger than the one
job's share. So whoever finds no write under way writes everything that is waiting by then, and
the others return once theirs is in: fewer calls, the HTTP invoke figure (README, Performance).
With one caller at a time, nothing changes.

When a shared write fails, every caller gets the error, as it would have for a write of its own:
the call may have run in part, and writing again could queue a job twice.
"""

from __future__ import annotations

import copy
import functools
import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")


@dataclass
class _Entry(Generic[Item]):
    item: Item
    done: bool = False
    error: BaseException | None = None  # its shared write failed with this


class GroupCommit(Generic[Item]):
    """Runs `write(items)` for what concurrent callers of `submit` hand in, several at a time."""

    def __init__(self, write: Callable[[list[Item]], None]) -> None:
        self._write = write
        self._start_afresh()
        # A forked child has none of its parent's threads: a lock one of them held stays held.
        os.register_at_fork(after_in_child=functools.partial(_start_afresh_in_child, weakref.ref(self)))

    def _start_afresh(self) -> None:
        self._turn = threading.Lock()  # held by the caller that is writing
        self._waiting_lock = threading.Lock()
        self._waiting: list[_Entry[Item]] = []

    def submit(self, item: Item) -> None:
        """Return once `item` is written; raise what writing it raised."""
        entry = _Entry(item)
        with self._waiting_lock:
            self._waiting.append(entry)
        with self._turn:
            if not entry.done:
                self._write_waiting()
        if entry.error is not None:
            # A copy per caller: the error is raised in several threads, each with its traceback.
            raise copy.copy(entry.error) from entry.error

    def _write_waiting(self) -> None:
        with self._waiting_lock:
            batch, self._waiting = self._waiting, []
        try:
            self._write([entry.item for entry in batch])
        except BaseException as exc:
            if len(batch) == 1:
                raise
            for entry in batch:
                entry.done = True
                entry.error = exc
        else:
            for entry in batch:
                entry.done = True


def _start_afresh_in_child(alive: weakref.ref[GroupCommit[Any]]) -> None:
    group = alive()
    if group is not None:
        group._start_afresh()
