"""Process trees on Linux: a child that dies with its parent, a subreaper that kills what is left.

``die_with_parent`` asks the kernel to kill this process when its parent ends
(``PR_SET_PDEATHSIG``); ``become_subreaper`` makes orphaned descendants --
a daemon that double-forked and called ``setsid()`` included -- come back to
this process (``PR_SET_CHILD_SUBREAPER``) instead of init, so that
``kill_children`` can kill and reap every one of them. Both are no-ops that
report ``False`` where the kernel lacks them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from pathlib import Path

__all__ = ["become_subreaper", "children", "die_with_parent", "kill_children", "reap"]

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_MAX_ROUNDS = 10_000  # generations of descendants killed one after the other


def _prctl(option: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return False
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return bool(prctl(option, value, 0, 0, 0) == 0)


def die_with_parent(parent: int) -> bool:
    """SIGKILL this process when ``parent`` ends; end at once if it has ended already.

    The kernel ties this to the parent *thread* that forked: call it in a child
    of a single-threaded parent. ``False`` where the kernel cannot do it.
    """
    done = _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent ended before the request took effect
        os._exit(1)
    return done


def become_subreaper() -> bool:
    """Orphaned descendants of this process become its children (to be reaped here)."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def children() -> list[int]:
    """The process ids of this process's children, alive or not yet reaped."""
    pid = os.getpid()
    found: set[int] = set()
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found.update(int(p) for p in (task / "children").read_text().split())
    except OSError:  # no /proc/PID/task/TID/children in this kernel: scan every process
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    if int(fields[1]) == pid:
                        found.add(int(entry.name))
    return sorted(found)


def reap() -> list[tuple[int, int]]:
    """Reap every child that has ended, without waiting: ``(pid, wait status)`` each."""
    done: list[tuple[int, int]] = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return done
        if pid == 0:
            return done
        done.append((pid, status))


def kill_children() -> int:
    """SIGKILL and reap every child, then the orphans that come back to a subreaper, and so on.

    Returns how many processes were killed. Meant for a process whose only
    children are the ones to end (the verifier between two checks).
    """
    killed = 0
    for _ in range(_MAX_ROUNDS):
        reap()
        pids = children()
        if not pids:
            return killed
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
        for pid in pids:
            # Their own children are this process's once they are reaped (subreaper).
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
    return killed
