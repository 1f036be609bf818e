"""The workers sharing a patch folder: who is alive, who owns it, start order, asking one."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hotpatch._process import alive
from hotpatch._shortage import shortage_of
from hotpatch.agent._control import request
from hotpatch.agent._control_server import ControlServer
from hotpatch.agent._names import PIDFILE_NAME, WORKERS_DIR

__all__ = [
    "DELIVER_TIMEOUT_S",
    "PEER_TIMEOUT_S",
    "REJOIN_S",
    "Roster",
    "announce",
    "ask_owner",
    "call",
    "live_workers",
    "other_workers",
    "owner_pid",
    "register",
    "remove_stale",
    "send",
    "start_lock",
    "usable",
    "workers_dir",
]

log = logging.getLogger("hotpatch")

START_LOCK = "start.lock"
START_WAIT_S = 120.0  # past it a worker starts anyway (a peer hangs in its start-up)
DELIVER_TIMEOUT_S = 60.0
PEER_TIMEOUT_S = 10.0
REJOIN_S = 10.0  # how long a live worker whose socket went is waited for to register again


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
        answer = {"ok": False, "error": f"no answer from worker {pid}: {exc}"}
        short = shortage_of(exc)
        if short is not None:  # this worker could not ask: not the patch's fault
            answer.update(error_type="Shortage", shortage=short)
        return answer


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
            **({"shortage": answer["shortage"]} if "shortage" in answer else {}),
        }
    answer.pop("ok", None)
    return answer


def ask_owner(folder: Path, payload: dict[str, Any]) -> dict[str, Any] | None:
    """The answer of the worker that owns ``folder``; ``None`` when there is no other owner."""
    owner = owner_pid(folder)
    if owner is None or owner == os.getpid():
        return None
    return call(owner, folder / WORKERS_DIR / f"{owner}.sock", payload)


class Roster:
    """The workers this one has seen registered in ``folder/.workers/``: who is missing now.

    A worker's socket goes when the folder is deleted or replaced, or
    ``.workers/`` removed; each live worker registers again within a retry of
    the owner (``Ownership.keep``). Until it has, a patch sent to the workers
    would miss it: ``peers()`` waits for every worker seen before that is still
    alive, up to ``REJOIN_S``; one that did not come back by then (its agent
    stopped, or it hangs) is said at ERROR and left out.
    """

    def __init__(self, folder: Path, rejoin: float = REJOIN_S) -> None:
        self.folder = folder
        self.rejoin = rejoin
        self._lock = threading.Lock()
        self._seen: set[int] = set()  # registered at the last look
        self._missing: set[int] = set()  # seen before, alive, not registered now
        self._listening: dict[int, tuple[int, int]] = {}  # socket files found served

    def look(self) -> dict[int, Path]:
        """``pid -> socket`` of the other live workers registered now; remembers them.

        A socket file is the worker's once a connection to it was accepted (each new
        file, once): a dead one (a copy of the folder put in place) is not yet."""
        with self._lock:
            peers = other_workers(self.folder)
            for pid, sock in list(peers.items()):
                try:
                    st = sock.lstat()
                except OSError:
                    del peers[pid]
                    continue
                if self._listening.get(pid) != (st.st_dev, st.st_ino):
                    if not _accepts(sock):
                        del peers[pid]
                        continue
                    self._listening[pid] = (st.st_dev, st.st_ino)
            gone = self._seen - peers.keys()
            self._missing = {p for p in self._missing | gone if p not in peers and alive(p)}
            self._seen = set(peers)
            return peers

    def peers(self) -> dict[int, Path]:
        """The other live workers, once every one seen before has registered again."""
        deadline = time.monotonic() + self.rejoin
        peers = self.look()
        while self._missing and time.monotonic() < deadline:
            time.sleep(0.02)
            peers = self.look()
        if self._missing:
            with self._lock:
                missing, self._missing = sorted(self._missing), set()
            log.error(
                "worker %d: worker(s) %s are alive but have not registered in %s again "
                "for %.0f s (their socket went: the folder replaced, or .workers/ removed); "
                "patches go on without them: restart them to bring them to the group's level",
                os.getpid(),
                ", ".join(map(str, missing)),
                self.folder / WORKERS_DIR,
                self.rejoin,
            )
        return peers


def _accepts(sock: Path) -> bool:
    """Does a process serve ``sock`` (a connection is accepted, or the backlog is full)?"""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(PEER_TIMEOUT_S)
        try:
            probe.connect(str(sock))
        except (FileNotFoundError, ConnectionRefusedError):
            return False
        except OSError:
            return True  # served, but busy: its answers will say more
    return True


def register(folder: Path, server: ControlServer) -> bool:
    """Serve this worker's socket again if its file went (with ``.workers/``, made again) or
    is another's (a copy of the folder put in its place): ``True`` when it was made again.

    Only in a folder that is safe (else its owner's guard says what is wrong)."""
    if server.serving or not usable(folder):
        return False
    workers_dir(folder)
    server.stop()
    server.start()
    log.warning(
        "worker %d: its control socket %s was gone (the folder replaced, or %s removed); "
        "made it again",
        os.getpid(),
        server.path,
        WORKERS_DIR,
    )
    return True


def usable(folder: Path) -> bool:
    """Could ``folder`` be taken over, or registered in, now: a directory of this user's
    that no one else can write? (What is wrong otherwise is the owner's guard's to say.)"""
    try:
        st = folder.lstat()
    except OSError:
        return False
    return (
        stat.S_ISDIR(st.st_mode)
        and st.st_uid == os.geteuid()
        and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    )


def announce(folder: Path) -> None:
    """Tell the other live workers this one has started (each ``Roster`` looks again)."""
    for sock in other_workers(folder).values():
        with contextlib.suppress(OSError):  # gone, or hung: its owner finds out
            request(sock, {"cmd": "joined"}, timeout=PEER_TIMEOUT_S)
