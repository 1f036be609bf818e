"""The supervisor's status file: JSON, replaced atomically, for ``hotpatch status`` to read."""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["read_status", "utc_now", "write_status"]

log = logging.getLogger("hotpatch.supervisor")


def utc_now() -> str:
    """The current time as ISO 8601 UTC (``2026-11-25T10:00:00.123Z``)."""
    now = datetime.datetime.now(datetime.UTC)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def write_status(path: Path, status: dict[str, Any]) -> None:
    """Replace ``path`` with ``status``: a reader sees the old file or the new one, never half.

    No fsync: the status describes a running process and is rewritten on
    every change; after a machine crash there is nothing left to describe.
    Best effort: a file that cannot be written is logged, never raised into
    the supervisor (the next change writes it again).
    """
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        log.warning("cannot write the status file %s: %s", path, exc)
        return
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(status, out, indent=2, sort_keys=True)
            out.write("\n")
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if not isinstance(exc, OSError):
            raise
        log.warning("cannot write the status file %s: %s", path, exc)


def read_status(path: Path) -> dict[str, Any] | None:
    """The last status written, ``None`` if there is none yet."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    if not isinstance(data, dict):
        msg = f"status file {path} does not hold a JSON object"
        raise TypeError(msg)
    return data
