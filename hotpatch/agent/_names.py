"""The names of what an agent keeps in its patch folder, besides the drops and their outcomes."""

from __future__ import annotations

__all__ = ["LOCKFILE_NAME", "PIDFILE_NAME", "SOCKET_NAME", "STAGING", "WORKERS_DIR"]

SOCKET_NAME = ".hotpatch.sock"  # the control socket, unless another path is given
PIDFILE_NAME = ".hotpatch.json"  # who watches the folder: pid, socket (the CLI reads it)
LOCKFILE_NAME = ".hotpatch.lock"  # flock held by the one agent that watches the folder
STAGING = ".staging"  # the verification child's private copies of the drops
WORKERS_DIR = ".workers"  # install(workers=True): each worker's socket, the group's journal
