"""Audit log plugin: one JSON line per apply, rollback and rejection, appended durably.

Each line holds ``time`` (ISO 8601, UTC), ``action`` (``apply``, ``replay``,
``rollback``, ``reject``), ``version``, ``sha256``, ``outcome`` (``applied``,
``rolled-back``, ``rejected``), ``who`` (``uid:<peer uid>`` for the control
socket, ``folder:<dir>`` for a drop, ``api``, ``journal``) and, for a
rejection, ``reason``. A rollback of several patches writes one line per patch
rolled back. Lines are appended with ``O_APPEND``, one ``write`` each, then
fsynced; the file is reopened for every line, so log rotation by renaming works.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hotpatch

__all__ = ["AuditLog"]

_MAX_HASHED_BYTES = 256 << 20


class AuditLog:
    """Appends the audit trail to ``path`` (created mode 0600)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._sha256: dict[str, str | None] = {}  # version -> content hash, for rollbacks

    def __repr__(self) -> str:
        return f"<AuditLog {self.path}>"

    # -- hooks ------------------------------------------------------------------------

    @hotpatch.hookimpl
    def hotpatch_after_apply(
        self, patch: hotpatch.Patch, registry: hotpatch.Registry, result: hotpatch.ApplyResult
    ) -> None:
        last = _last(registry, ("apply", "replay"), patch.version)
        self._sha256[patch.version] = patch.sha256
        self.write(
            action=last.action if last is not None else "apply",
            version=patch.version,
            sha256=patch.sha256,
            outcome="applied",
            who=last.who if last is not None else None,
            targets=list(result.targets),
            level=list(registry.level),
            elapsed_s=round(result.elapsed_s, 6),
        )

    @hotpatch.hookimpl
    def hotpatch_after_rollback(
        self, registry: hotpatch.Registry, result: hotpatch.RollbackResult
    ) -> None:
        last = _last(registry, ("rollback",), ", ".join(result.versions))
        for version in result.versions:
            self.write(
                action="rollback",
                version=version,
                sha256=self._sha256.pop(version, None),
                outcome="rolled-back",
                who=last.who if last is not None else None,
                level=list(result.level),
                elapsed_s=round(result.elapsed_s, 6),
            )

    @hotpatch.hookimpl
    def hotpatch_rejected(self, version: str | None, source: str, reason: str, who: str) -> None:
        self.write(
            action="reject",
            version=version,
            sha256=_file_sha256(source),
            outcome="rejected",
            who=who,
            reason=reason,
            source=source,
        )

    # -- writing ----------------------------------------------------------------------

    def write(self, **fields: Any) -> None:
        """Append one record (``time`` is added first) as a single line, and fsync it."""
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        line = json.dumps({"time": now, **fields}, ensure_ascii=False, default=str) + "\n"
        data = line.encode()
        with self._lock:
            created = not self.path.exists()
            fd = os.open(
                self.path,
                os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
            )
            try:
                written = os.write(fd, data)
                if written != len(data):
                    msg = f"audit log {self.path}: short write ({written} of {len(data)} bytes)"
                    raise OSError(msg)
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:  # the new directory entry must survive a crash too
                dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)


def _last(
    registry: hotpatch.Registry, actions: tuple[str, ...], version: str
) -> hotpatch.HistoryEntry | None:
    """The newest history entry for this action (another may have followed meanwhile)."""
    for entry in reversed(registry.history):
        if entry.action in actions and entry.version == version:
            return entry
    return None


def _file_sha256(source: str) -> str | None:
    """sha256 of a rejected patch file as it is now; ``None`` if it is not a readable file."""
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, ValueError):
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_HASHED_BYTES:
            return None
        digest = hashlib.sha256()
        while chunk := os.read(fd, 1 << 20):
            digest.update(chunk)
        return digest.hexdigest()
    except OSError:
        return None
    finally:
        os.close(fd)
