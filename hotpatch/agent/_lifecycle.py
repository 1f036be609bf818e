"""The parts an agent's life cycle is made of: the folder's lock, and its watch with the pidfile.

Each part is a context manager, so an agent opens them in order in an
``ExitStack`` and closes them in reverse, also when opening fails half-way.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from hotpatch.agent._folder import SIGNATURE_WAIT_S, Folder
from hotpatch.agent._names import LOCKFILE_NAME, PIDFILE_NAME
from hotpatch.agent._outcome import Outcome, write_result
from hotpatch.agent._settings import Checks

__all__ = ["FolderLock", "FolderWatch"]


class FolderLock:
    """The flock on ``DIR/.hotpatch.lock``, held while this process watches the folder."""

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
    """The pidfile (``DIR/.hotpatch.json``: who watches) and the ``Folder`` feeding ``process``."""

    def __init__(
        self,
        folder: Path,
        process: Callable[[Path], Outcome],
        *,
        checks: Checks,
        pidfile: Callable[[], dict[str, Any]],
    ) -> None:
        self.folder = folder
        self._process = process
        self._checks = checks
        self._pidfile = pidfile
        self._watcher: Folder | None = None
        self._pidfile_written = False

    @property
    def pending(self) -> list[str]:
        """Drops waiting to be processed (the current one first)."""
        return self._watcher.pending if self._watcher is not None else []

    def start(self) -> FolderWatch:
        """Write the pidfile, then watch: the files already there are taken first."""
        write_result(self.folder / PIDFILE_NAME, self._pidfile())
        self._pidfile_written = True
        watcher = Folder(
            self.folder,
            self._process,
            signature_wait=SIGNATURE_WAIT_S if self._checks.require_signature else 0.0,
            max_bytes=self._checks.max_bytes,
        )
        try:
            watcher.start()
        except BaseException:
            watcher.stop()
            self.stop()
            raise
        self._watcher = watcher
        return self

    def stop(self) -> None:
        """Stop watching (the drop being processed is finished first); remove the pidfile."""
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        if self._pidfile_written:
            with contextlib.suppress(OSError):
                (self.folder / PIDFILE_NAME).unlink()
            self._pidfile_written = False

    def __enter__(self) -> FolderWatch:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
