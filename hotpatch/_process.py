"""Whether a process is running, by its pid: for the files that name the process that wrote them
(a journal's kept undo point, a folder's owner, an agent's pid file)."""

from __future__ import annotations

import os

__all__ = ["alive"]


def alive(pid: int) -> bool:
    """Is process ``pid`` running? One of another user's (a pid reused) counts as running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
