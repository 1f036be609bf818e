"""Owning the shared folder: one worker holds its lock; the others try again until it is free."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from hotpatch.agent._lifecycle import FolderLock

__all__ = ["OWNER_RETRY_S", "Ownership"]

log = logging.getLogger("hotpatch")

OWNER_RETRY_S = 0.5


class Ownership:
    """The folder's lock, taken when free -- at once, then every ``retry`` seconds -- and held.

    Once it holds the lock it calls ``take(stack)`` under ``guard`` (no patch
    operation runs meanwhile); ``take`` opens what the owner runs (staging, the
    folder's watch) in ``stack``, which is closed before the lock is released.
    """

    def __init__(
        self,
        folder: Path,
        *,
        take: Callable[[contextlib.ExitStack[bool | None]], None],
        guard: threading.RLock,
        retry: float = OWNER_RETRY_S,
    ) -> None:
        self.folder = folder
        self.retry = retry
        self._take = take
        self._guard = guard
        self._lock = FolderLock(folder)
        self._owned = contextlib.ExitStack()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def owner(self) -> bool:
        """Does this worker own the folder (process the drops) right now?"""
        return self._lock.held

    def try_to_own(self) -> None:
        """Take the folder's lock if it is free, and start what the owner runs."""
        if self.owner or self._stopping.is_set() or not self._lock.try_acquire():
            return
        with self._guard, contextlib.ExitStack() as stack:
            stack.callback(self._lock.release)
            if self._stopping.is_set():
                return
            self._take(stack)
            self._owned = stack.pop_all()
        log.info("worker %d now owns the patch folder %s", os.getpid(), self.folder)

    def start(self) -> None:
        """Try again every ``retry`` seconds, in a thread, until closed."""
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
                self.try_to_own()
            except Exception:
                log.exception("worker %d: taking over the patch folder failed", os.getpid())
