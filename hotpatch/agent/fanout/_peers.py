"""The workers sharing a patch folder: who is alive, who owns it, start order, asking one."""

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
from typing import Any

from hotpatch.agent._control import request
from hotpatch.agent._names import PIDFILE_NAME, WORKERS_DIR

__all__ = [
    "DELIVER_TIMEOUT_S",
    "PEER_TIMEOUT_S",
    "alive",
    "ask_owner",
    "call",
    "live_workers",
    "other_workers",
    "owner_pid",
    "remove_stale",
    "send",
    "start_lock",
    "workers_dir",
]

log = logging.getLogger("hotpatch")

START_LOCK = "start.lock"
START_WAIT_S = 120.0  # past it a worker starts anyway (a peer hangs in its start-up)
DELIVER_TIMEOUT_S = 60.0
PEER_TIMEOUT_S = 10.0


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


def other_workers(folder: Path) -> dict[int, Path]:
    """``pid -> socket`` of the live workers of ``folder`` but this one."""
    peers = live_workers(folder)
    peers.pop(os.getpid(), None)
    return peers


def call(pid: int, sock: Path, payload: dict[str, Any]) -> dict[str, Any] | None:
    """One worker's answer to ``payload``; ``None`` when it exited meanwhile."""
    try:
        return request(sock, payload, timeout=DELIVER_TIMEOUT_S)
    except (FileNotFoundError, ConnectionRefusedError):
        remove_stale(sock)
        return None
    except OSError as exc:
        if not alive(pid):
            remove_stale(sock)
            return None
        return {"ok": False, "error": f"no answer from worker {pid}: {exc}"}


def send(pid: int, sock: Path, payload: dict[str, Any]) -> dict[str, Any]:
    """One worker's result for a delivery; outcome ``gone`` when it exited meanwhile."""
    answer = call(pid, sock, payload)
    if answer is None:
        return {"pid": pid, "outcome": "gone", "reason": "the worker exited"}
    if "outcome" not in answer:  # refused before it was applied (uid, size, no answer)
        return {
            "pid": pid,
            "outcome": "rejected",
            "reason": answer.get("error"),
            "error_type": answer.get("error_type") or "VerificationFailed",
        }
    answer.pop("ok", None)
    return answer


def ask_owner(folder: Path, payload: dict[str, Any]) -> dict[str, Any] | None:
    """The answer of the worker that owns ``folder``; ``None`` when there is no other owner."""
    owner = owner_pid(folder)
    if owner is None or owner == os.getpid():
        return None
    return call(owner, folder / WORKERS_DIR / f"{owner}.sock", payload)
