"""The durable patch level: each patch's content and sha256, written atomically."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hotpatch._errors import JournalError

__all__ = ["FORMAT", "Journal", "JournalEntry", "JournalState"]

FORMAT = 1
HISTORY_KEPT = 1000


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One applied patch, with the text needed to apply it again."""

    version: str
    sha256: str
    path: str
    text: str
    summary: str = ""


@dataclass(slots=True)
class JournalState:
    baseline: str
    level: list[JournalEntry] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)


class Journal:
    """A JSON file replaced atomically (temporary file, fsync, rename, fsync of the folder)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def read(self) -> JournalState | None:
        """The recorded state, ``None`` if there is no journal yet."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            msg = f"journal {self.path} cannot be read: {exc.strerror or exc}"
            raise JournalError(msg) from exc
        try:
            data = json.loads(raw)
            if data.get("format") != FORMAT:
                msg = f"format {data.get('format')!r}, expected {FORMAT}"
                raise ValueError(msg)
            level = [JournalEntry(**entry) for entry in data["level"]]
            state = JournalState(str(data["baseline"]), level, list(data.get("history", [])))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            msg = (
                f"journal {self.path} is corrupt ({exc}); nothing was applied. Move it aside "
                "to start at the baseline, or restore it from a backup"
            )
            raise JournalError(msg) from exc
        for entry in state.level:
            if hashlib.sha256(entry.text.encode()).hexdigest() != entry.sha256:
                msg = (
                    f"journal {self.path}: the content of patch {entry.version} does not match "
                    "its sha256; nothing was applied. Move the journal aside to start at the "
                    "baseline"
                )
                raise JournalError(msg, patch=entry.version)
        return state

    def write(self, state: JournalState) -> None:
        """Replace the journal with ``state``; a crash leaves the old one or the new one."""
        data = {
            "format": FORMAT,
            "baseline": state.baseline,
            "level": [asdict(entry) for entry in state.level],
            "history": state.history[-HISTORY_KEPT:],
        }
        payload = json.dumps(data, indent=1).encode()
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=folder)
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(payload)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            dir_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            msg = f"journal {self.path} cannot be written: {exc.strerror or exc}"
            raise JournalError(msg) from exc

    def set_aside(self, reason: str) -> Path:
        """Move the journal out of the way (kept for inspection); returns where it went."""
        target = self.path.with_name(f"{self.path.name}.{reason}")
        n = 1
        while target.exists():
            n += 1
            target = self.path.with_name(f"{self.path.name}.{reason}.{n}")
        os.replace(self.path, target)
        return target
