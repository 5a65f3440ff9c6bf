"""Group commit: threads of one process that write at the same moment share one write.

Each API thread inserts its invocation's row, then sends its job to Redis, before it answers.
Each of those is a round trip whose fixed cost (a commit writes every page the row touched;
a call to Redis is a system call each way and a wake-up) is larger than the one row's or the
one job's share. So whoever finds no write under way writes everything that is waiting by
then, and the others return once theirs is in: each caller's order "row first, then the job"
holds, for fewer commits and calls. With one caller at a time, nothing changes.

When a shared write fails, `retry_alone(error)` says what its callers get:
- True (a transaction failed on one row: nothing was written): each caller writes alone
  again, so the error reaches only the callers it concerns;
- False (the database or Redis is away, or a script may have stopped half way): every caller
  gets the error, as it would have for a write of its own; writing again would only wait for
  the same timeout once per caller, or could write twice.
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
    alone: bool = False  # its shared write failed, and it is to be written again by itself
    error: BaseException | None = None  # its shared write failed with this, for good


class GroupCommit(Generic[Item]):
    """Runs `write(items)` for what concurrent callers of `submit` hand in, several at a time."""

    def __init__(self, write: Callable[[list[Item]], None], *,
                 retry_alone: Callable[[BaseException], bool]) -> None:
        self._write = write
        self._retry_alone = retry_alone
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
            if entry.alone:
                self._write([item])
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
            alone = self._retry_alone(exc)
            for entry in batch:
                entry.done = True
                if alone:
                    entry.alone = True
                else:
                    entry.error = exc
        else:
            for entry in batch:
                entry.done = True


def _start_afresh_in_child(alive: weakref.ref[GroupCommit[Any]]) -> None:
    group = alive()
    if group is not None:
        group._start_afresh()
