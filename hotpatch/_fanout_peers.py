"""The workers sharing a patch folder: their directory, who is alive, who owns it, start order."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from hotpatch._agent import PIDFILE_NAME

__all__ = [
    "WORKERS_DIR",
    "alive",
    "live_workers",
    "owner_pid",
    "remove_stale",
    "start_lock",
    "workers_dir",
]

log = logging.getLogger("hotpatch")

WORKERS_DIR = ".workers"
START_LOCK = "start.lock"
START_WAIT_S = 120.0  # past it a worker starts anyway (a peer hangs in its start-up)


def workers_dir(folder: Path) -> Path:
    """``folder/.workers``, made if missing; refused unless a directory of this user's."""
    workers = folder / WORKERS_DIR
    if not workers.exists() and not workers.is_symlink():
        with contextlib.suppress(FileExistsError):  # another worker made it first
            workers.mkdir(mode=0o700)
    st = workers.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        msg = (
            f"{workers} must be a directory owned by this service's user "
            f"(uid {os.geteuid()}), not a link or a file; remove it and start again"
        )
        raise PermissionError(msg)
    return workers


def live_workers(folder: Path) -> dict[int, Path]:
    """``pid -> socket`` of the workers registered in ``folder``; stale sockets are removed."""
    found: dict[int, Path] = {}
    try:
        entries = list((folder / WORKERS_DIR).iterdir())
    except FileNotFoundError:
        return found
    for path in entries:
        if path.suffix != ".sock" or not path.stem.isdigit():
            continue
        pid = int(path.stem)
        if pid != os.getpid() and not alive(pid):
            remove_stale(path)
            continue
        found[pid] = path
    return found


def alive(pid: int) -> bool:
    """Is process ``pid`` running?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process reuses the pid: not ours, but alive
    return True


def remove_stale(path: Path) -> None:
    """Remove the socket of a worker that is gone (only a socket, never another file)."""
    with contextlib.suppress(OSError):
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
            log.info("removed the control socket %s of a worker that is gone", path)


@contextlib.contextmanager
def start_lock(workers: Path) -> Iterator[None]:
    """Hold the flock on ``workers/start.lock``: the workers of a folder start one at a time."""
    fd = os.open(workers / START_LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + START_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    log.warning(
                        "worker %d: another worker has been starting for %.0f s; starting anyway",
                        os.getpid(),
                        START_WAIT_S,
                    )
                    break
                time.sleep(0.01)
        yield
    finally:
        os.close(fd)


def owner_pid(folder: Path) -> int | None:
    """The pid in ``.hotpatch.json``: the worker that owns ``folder`` (``None``: unknown)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        pid = json.loads((folder / PIDFILE_NAME).read_bytes()).get("pid")
        return pid if isinstance(pid, int) else None
    return None
