"""Children that die with their parent: a killed worker leaves no work horse or scheduler behind.

A work horse runs in a process group of its own, so killing a worker does not reach it: it
would go on running a job that peers are about to retry, and a leftover scheduler would keep
the scheduling lock. On Linux the kernel can kill a child when its parent dies (PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1

_forking_pid = 0


def die_with_parent(parent_pid: int) -> None:
    """In a forked child: have the kernel kill it when its parent dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:
        os._exit(1)  # the parent died before the request took effect


def _remember_forking_process() -> None:
    global _forking_pid
    _forking_pid = os.getpid()


def _die_with_forking_process() -> None:
    die_with_parent(_forking_pid)


def tie_children_to_this_process() -> None:
    """Every process this one forks from now on (work horses, the scheduler) is killed when it dies."""
    os.register_at_fork(before=_remember_forking_process, after_in_child=_die_with_forking_process)
