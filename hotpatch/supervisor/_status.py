"""The supervisor's status file: JSON, replaced atomically, for ``hotpatch status`` to read.

It is rewritten on every change (a level reported, a restart, a rollout's
step, the watched folder found unsafe or safe again, a drop beginning,
retrying or ending its wait for a resource), so what it holds does not grow
with the patch level or a burst: each level is shown by its top
``LEVEL_SHOWN`` versions, ``level_size`` and ``level_digest``, the drops
pending by the first of them and ``pending_count`` (``hotpatch status`` asks
the supervisor for all of it), written as one line of compact JSON. It shows
what is wrong with the folder and the drop waiting as the control socket does
(``folder_shown``): monitoring reads them there while the socket is gone with
the folder.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "ShowsFolder",
    "folder_shown",
    "pending_shown",
    "read_status",
    "utc_now",
    "write_status",
]

log = logging.getLogger("hotpatch.supervisor")


def utc_now() -> str:
    """The current time as ISO 8601 UTC (``2026-11-25T10:00:00.123Z``)."""
    now = datetime.datetime.now(datetime.UTC)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def pending_shown(pending: tuple[list[str], int]) -> dict[str, Any]:
    """The drops waiting in the folder as the status shows them: ``pending`` (all of them,
    or the first ``LEVEL_SHOWN``: what the status file holds) and ``pending_count``, from
    what the folder answered (``PatchPipeline.pending``)."""
    names, count = pending
    return {"pending": names, "pending_count": count}


class ShowsFolder(Protocol):
    """The watched folder's pipeline, as the status asks it (``_records.FolderPipeline``)."""

    def folder(self) -> dict[str, Any]:
        """``folder`` (safe; if not, why and since when) and ``waiting`` (a drop short of a
        resource: why, since when, what to do)."""


def folder_shown(pipeline: ShowsFolder | None) -> dict[str, Any]:
    """The watched folder as the status (and its file) shows it: ``folder`` and ``waiting``
    from ``pipeline``, both ``None`` while no folder is watched (none given, or not yet)."""
    if pipeline is None:
        return {"folder": None, "waiting": None}
    return pipeline.folder()


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
        data = json.dumps(status, sort_keys=True, separators=(",", ":")).encode() + b"\n"
        with os.fdopen(fd, "wb") as out:
            out.write(data)
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
