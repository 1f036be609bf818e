"""Staging: the private copies of a drop that the verification child (or the unpacking) reads."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from hotpatch.agent._drops import Interrupted
from hotpatch.agent._names import STAGING

__all__ = ["Staging"]

log = logging.getLogger("hotpatch")

PRIVATE = 0o700  # the mode of a staging directory: this user's alone


class Staging:
    """``DIR/.staging`` of a watched folder, or a temporary directory of its own without one.

    Open while the agent owns the folder: opening clears what a crash left there.
    Each copy goes in a private directory (mode 0700, owned by this user) kept
    for the next copy: a burst of drops makes no directory per drop. Before
    each copy the directory is checked (a directory, not a link, this user's,
    mode 0700); one that changed, or that the check left anything in, is not
    used again. Copies held at the same time each get a directory of their
    own, so they never share a file. Staging that goes away under a copy (the
    folder deleted or replaced with it) raises ``Interrupted``: what failed
    for want of the copy is not the patch's fault.
    """

    def __init__(self, folder: Path | None) -> None:
        self._folder = folder
        self._path: Path | None = None
        self._own = False
        self._lock = threading.Lock()
        self._free: list[Path] = []  # private directories no copy holds, newest last

    def open(self) -> Staging:
        if self._folder is not None:
            path = self._folder / STAGING
            for leftover in path.iterdir():  # from a crash: never reused
                if leftover.is_dir() and not leftover.is_symlink():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)
        else:
            path = Path(tempfile.mkdtemp(prefix="hotpatch-staging-"))
            self._own = True
        with self._lock:
            self._path, self._free = path, []
        return self

    def close(self) -> None:
        with self._lock:
            path, own, free = self._path, self._own, self._free
            self._path, self._own, self._free = None, False, []
        if path is not None and own:
            shutil.rmtree(path, ignore_errors=True)
        else:
            for directory in free:
                shutil.rmtree(directory, ignore_errors=True)

    def __enter__(self) -> Staging:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _staging(self) -> Path:
        if self._path is None:
            msg = "staging is closed: this agent does not watch its folder (any more)"
            raise RuntimeError(msg)
        return self._path

    @contextlib.contextmanager
    def directory(self) -> Iterator[Path]:
        """A fresh private directory, removed with what it holds on leaving."""
        try:
            folder = Path(tempfile.mkdtemp(dir=self._staging()))
        except FileNotFoundError as exc:
            raise self._gone() from exc
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    @contextlib.contextmanager
    def copy(self, name: str, data: bytes) -> Iterator[Path]:
        """A private copy of exactly ``data`` (file 0600) named ``name``, removed on leaving.

        What fails inside while the copy is no longer there (removed with its
        folder, or its folder renamed away) raises ``Interrupted`` instead.
        """
        folder, dir_fd = self._take()
        try:
            staged = folder / name
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
            with os.fdopen(fd, "wb") as out:
                written = os.fstat(out.fileno())
                out.write(data)
            try:
                yield staged
            except Exception as exc:
                if _same_file(staged, written):
                    raise
                msg = (
                    f"its staging copy {staged} was removed while it was checked (the folder "
                    "deleted or replaced)"
                )
                raise Interrupted(msg) from exc
        finally:
            self._give_back(folder, dir_fd, name)

    def _take(self) -> tuple[Path, int]:
        """A private directory for one copy, open: one kept from an earlier copy if it
        passes the check, else a new one."""
        staging = self._staging()
        while True:
            with self._lock:
                folder = self._free.pop() if self._free else None
            if folder is None:
                break
            dir_fd = _open_private(folder)
            if dir_fd is not None:
                return folder, dir_fd
            log.warning("staging directory %s changed since its last copy; not used again", folder)
        try:
            folder = Path(tempfile.mkdtemp(dir=staging))  # mode 0700 (PRIVATE)
        except FileNotFoundError as exc:
            raise self._gone() from exc
        dir_fd = _open_private(folder)
        if dir_fd is None:
            msg = f"the staging directory {folder} changed as it was made (the folder replaced)"
            raise Interrupted(msg)
        return folder, dir_fd

    def _give_back(self, folder: Path, dir_fd: int, name: str) -> None:
        """Remove the copy; keep its directory for the next copy if it is left empty and
        is still the one at its path, else remove it with what the check left."""
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dir_fd)
            empty = not os.listdir(dir_fd)
            st = os.fstat(dir_fd)
        finally:
            os.close(dir_fd)
        try:
            now = folder.lstat()
        except OSError:
            return  # gone: nothing of it to keep or remove
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            return  # another directory there now: not ours to keep or remove
        with self._lock:
            if empty and self._path is not None and folder.parent == self._path:
                self._free.append(folder)
                return
        shutil.rmtree(folder, ignore_errors=True)

    def _gone(self) -> Interrupted:
        return Interrupted(
            f"the staging folder {self._path} is gone (its folder deleted or replaced)"
        )


def _open_private(folder: Path) -> int | None:
    """``folder`` opened if it is a directory (not a link) of this user, mode 0700."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None  # gone, a link, a file
    st = os.fstat(dir_fd)
    if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) != PRIVATE:
        os.close(dir_fd)
        return None
    return dir_fd


def _same_file(path: Path, st: os.stat_result) -> bool:
    """Is ``path`` still the file that ``st`` describes?"""
    try:
        now = path.lstat()
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)
