"""The durable patch level: each patch's content and sha256, in records appended to one file.

Format 2 (this one) is a file of lines, each ``JSON<TAB>CRC32`` (the CRC, eight
hex digits, of the JSON's bytes). The first line is the header
``{"format": 2, "baseline": ...}``; every other line is a record of one level
change: ``pop`` entries taken off the top of the level, then the entries of
``push`` put on (each a patch's version, sha256, path, text and summary), and
``history`` rows. A history row without ``delta`` is at the level the record
leaves; one with ``delta`` ``[k, versions]`` is at the level of the row before
it, less its top ``k`` versions, plus ``versions`` (a compacted file carries
its rows that way, so that no row repeats the whole level); one with ``level``
is at that level (the first of the rows a replay adds, recorded with the next
change).

An apply or a rollback appends one record and syncs it (``fdatasync``): what
it costs does not depend on the level. A record is whole or ignored: a crash
in the middle of an append leaves a last line without its newline or with a
CRC that does not match, which reading skips (and the next append cuts off);
a damaged line with records after it is corruption, refused. When the
records have grown past twice what the file held after its last rewrite, the
next append first rewrites the file whole -- header and one record with the
level and the kept history -- into a temporary file, synced and renamed over
the journal (then the folder is synced): a crash leaves the old file or the
new one. A journal of format 1 (one JSON document, rewritten on each change)
is read as before, and ``upgrade()`` rewrites it in this format the same
atomic way. A newer format is refused with ``JournalError``, never guessed at.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hotpatch._errors import JournalError
from hotpatch._patch import parse_version

__all__ = ["FORMAT", "HISTORY_KEPT", "Journal", "JournalEntry", "JournalState"]

FORMAT = 2
HISTORY_KEPT = 1000
# Records are compacted once they have grown past the larger of this and what
# the file held after its last rewrite (so each byte is rewritten O(1) times on average).
COMPACT_MIN = 256 * 1024
COMPACT_GROWTH = 1.0  # ... and past this times that size


def _sync(fd: int) -> None:
    """Data and size on disk (``fdatasync`` where there is one: no need for the times)."""
    getattr(os, "fdatasync", os.fsync)(fd)


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


_Stamp = tuple[int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns


def _stamp(st: os.stat_result) -> _Stamp:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class _Unknown:
    __slots__ = ()


_UNKNOWN = _Unknown()


class Journal:
    """One journal file: read whole, appended to record by record, rewritten atomically."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.format_found: int | None = None  # the format of the file as last read
        # The file as this object last read or wrote it: an append goes on only if
        # it is still that file (else another writer changed it: it is rewritten).
        self._seen: _Stamp | None = None
        self._end = 0  # where the next record goes (after the last whole record)
        self._base = 0  # the file's size after its last rewrite
        # The bytes on disk as this process last read or wrote them (None: no file),
        # kept only for ``undo_point`` of a whole file; appends do not keep them.
        self._on_disk: bytes | _Unknown | None = _UNKNOWN

    # -- reading ------------------------------------------------------------------------

    def read(self) -> JournalState | None:
        """The recorded state, ``None`` if there is no journal yet."""
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
                st = os.fstat(f.fileno())
        except FileNotFoundError:
            self._forget()
            self._on_disk = None
            return None
        except OSError as exc:
            msg = f"journal {self.path} cannot be read: {exc.strerror or exc}"
            raise JournalError(msg) from exc
        self._forget()
        self._on_disk = _UNKNOWN
        try:
            state, number, end = _decode(raw)
        except _Unsupported as exc:
            msg = (
                f"journal {self.path} was written in format {exc}, and this hotpatch reads "
                f"formats 1 to {FORMAT}; nothing was applied. Upgrade hotpatch to replay it, "
                "or move it aside to start at the baseline"
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
        self.format_found = number
        if number == FORMAT and len(raw) == st.st_size:
            self._seen, self._end = _stamp(st), end
            self._base = min(self._base, end) if self._base else end
        return state

    def _forget(self) -> None:
        self._seen, self._end, self.format_found = None, 0, None

    # -- writing ------------------------------------------------------------------------

    def write(self, state: JournalState) -> None:
        """Replace the journal with ``state``; a crash leaves the old one or the new one."""
        payload = _encode(state)
        self._write_bytes(payload, remember=True)
        self.format_found = FORMAT

    def upgrade(self, state: JournalState) -> bool:
        """Rewrite a journal read in an older format in this one (atomically); ``True`` if done."""
        if self.format_found is None or self.format_found == FORMAT:
            return False
        self.write(state)
        return True

    def append(
        self,
        pop: int,
        push: list[JournalEntry],
        rows: list[dict[str, Any]],
        whole: Callable[[], JournalState],
    ) -> Callable[[], None]:
        """Record one level change (``pop`` entries off, ``push`` on) and history rows.

        The last row is at the level the change leaves; rows before it carry
        their level (``level``, or ``delta`` from the row before).

        ``whole()`` is the state after the change, written in full when the file
        is not the one this object knows (none yet, an older format, or changed
        by another writer). Returns what puts the journal back as it was.
        """
        if self._seen is not None and self._compaction_due():
            self.compact()
        record = _line({"pop": pop, "push": [asdict(e) for e in push], "history": rows})
        try:
            fd = os.open(self.path, os.O_WRONLY)
        except FileNotFoundError:
            fd = -1
        except OSError as exc:
            raise self._cannot_write(exc) from exc
        try:
            if fd < 0 or self._seen is None or _stamp(os.fstat(fd)) != self._seen:
                return self._replace(whole())
            start = self._end
            try:
                if os.fstat(fd).st_size > start:
                    os.ftruncate(fd, start)  # a torn record a crash left: never followed
                _pwrite_all(fd, record, start)
                _sync(fd)
                self._seen = _stamp(os.fstat(fd))
            except OSError as exc:
                with contextlib.suppress(OSError):  # take the record back out if we can
                    os.ftruncate(fd, start)
                self._seen = None  # the record may or may not be there: read again first
                raise self._cannot_write(exc) from exc
            self._end = start + len(record)
            self._on_disk = _UNKNOWN
            return lambda: self._cut(start)
        finally:
            if fd >= 0:
                os.close(fd)

    def _compaction_due(self) -> bool:
        grown = self._end - self._base
        return grown > max(COMPACT_MIN, COMPACT_GROWTH * self._base)

    def compact(self) -> None:
        """Rewrite the journal as its state alone (atomically), dropping what is superseded."""
        state = self.read()
        if state is not None:
            self.write(state)

    def _cut(self, end: int) -> None:
        """Undo the last append: the file back to ``end`` bytes, if it is still ours."""
        try:
            fd = os.open(self.path, os.O_WRONLY)
        except OSError as exc:
            raise self._cannot_write(exc) from exc
        try:
            if _stamp(os.fstat(fd)) != self._seen:
                msg = (
                    f"journal {self.path} changed while a change was being undone; it may "
                    "record that change: check `hotpatch history` against the running level"
                )
                raise JournalError(msg)
            os.ftruncate(fd, end)
            _sync(fd)
            self._seen, self._end = _stamp(os.fstat(fd)), end
        except OSError as exc:
            self._seen = None
            raise self._cannot_write(exc) from exc
        finally:
            os.close(fd)

    def _replace(self, state: JournalState) -> Callable[[], None]:
        """Write ``state`` whole over whatever is there; returns what puts that back."""
        try:
            prior: bytes | None = self.path.read_bytes()
        except FileNotFoundError:
            prior = None
        except OSError as exc:
            raise self._cannot_write(exc) from exc
        self.write(state)
        if prior is None:
            return self._remove
        return lambda: self._write_bytes(prior, remember=False)

    def undo_point(self) -> Callable[[], None]:
        """A function that puts the journal back exactly as it is now (or removes it).

        It keeps the whole file's bytes: for a point held across a restart (the
        supervisor's), not for each change (``append`` returns its own undo).
        """
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
        return lambda: self._write_bytes(prior, remember=False)

    def _remove(self) -> None:
        self.path.unlink(missing_ok=True)
        self._forget()
        self._on_disk = None

    def _cannot_write(self, exc: OSError) -> JournalError:
        msg = f"journal {self.path} cannot be written: {exc.strerror or exc}"
        return JournalError(msg)

    def _write_bytes(self, payload: bytes, *, remember: bool) -> None:
        """Replace the file with ``payload``: temporary file, sync, rename, sync the folder.

        ``remember``: the payload is a journal of this format, to append to.
        """
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=folder)
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(payload)
                    out.flush()
                    os.fsync(out.fileno())
                    st = os.fstat(out.fileno())
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
            self._forget()  # the rename may or may not have happened
            self._on_disk = _UNKNOWN
            raise self._cannot_write(exc) from exc
        self._forget()
        if remember:
            self._seen, self._end, self._base = _stamp(st), len(payload), len(payload)
            self.format_found = FORMAT
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
        self._forget()
        self._on_disk = None
        return target


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


class _Unsupported(Exception):
    """A journal format this version does not read (its number is the message)."""


# -- format 2: lines of JSON and their CRC ----------------------------------------------------


def _line(value: Any) -> bytes:
    payload = json.dumps(value, separators=(",", ":")).encode()  # ASCII: no tab, no newline
    return b"%s\t%08x\n" % (payload, zlib.crc32(payload))


def _unline(raw: bytes) -> Any:
    """The JSON of a line (its newline stripped) whose CRC matches; ``_BAD`` if it does not."""
    tab = len(raw) - 9
    if tab < 0 or raw[tab : tab + 1] != b"\t":
        return _BAD
    payload = raw[:tab]
    if b"%08x" % zlib.crc32(payload) != raw[tab + 1 :]:
        return _BAD
    try:
        return json.loads(payload)
    except ValueError:
        return _BAD


_BAD = object()


def _encode(state: JournalState) -> bytes:
    """A whole journal: the header and one record with the level and the kept history."""
    rows: list[dict[str, Any]] = []
    prev: list[str] = []
    for row in state.history[-HISTORY_KEPT:]:
        level = list(row["level"])
        same = len(prev) if level[: len(prev)] == prev else _common(prev, level)
        rows.append(
            {k: v for k, v in row.items() if k != "level"}
            | {"delta": [len(prev) - same, level[same:]]}
        )
        prev = level
    head = _line({"format": FORMAT, "baseline": state.baseline})
    body = _line({"pop": 0, "push": [asdict(e) for e in state.level], "history": rows})
    return head + body


def _common(a: list[str], b: list[str]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _decode(raw: bytes) -> tuple[JournalState, int, int]:
    """(state, format, where the whole records end) of a journal's bytes."""
    newline = raw.find(b"\n")
    head = _unline(raw[:newline]) if newline >= 0 else _BAD
    if isinstance(head, dict) and "format" in head:
        number = _format_number(head["format"])
        if number != FORMAT:
            msg = f"format {number} does not exist (expected 1 or {FORMAT})"
            raise ValueError(msg)
        return _records(raw, newline + 1, head)
    try:
        document = json.loads(raw)
    except ValueError as exc:
        first = raw[:newline] if newline >= 0 else raw
        for header in (first, first.rpartition(b"\t")[0]):  # with or without a CRC
            with contextlib.suppress(ValueError):
                top = json.loads(header)
                if isinstance(top, dict) and isinstance(top.get("format"), int):
                    _format_number(top["format"])  # a newer format's header: refused as such
        msg = f"neither a format-{FORMAT} header nor a format-1 document: {exc}"
        raise ValueError(msg) from exc
    return _parse(document), 1, len(raw)


def _format_number(number: Any) -> int:
    if type(number) is not int:
        msg = f"format {number!r} is not a format number"
        raise TypeError(msg)
    if number > FORMAT:
        raise _Unsupported(str(number))
    return number


def _records(raw: bytes, pos: int, head: dict[str, Any]) -> tuple[JournalState, int, int]:
    _fields(head, "the header", {"format", "baseline"}, {"format", "baseline"})
    baseline = _text(head["baseline"], "baseline")
    parse_version(baseline, "baseline")
    level: list[JournalEntry] = []
    versions: list[str] = []
    history: deque[dict[str, Any]] = deque(maxlen=HISTORY_KEPT)
    prev: list[str] = []
    n = 0
    while pos < len(raw):
        newline = raw.find(b"\n", pos)
        if newline < 0:
            break  # the last record, torn: ignored
        record = _unline(raw[pos:newline])
        if record is _BAD:
            if newline + 1 < len(raw):
                msg = f"record {n + 1} (byte {pos}) is damaged and records follow it"
                raise ValueError(msg)
            break  # the last record, torn: ignored
        n += 1
        what = f"record {n}"
        _fields(record, what, {"pop", "push", "history"}, {"pop", "push", "history"})
        pop = record["pop"]
        if type(pop) is not int or not 0 <= pop <= len(level):
            msg = f"{what}.pop is {pop!r} with {len(level)} patches in the level"
            raise ValueError(msg)
        if pop:
            del level[-pop:], versions[-pop:]
        for i, row in enumerate(_list(record["push"], f"{what}.push")):
            entry = _entry(row, f"{what}.push[{i}]")
            level.append(entry)
            versions.append(entry.version)
        for i, row in enumerate(_list(record["history"], f"{what}.history")):
            where = f"{what}.history[{i}]"
            _fields(row, where, _HISTORY_REQUIRED, _HISTORY_ALLOWED | {"delta"})
            delta = row.pop("delta", None)
            given = "level" in row
            if delta is not None and given:
                msg = f"{where} has both level and delta"
                raise ValueError(msg)
            if not given:
                row["level"] = list(versions) if delta is None else _delta(delta, prev, where)
            _row(row, where, versions_checked=not given)  # else from entries or _delta
            at = row["level"]
            prev = at
            history.append(row)
        pos = newline + 1
    return JournalState(baseline, level, list(history)), FORMAT, pos


def _delta(delta: Any, prev: list[str], what: str) -> list[str]:
    if (
        not isinstance(delta, list)
        or len(delta) != len(("k", "versions"))
        or type(delta[0]) is not int
        or not 0 <= delta[0] <= len(prev)
        or not isinstance(delta[1], list)
        or not all(isinstance(v, str) for v in delta[1])
    ):
        msg = f"{what}.delta is {delta!r}"
        raise ValueError(msg)
    return prev[: len(prev) - delta[0]] + delta[1]


# -- checks shared by both formats ------------------------------------------------------------

_TOP = ("format", "baseline", "level", "history")
_ENTRY_FIELDS = {"version": True, "sha256": True, "path": True, "text": True, "summary": False}
_ENTRY_REQUIRED = {k for k, needed in _ENTRY_FIELDS.items() if needed}
_HISTORY_FIELDS: dict[str, type | tuple[type, ...]] = {
    "time": (int, float),
    "action": str,
    "version": str,
    "level": list,
    "elapsed_s": (int, float),
    "who": str,
}
_HISTORY_ALLOWED = set(_HISTORY_FIELDS)
_HISTORY_REQUIRED = _HISTORY_ALLOWED - {"who", "level"}


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


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        msg = f"{what} is a {type(value).__name__}, not a list"
        raise TypeError(msg)
    return value


def _entry(row: Any, what: str) -> JournalEntry:
    _fields(row, what, _ENTRY_REQUIRED, set(_ENTRY_FIELDS))
    for name, value in row.items():
        _text(value, f"{what}.{name}")
    parse_version(row["version"], f"{what}.version")
    return JournalEntry(**row)


def _row(row: dict[str, Any], what: str, *, versions_checked: bool = False) -> None:
    for name, value in row.items():
        expected = _HISTORY_FIELDS[name]
        if not isinstance(value, expected) or isinstance(value, bool):
            msg = f"{what}.{name} is a {type(value).__name__}"
            raise TypeError(msg)
    if not versions_checked and not all(isinstance(v, str) for v in row["level"]):
        msg = f"{what}.level holds something other than versions"
        raise TypeError(msg)


def _parse(data: Any) -> JournalState:
    """Format 1, one JSON document: check it field by field (errors name the field)."""
    if isinstance(data, dict) and "format" in data:
        _format_number(data["format"])  # a newer format first: its fields may be others
    top = _fields(data, "the document", {"format", "baseline", "level"}, {*_TOP})
    number = _format_number(top["format"])
    if number != 1:
        msg = f"format {number} is not a one-document journal (format 1)"
        raise ValueError(msg)
    baseline = _text(top["baseline"], "baseline")
    parse_version(baseline, "baseline")
    level = [_entry(row, f"level[{i}]") for i, row in enumerate(_list(top["level"], "level"))]
    history = _list(top.get("history", []), "history")
    for i, row in enumerate(history):
        what = f"history[{i}]"
        _fields(row, what, _HISTORY_REQUIRED | {"level"}, _HISTORY_ALLOWED)
        _row(row, what)
    return JournalState(baseline, level, list(history[-HISTORY_KEPT:]))
