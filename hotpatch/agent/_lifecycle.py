"""The parts an agent's life cycle is made of: the folder's lock, its watch, pidfile and guard.

Each part is a context manager, so an agent opens them in order in an
``ExitStack`` and closes them in reverse, also when opening fails half-way.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from hotpatch.agent._control_server import ControlServer
from hotpatch.agent._folder import SIGNATURE_WAIT_S, Folder, Process
from hotpatch.agent._guard import FolderGuard, Unsafe
from hotpatch.agent._names import LOCKFILE_NAME, PIDFILE_NAME
from hotpatch.agent._outcome import write_result
from hotpatch.agent._settings import Checks

__all__ = ["FolderLock", "FolderWatch"]

log = logging.getLogger("hotpatch")


class FolderLock:
    """The flock on ``DIR/.hotpatch.lock``, held while this process watches the folder.

    ``folder`` is where the agent writes: its patch folder, or its state directory.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        """Take the lock if it is free (never waits); ``True`` when this process holds it."""
        if self._fd is not None:
            return True
        fd = os.open(
            self.folder / LOCKFILE_NAME,
            os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def acquire(self) -> FolderLock:
        """Take the lock; ``FileExistsError`` naming the agent that holds it."""
        if not self.try_acquire():
            owner = "another agent"
            with contextlib.suppress(OSError, ValueError, AttributeError):
                pid = json.loads((self.folder / PIDFILE_NAME).read_bytes()).get("pid")
                owner = f"another agent (pid {pid})"
            msg = (
                f"patch folder {self.folder} is already watched by {owner}; stop it first, "
                "or give this service a folder of its own; under a pre-fork server "
                "(gunicorn -w N, uvicorn --workers N) every worker must call "
                "hotpatch.install(..., workers=True) to share the folder"
            )
            raise FileExistsError(msg)
        return self

    def release(self) -> None:
        """Let the next agent have the folder. Idempotent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class FolderWatch:
    """The pidfile (``DIR/.hotpatch.json``: who watches), the ``Folder`` feeding ``process``,
    and its ``FolderGuard``.

    The guard is asked before each drop is taken and filed. A replaced folder
    is taken over: ``lock`` (the folder's, when this watch owns it) taken on
    the new directory, the pidfile written there, the watch moved to it. The
    pidfile, and the control socket ``server`` if its file is gone (it lived in
    the folder), are made again while the folder is safe.

    With ``state`` (the agent's state directory) the pidfile and the outcome
    folders are there, and ``folder`` is only read; the lock is there too, so a
    replaced folder needs no new lock.

    ``retake``, if given, takes the new folder over in place of ``lock`` (the
    pre-fork workers': their lock, sockets and journal); it returns why it
    cannot, or ``None``. The pidfile is removed at the end only if it is still
    this process's (another agent may own a folder that replaced this one's).

    ``on_change``, if given, is told when ``unsafe`` or ``waiting`` change, from
    the folder's threads (which it must not hold up): what shows them can say so
    at once.
    """

    def __init__(
        self,
        folder: Path,
        process: Process,
        *,
        checks: Checks,
        pidfile: Callable[[], dict[str, Any]],
        lock: FolderLock | None = None,
        server: ControlServer | None = None,
        state: Path | None = None,
        retake: Callable[[], str | None] | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.folder = folder
        self._on_change = on_change
        self.state = state
        self._pidfile_path = (state if state is not None else folder) / PIDFILE_NAME
        self._process = process
        self._checks = checks
        self._pidfile = pidfile
        self._lock = lock
        self._server = server
        self._take_over = retake
        self._watcher: Folder | None = None
        self._guard: FolderGuard | None = None
        self._pidfile_written = False

    @property
    def pending(self) -> list[str]:
        """Drops waiting to be processed (the current one first)."""
        return self._watcher.pending if self._watcher is not None else []

    def pending_head(self, limit: int) -> tuple[list[str], int]:
        """The first ``limit`` of ``pending``, and how many there are (``Folder.pending_head``)."""
        return self._watcher.pending_head(limit) if self._watcher is not None else ([], 0)

    @property
    def waiting(self) -> dict[str, object] | None:
        """The drop waiting for a resource (disk, descriptors, memory), and why."""
        return self._watcher.waiting if self._watcher is not None else None

    @property
    def unsafe(self) -> Unsafe | None:
        """Why the folder takes no drop now (what is wrong and the fix), since when;
        ``None``: it does."""
        return self._guard.unsafe if self._guard is not None else None

    def start(self) -> FolderWatch:
        """Write the pidfile, then watch: the files already there are taken first."""
        self._write_pidfile()
        guard = FolderGuard(
            self.folder,
            retake=self._retake,
            upkeep=self._upkeep,
            state=self.state,
            on_change=self._on_change,
        )
        watcher = Folder(
            self.folder,
            self._process,
            signature_wait=SIGNATURE_WAIT_S if self._checks.require_signature else 0.0,
            max_bytes=self._checks.max_bytes,
            ready=lambda: guard.check() is None,
            state=self.state,
            on_change=self._on_change,
        )
        self._watcher, self._guard = watcher, guard
        try:
            guard.start()
            watcher.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop watching (the drop being processed is finished first); remove the pidfile."""
        if self._guard is not None:
            self._guard.stop()
            self._guard = None
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        if self._pidfile_written:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                if json.loads(self._pidfile_path.read_bytes()).get("pid") == os.getpid():
                    self._pidfile_path.unlink()
            self._pidfile_written = False

    def _write_pidfile(self) -> None:
        write_result(self._pidfile_path, self._pidfile())
        self._pidfile_written = True

    def _retake(self) -> str | None:
        """The folder was replaced: take the new one over, or say why not."""
        if self._take_over is not None and self.state is None:
            refused = self._take_over()
            if refused is not None:
                return refused
        elif self._lock is not None and self.state is None:
            self._lock.release()  # the old directory's, gone or elsewhere now
            if not self._lock.try_acquire():
                return (
                    f"patch folder {self.folder} was replaced, and another agent watches the "
                    "new one; this agent takes nothing from it: stop one of them"
                )
        try:
            self._write_pidfile()
            if self._watcher is not None:
                self._watcher.rewatch()
        except OSError as exc:
            return f"patch folder {self.folder} was replaced and cannot be watched: {exc}"
        return None

    def _upkeep(self) -> None:
        """Make the pidfile and the control socket again if they went missing."""
        if not os.path.lexists(self._pidfile_path):
            self._write_pidfile()
        server = self._server
        if server is not None and not os.path.lexists(server.path):
            server.stop()
            try:
                server.start()
            except OSError as exc:
                log.error(  # noqa: TRY400 -- the reason is the message
                    "control socket %s was removed and cannot be made again: %s",
                    server.path,
                    exc,
                )
            else:
                log.warning("control socket %s was removed; made it again", server.path)

    def __enter__(self) -> FolderWatch:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
