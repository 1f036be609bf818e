"""The durable patch level: each patch's content and sha256, written atomically."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hotpatch._errors import JournalError
from hotpatch._patch import parse_version

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


class _Unknown:
    __slots__ = ()


_UNKNOWN = _Unknown()


class Journal:
    """A JSON file replaced atomically (temporary file, fsync, rename, fsync of the folder)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        # The bytes on disk as this process last read or wrote them (None: no file),
        # so an undo point costs nothing on the apply path.
        self._on_disk: bytes | _Unknown | None = _UNKNOWN

    def read(self) -> JournalState | None:
        """The recorded state, ``None`` if there is no journal yet."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            self._on_disk = None
            return None
        except OSError as exc:
            msg = f"journal {self.path} cannot be read: {exc.strerror or exc}"
            raise JournalError(msg) from exc
        self._on_disk = raw
        try:
            state = _parse(json.loads(raw))
        except _Unsupported as exc:
            msg = (
                f"journal {self.path} was written in format {exc}, and this hotpatch reads "
                f"format {FORMAT}; nothing was applied. Upgrade hotpatch to replay it, or move "
                "it aside to start at the baseline"
            )
            raise JournalError(msg) from None
        except (ValueError, TypeError) as exc:
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
                    "baseline, or restore it from a backup"
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
        self._write_bytes(json.dumps(data, indent=1).encode())

    def undo_point(self) -> Callable[[], None]:
        """A function that puts the journal back exactly as it is now (or removes it)."""
        if isinstance(self._on_disk, _Unknown):
            try:
                self._on_disk = self.path.read_bytes()
            except FileNotFoundError:
                self._on_disk = None
            except OSError as exc:
                msg = f"journal {self.path} cannot be read: {exc.strerror or exc}"
                raise JournalError(msg) from exc
        prior = self._on_disk
        if prior is None:
            return self._remove
        return lambda: self._write_bytes(prior)

    def _remove(self) -> None:
        self.path.unlink(missing_ok=True)
        self._on_disk = None

    def _write_bytes(self, payload: bytes) -> None:
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
            self._on_disk = _UNKNOWN  # the rename may or may not have happened
            msg = f"journal {self.path} cannot be written: {exc.strerror or exc}"
            raise JournalError(msg) from exc
        self._on_disk = payload

    def set_aside(self, reason: str) -> Path:
        """Move the journal out of the way (kept for inspection); returns where it went."""
        target = self.path.with_name(f"{self.path.name}.{reason}")
        n = 1
        while target.exists():
            n += 1
            target = self.path.with_name(f"{self.path.name}.{reason}.{n}")
        try:
            os.replace(self.path, target)
        except OSError as exc:
            msg = (
                f"journal {self.path} cannot be moved aside to {target.name}: "
                f"{exc.strerror or exc}; move it yourself, then start again"
            )
            raise JournalError(msg) from exc
        return target


class _Unsupported(Exception):
    """A journal format this version does not read (its number is the message)."""


_TOP = ("format", "baseline", "level", "history")
_ENTRY_FIELDS = {"version": True, "sha256": True, "path": True, "text": True, "summary": False}
_HISTORY_FIELDS: dict[str, type | tuple[type, ...]] = {
    "time": (int, float),
    "action": str,
    "version": str,
    "level": list,
    "elapsed_s": (int, float),
    "who": str,
}


def _fields(row: Any, what: str, required: set[str], allowed: set[str]) -> dict[str, Any]:
    if not isinstance(row, dict):
        msg = f"{what} is a {type(row).__name__}, not an object"
        raise TypeError(msg)
    if missing := required - row.keys():
        msg = f"{what} lacks {', '.join(sorted(missing))}"
        raise ValueError(msg)
    if unknown := row.keys() - allowed:
        msg = f"{what} has unknown fields {', '.join(sorted(unknown))}"
        raise ValueError(msg)
    return row


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        msg = f"{what} is a {type(value).__name__}, not a string"
        raise TypeError(msg)
    return value


def _parse(data: Any) -> JournalState:
    """Check the JSON document field by field; raise ValueError/KeyError/TypeError naming it."""
    top = _fields(data, "the document", {"format", "baseline", "level"}, {*_TOP})
    number = top["format"]
    if type(number) is not int:
        msg = f"format {number!r} is not a format number"
        raise TypeError(msg)
    if number > FORMAT:
        raise _Unsupported(str(number))
    if number != FORMAT:
        msg = f"format {number} does not exist (expected {FORMAT})"
        raise ValueError(msg)
    baseline = _text(top["baseline"], "baseline")
    parse_version(baseline, "baseline")
    rows = top["level"]
    if not isinstance(rows, list):
        msg = f"level is a {type(rows).__name__}, not a list"
        raise TypeError(msg)
    level = []
    for i, row in enumerate(rows):
        what = f"level[{i}]"
        required = {k for k, needed in _ENTRY_FIELDS.items() if needed}
        _fields(row, what, required, set(_ENTRY_FIELDS))
        for name, value in row.items():
            _text(value, f"{what}.{name}")
        parse_version(row["version"], f"{what}.version")
        level.append(JournalEntry(**row))
    history = top.get("history", [])
    if not isinstance(history, list):
        msg = f"history is a {type(history).__name__}, not a list"
        raise TypeError(msg)
    for i, row in enumerate(history):
        what = f"history[{i}]"
        _fields(row, what, set(_HISTORY_FIELDS) - {"who"}, set(_HISTORY_FIELDS))
        for name, value in row.items():
            expected = _HISTORY_FIELDS[name]
            if not isinstance(value, expected) or isinstance(value, bool):
                msg = f"{what}.{name} is a {type(value).__name__}"
                raise TypeError(msg)
        if not all(isinstance(v, str) for v in row["level"]):
            msg = f"{what}.level holds something other than versions"
            raise TypeError(msg)
    return JournalState(baseline, level, list(history))
