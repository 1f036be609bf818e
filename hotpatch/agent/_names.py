"""The names of what an agent keeps in its patch folder, and how a drop's name is shown."""

from __future__ import annotations

import os

__all__ = [
    "LOCKFILE_NAME",
    "OUTCOME_LOG_NAME",
    "PIDFILE_NAME",
    "SOCKET_NAME",
    "STAGING",
    "WORKERS_DIR",
    "shown",
]

SOCKET_NAME = ".hotpatch.sock"  # the control socket, unless another path is given
PIDFILE_NAME = ".hotpatch.json"  # who watches the folder: pid, socket (the CLI reads it)
LOCKFILE_NAME = ".hotpatch.lock"  # flock held by the one agent that watches the folder
OUTCOME_LOG_NAME = ".hotpatch.outcomes.jsonl"  # every outcome and rollback, a JSON line each
STAGING = ".staging"  # the verification child's private copies of the drops
WORKERS_DIR = ".workers"  # install(workers=True): each worker's socket, the group's journal


def shown(name: str) -> str:
    """``name`` as people and JSON see it: bytes that are not UTF-8 as ``\\xNN`` escapes.

    A file name is bytes; Python holds the undecodable ones as surrogate escapes,
    which no UTF-8 text (a log line, a result file, a control answer) can carry.
    """
    return os.fsencode(name).decode("utf-8", "backslashreplace")
