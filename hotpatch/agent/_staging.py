"""Staging: the private copies of a drop that the verification child (or the unpacking) reads."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from hotpatch.agent._drops import Interrupted
from hotpatch.agent._names import STAGING

__all__ = ["Staging"]


class Staging:
    """``DIR/.staging`` of a watched folder, or a temporary directory of its own without one.

    Open while the agent owns the folder: opening clears what a crash left there.
    Each copy goes in a fresh directory (mode 0700) removed once it was read.
    Staging that goes away under a copy (the folder deleted or replaced with
    it) raises ``Interrupted``: what failed for want of the copy is not the
    patch's fault.
    """

    def __init__(self, folder: Path | None) -> None:
        self._folder = folder
        self._path: Path | None = None
        self._own = False

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
        self._path = path
        return self

    def close(self) -> None:
        if self._path is not None and self._own:
            shutil.rmtree(self._path, ignore_errors=True)
        self._path, self._own = None, False

    def __enter__(self) -> Staging:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextlib.contextmanager
    def directory(self) -> Iterator[Path]:
        """A fresh private directory, removed with what it holds on leaving."""
        if self._path is None:
            msg = "staging is closed: this agent does not watch its folder (any more)"
            raise RuntimeError(msg)
        try:
            folder = Path(tempfile.mkdtemp(dir=self._path))
        except FileNotFoundError as exc:
            msg = f"the staging folder {self._path} is gone (its folder deleted or replaced)"
            raise Interrupted(msg) from exc
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
        with self.directory() as folder:
            staged = folder / name
            fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
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


def _same_file(path: Path, st: os.stat_result) -> bool:
    """Is ``path`` still the file that ``st`` describes?"""
    try:
        now = path.lstat()
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)
