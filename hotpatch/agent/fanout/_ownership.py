"""Owning the shared folder: one worker holds its lock; the others try again until it is free.

The folder may be deleted and made again, or replaced by another directory
renamed into its place, while the workers run. Every worker then registers
again in the new ``.workers/`` (``keep``, each ``retry``). The owner's guard
sees the new directory before any drop in it is taken, and the owner takes it
over as the first start did: its lock first (``retake``); if another worker
was quicker, this one hands over -- it stops owning, and tries again like the
others. No worker takes the lock of a folder that is not safe (gone, a link,
another user's, writable by others): the owner's guard says what is wrong.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from hotpatch._process import alive
from hotpatch.agent._lifecycle import FolderLock
from hotpatch.agent.fanout._peers import owner_pid, usable

__all__ = ["OWNER_RETRY_S", "Ownership"]

log = logging.getLogger("hotpatch")

OWNER_RETRY_S = 0.5
# A folder replaced under a live owner is left to it this long (its guard takes it over
# within a quarter of a second); past it, another worker may take the new folder.
OWNER_GRACE_S = 5.0


class Ownership:
    """The folder's lock, taken when free -- at once, then every ``retry`` seconds -- and held.

    Once it holds the lock it calls ``take(stack)`` under ``guard`` (no patch
    operation runs meanwhile); ``take`` opens what the owner runs (staging, the
    folder's watch) in ``stack``, which is closed before the lock is released.
    ``keep()`` runs every ``retry`` seconds in every worker (owner or not): it
    registers this worker again if its socket went with the folder. ``ready()``
    says whether the folder may be taken now (safe, its subfolders made, as at
    the first start).
    """

    def __init__(
        self,
        folder: Path,
        *,
        take: Callable[[contextlib.ExitStack[bool | None]], None],
        guard: threading.RLock,
        keep: Callable[[], None] = lambda: None,
        ready: Callable[[], bool] | None = None,
        retry: float = OWNER_RETRY_S,
    ) -> None:
        self.folder = folder
        self.retry = retry
        self._take = take
        self._keep = keep
        self._ready = ready if ready is not None else lambda: usable(folder)
        self._guard = guard
        self._lock = FolderLock(folder)
        self._owned = contextlib.ExitStack()
        self._owning = False  # what ``take`` opened is running (in ``_owned``)
        self._handing_over = False  # the new folder's lock is another worker's: stop owning
        self._last_owner: int | None = None  # the pid in the pidfile, last seen
        self._unowned_since: float | None = None  # the folder usable, with no pidfile
        self._owner_folder: tuple[int, int] | None = None  # the directory it owned then
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def owner(self) -> bool:
        """Does this worker own the folder (process the drops) right now?"""
        return self._lock.held

    def try_to_own(self) -> None:
        """Take the folder's lock if it is free (and the folder safe), and start what the
        owner runs."""
        if self.owner or self._owning or self._stopping.is_set() or not self._ready():
            return
        try:
            if not self._lock.try_acquire():
                return
        except OSError:  # the folder went meanwhile: its owner's guard says so
            return
        with self._guard, contextlib.ExitStack() as stack:
            stack.callback(self._lock.release)
            if self._stopping.is_set():
                return
            self._take(stack)
            self._owned = stack.pop_all()
            self._owning = True
        log.info("worker %d now owns the patch folder %s", os.getpid(), self.folder)

    def retake(self) -> str | None:
        """The folder at our path is a new directory: take its lock, as the first start did.

        ``None`` once this worker holds it; else why this worker takes no drop from it
        (another worker was quicker: this one hands over, and stops owning shortly).
        Called by the owner's guard, before any drop in the new folder is taken.
        """
        if self._handing_over:
            return self._handed_over()
        self._lock.release()  # the old directory's, gone or elsewhere now
        try:
            if self._lock.try_acquire():
                return None
        except OSError as exc:
            return (
                f"patch folder {self.folder} was replaced and its lock cannot be taken: "
                f"{exc.strerror or exc}"
            )
        self._handing_over = True
        log.warning(
            "worker %d: patch folder %s was replaced and another worker took its lock "
            "first; that worker owns it now, this one stops owning it",
            os.getpid(),
            self.folder,
        )
        return self._handed_over()

    def _handed_over(self) -> str:
        return (
            f"patch folder {self.folder} was replaced and another worker owns the new one; "
            f"worker {os.getpid()} hands it over"
        )

    def start(self) -> None:
        """Try again every ``retry`` seconds, in a thread, until closed."""
        self._defer()  # who owns the folder now: left to it if the folder is replaced
        self._thread = threading.Thread(
            target=self._retry_loop, name="hotpatch-workers owner", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop trying; stop what the owner runs and release the lock. Idempotent."""
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None
        self._owned.close()  # not under the guard: the drop being processed holds it
        self._owning = False

    def __enter__(self) -> Ownership:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _retry_loop(self) -> None:
        while not self._stopping.wait(self.retry):
            try:
                self._keep()
                if self._handing_over:
                    self._hand_over()
                if not self._defer():
                    self.try_to_own()
            except Exception:
                log.exception("worker %d: taking over the patch folder failed", os.getpid())

    def _defer(self) -> bool:
        """Leave a replaced folder to its owner: no pidfile in it yet, and the worker that
        owned the folder before still alive -- for ``OWNER_GRACE_S`` after the new folder
        could be taken (its owner's guard takes it over well within that). The same
        folder without its pidfile (its owner stopped its agent) is taken at once."""
        pid, now, where = owner_pid(self.folder), time.monotonic(), _identity(self.folder)
        if pid is not None:
            if pid != os.getpid():
                self._last_owner, self._owner_folder = pid, where
            self._unowned_since = None
            return False
        if where is None or where != self._owner_folder:
            self._owner_folder = None  # gone or replaced since its owner was seen
        elif self._owner_folder is not None:
            return False  # the same folder, its owner stopped: take it now
        if self._last_owner is None or not alive(self._last_owner):
            return False
        if not usable(self.folder):  # gone or unsafe: nobody takes it; the grace starts later
            self._unowned_since = None
            return True
        if self._unowned_since is None:
            self._unowned_since = now
        return now - self._unowned_since < OWNER_GRACE_S

    def _hand_over(self) -> None:
        """Stop what the owner ran: the new folder's lock is another worker's."""
        self._owned.close()  # not under the guard: the drop being processed holds it
        self._lock.release()
        self._owning = self._handing_over = False
        log.info("worker %d no longer owns the patch folder %s", os.getpid(), self.folder)


def _identity(folder: Path) -> tuple[int, int] | None:
    """The directory at ``folder`` now (device, inode); ``None`` if there is none."""
    try:
        st = folder.lstat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino)
