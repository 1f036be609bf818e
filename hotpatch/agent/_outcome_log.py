"""The folder's outcome log: a JSON line for every outcome and rollback, however it was asked for.

A drop files its outcome beside the file (``NAME.result.json``); a patch sent
with ``hotpatch apply`` or a rollback sent with ``hotpatch rollback`` leaves
nothing in the outcome folders. So that ``hotpatch watch`` and the
supervisor's metrics see every one, the drop pipeline appends each to
``DIR/.hotpatch.outcomes.jsonl``: one JSON object per line, appended under an
``flock`` (the workers of a pre-fork server share the file), not fsynced
(it is a feed, not a record: the journal and the result files are that). Past
``max_bytes`` the file is renamed to ``.1`` (replacing the previous one) and a
new one begun; ``LogTail`` follows it across that rename.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Any

from hotpatch.agent._names import OUTCOME_LOG_NAME

__all__ = ["FOLDER", "MAX_LOG_BYTES", "LogTail", "OutcomeLog", "rotated"]

log = logging.getLogger("hotpatch")

MAX_LOG_BYTES = 1 << 20  # about 2,000 outcomes; one older generation is kept beside it
FOLDER = "folder"  # the source of a drop, which the folder files in its outcome directories
_OPEN_ATTEMPTS = 5  # a rotation between opening and locking: open the new file


def rotated(path: Path) -> Path:
    """Where ``path`` goes once it is full: ``NAME.1``."""
    return path.with_name(path.name + ".1")


class OutcomeLog:
    """Appends records to ``folder``'s outcome log; ``append`` never raises."""

    def __init__(self, folder: Path, *, max_bytes: int = MAX_LOG_BYTES) -> None:
        self.path = Path(folder) / OUTCOME_LOG_NAME
        self.max_bytes = max_bytes

    def append(self, record: dict[str, Any]) -> None:
        """Add ``record`` as one line; a failure is logged, the outcome stands without it."""
        try:
            # ASCII, as the result files: a name or reason that is not UTF-8 stays escaped.
            self._append((json.dumps(record, default=str) + "\n").encode())
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            log.warning(
                "cannot add to the outcome log %s (hotpatch watch and the metrics will miss "
                "this outcome): %s",
                self.path,
                reason,
            )

    def _append(self, line: bytes) -> None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        for _ in range(_OPEN_ATTEMPTS):
            fd = os.open(self.path, flags, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                st = os.fstat(fd)
                try:
                    now = os.stat(self.path, follow_symlinks=False)
                except FileNotFoundError:
                    continue  # rotated away while we waited for the lock
                if (now.st_ino, now.st_dev) != (st.st_ino, st.st_dev):
                    continue
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view) :]
                if st.st_size + len(line) >= self.max_bytes:
                    os.replace(self.path, rotated(self.path))
                return
            finally:
                os.close(fd)  # and the lock with it
        msg = f"{self.path} kept being replaced while hotpatch tried to append to it"
        raise OSError(msg)


class LogTail:
    """Reads the records appended to an outcome log since it was made, across rotations.

    ``from_start``: also what the log holds already. A line being written is
    returned once complete; a line that is not JSON is skipped.
    """

    def __init__(self, folder: Path, *, from_start: bool = False) -> None:
        self.path = Path(folder) / OUTCOME_LOG_NAME
        self._file: int | None = None
        self._id: tuple[int, int] | None = None
        self._partial = b""
        if not from_start:
            self._open(at_end=True)

    def close(self) -> None:
        if self._file is not None:
            os.close(self._file)
            self._file, self._id, self._partial = None, None, b""

    def read(self) -> list[dict[str, Any]]:
        """The records appended since the last call, oldest first."""
        records: list[dict[str, Any]] = []
        if self._file is not None:
            records += self._drain()
            if self._current() == self._id:
                return records
            # Rotated (or removed): what was written before the rename is read above.
            self.close()
        if self._open(at_end=False):
            records += self._drain()
        return records

    def _current(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except OSError:
            return None
        return st.st_ino, st.st_dev

    def _open(self, *, at_end: bool) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return False
        st = os.fstat(fd)
        if at_end:
            os.lseek(fd, 0, os.SEEK_END)
        self._file, self._id, self._partial = fd, (st.st_ino, st.st_dev), b""
        return True

    def _drain(self) -> list[dict[str, Any]]:
        assert self._file is not None
        chunks = [self._partial]
        while chunk := os.read(self._file, 1 << 16):
            chunks.append(chunk)
        data = b"".join(chunks)
        complete, _, self._partial = data.rpartition(b"\n")
        records = []
        for line in complete.split(b"\n") if complete else ():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    records.append(record)
        return records
