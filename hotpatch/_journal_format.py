"""The journal's bytes: format-2 records (a line of JSON and its CRC each), format 1 read.

Format 2 is a file of lines, each ``JSON<TAB>CRC32`` (the CRC, eight hex digits,
of the JSON's bytes). The first line is the header ``{"format": 2, "baseline":
...}``; every other line is a record of one level change: ``pop`` entries taken
off the top of the level, then the entries of ``push`` put on (each a patch's
version, sha256, path, text and summary), and ``history`` rows. A history row
without ``delta`` is at the level the record leaves; one with ``delta`` ``[k,
versions]`` is at the level of the row before it, less its top ``k`` versions,
plus ``versions`` (a whole file carries its rows that way, so that no row
repeats the whole level); one with ``level`` is at that level (the first of the
rows a replay adds, recorded with the next change).

A last line without its newline, or whose CRC does not match, is a torn record
(a crash in the middle of an append): ``decode`` stops before it. A damaged
line with records after it is corruption, refused. Format 1 (one JSON
document) is checked field by field as before, to be converted. A newer format
is ``UnsupportedFormat``, never guessed at. How the file is written, synced and
compacted is ``_journal``'s.
"""

from __future__ import annotations

import contextlib
import json
import zlib
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

from hotpatch._patch import parse_version

__all__ = [
    "FORMAT",
    "HISTORY_KEPT",
    "JournalEntry",
    "JournalState",
    "UnsupportedFormat",
    "Written",
    "decode",
    "encode",
    "encode_change",
]

FORMAT = 2
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


class UnsupportedFormat(Exception):
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


def encode_change(pop: int, push: list[JournalEntry], rows: list[dict[str, Any]]) -> bytes:
    """The record of one level change: ``pop`` entries off, ``push`` on, history ``rows``."""
    return _line({"pop": pop, "push": [asdict(e) for e in push], "history": rows})


def encode(state: JournalState) -> bytes:
    """A whole journal: the header and one record with the level and the kept history."""
    rows: list[dict[str, Any]] = []
    prev: list[str] = []
    for row in state.history[-HISTORY_KEPT:]:
        level = list(row["level"])
        same = _same(prev, level)
        rows.append(
            {k: v for k, v in row.items() if k != "level"}
            | {"delta": [len(prev) - same, level[same:]]}
        )
        prev = level
    return _whole(state.baseline, [asdict(e) for e in state.level], rows)


def _whole(baseline: str, level: list[dict[str, str]], rows: list[dict[str, Any]]) -> bytes:
    head = _line({"format": FORMAT, "baseline": baseline})
    return head + _line({"pop": 0, "push": level, "history": rows})


def _same(prev: list[str], level: list[str]) -> int:
    """How many versions ``level`` keeps of ``prev``, from the bottom."""
    return len(prev) if level[: len(prev)] == prev else _common(prev, level)


# A history row as kept, one tuple: its field names (one tuple shared by every row with
# the same names: a few sets of the fields ``decode`` allows), its delta (k, and the
# versions added: the version itself when one was, as an apply adds one), then its
# values. One tuple a row, not one a field: each counts toward the collector's next
# collection when made, even those it stops tracking.
_Row = tuple[Any, ...]


def _added(versions: list[str]) -> str | tuple[str, ...]:
    return versions[0] if len(versions) == 1 else tuple(versions)


def _listed(added: str | tuple[str, ...]) -> list[str]:
    return [added] if isinstance(added, str) else list(added)


_NAMES: dict[tuple[str, ...], tuple[str, ...]] = {}
_ENTRY_KEYS = ("version", "sha256", "path", "text", "summary")


class Written:
    """A journal's state as its records leave it, followed record by record in memory:
    what a compaction writes (``encode``, the bytes ``encode`` of that state gives),
    without reading the file back.

    A history row is kept as its change from the row before, as the file writes
    it, so a row costs what changed, not the level's length; rows and entries are
    tuples of strings and numbers, which the garbage collector stops tracking.
    The level of the last row is changed in place, by what each record took off
    and put on: following an apply costs the same at any level.
    """

    __slots__ = ("_first", "_last", "_level", "_rows", "_synced", "_versions", "baseline")

    def __init__(self, state: JournalState) -> None:
        self.baseline = state.baseline
        self._level = [_entry_tuple(e) for e in state.level]
        self._versions = [e.version for e in state.level]
        self._rows: deque[_Row] = deque()
        self._first: list[str] = []  # the level of the first row kept (its own list)
        self._last: list[str] = []  # the level of the last row (its own list)
        for row in state.history[-HISTORY_KEPT:]:
            self._at(row, list(row["level"]))
        self._synced = self._last == self._versions  # the last row is at the level

    def change(self, pop: int, push: list[JournalEntry], rows: list[dict[str, Any]]) -> None:
        """The record of ``encode_change(pop, push, rows)``, written: the state it leaves."""
        if pop:
            del self._level[-pop:], self._versions[-pop:]
        for entry in push:
            self._level.append(_entry_tuple(entry))
            self._versions.append(entry.version)
        # How the last row's level differs from the level now: by this change (the
        # last row was at the level before it), by nothing, or not known (None).
        lag = (pop, [e.version for e in push]) if self._synced else None
        for row in rows:  # at their level as ``decode`` reads them
            if "level" in row:
                self._at(row, list(row["level"]))
                lag = None
            elif "delta" in row:
                k, versions = row["delta"]
                self._step(row, k, list(versions))
                lag = None
            elif lag is not None:
                self._step(row, *lag)
                lag = (0, [])
            else:  # the level now, compared whole with the last row's (once)
                self._at(row, list(self._versions))
                lag = (0, [])
        self._synced = lag is not None and not lag[0] and not lag[1]

    def _step(self, row: dict[str, Any], k: int, added: list[str]) -> None:
        """``row``, at the level of the row before less its top ``k`` versions, plus
        ``added``: what is kept of it found by looking at those alone."""
        last = self._last
        kept = len(last) - k
        same = 0  # the versions added that are the ones taken off, in place
        while same < len(added) and kept + same < len(last) and last[kept + same] == added[same]:
            same += 1
        gone = len(last) - kept - same
        del last[kept + same :]
        last += added[same:]
        self._add(row, gone, added[same:])

    def _at(self, row: dict[str, Any], level: list[str]) -> None:
        """``row``, at ``level`` (a list of its own), compared whole with the row before."""
        same = _same(self._last, level)
        gone = len(self._last) - same
        self._last = level
        self._add(row, gone, level[same:])

    def _add(self, row: dict[str, Any], gone: int, added: list[str]) -> None:
        """Keep ``row`` as its change from the row before: ``gone`` versions off, ``added`` on
        (``_last`` is already at its level)."""
        names = tuple(k for k in row if k not in ("level", "delta"))
        names = _NAMES.setdefault(names, names)
        if not self._rows:
            self._first = list(self._last)
        self._rows.append((names, gone, _added(added), *[row[n] for n in names]))
        if len(self._rows) > HISTORY_KEPT:
            self._rows.popleft()
            _, k, now = self._rows[0][:3]
            first = self._first
            del first[len(first) - k :]
            first += _listed(now)

    def encode(self) -> bytes:
        """``encode`` of the state: the header and one record with the level and history."""
        rows: list[dict[str, Any]] = []
        for names, k, added, *values in self._rows:
            delta = [k, _listed(added)] if rows else [0, list(self._first)]
            rows.append(dict(zip(names, values, strict=True)) | {"delta": delta})
        level = [dict(zip(_ENTRY_KEYS, e, strict=True)) for e in self._level]
        return _whole(self.baseline, level, rows)


def _entry_tuple(entry: JournalEntry) -> tuple[str, str, str, str, str]:
    return (entry.version, entry.sha256, entry.path, entry.text, entry.summary)


def _common(a: list[str], b: list[str]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def decode(raw: bytes) -> tuple[JournalState, int, int]:
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
        raise UnsupportedFormat(str(number))
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
            entry = _usual_entry(row) or _entry(row, f"{what}.push[{i}]")
            level.append(entry)
            versions.append(entry.version)
        for i, row in enumerate(_list(record["history"], f"{what}.history")):
            where = f"{what}.history[{i}]"
            usual = _usual_row(row)
            if not usual:
                _fields(row, where, _HISTORY_REQUIRED, _HISTORY_ROW)
            delta = row.pop("delta", None)
            given = "level" in row
            if delta is not None and given:
                msg = f"{where} has both level and delta"
                raise ValueError(msg)
            if not given:
                row["level"] = list(versions) if delta is None else _delta(delta, prev, where)
            if not usual:
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
_HISTORY_ROW = _HISTORY_ALLOWED | {"delta"}  # the fields of a format-2 history row
_HISTORY_USUAL = _HISTORY_ROW - {"level"}  # ... as this module writes them
_ENTRY_ALLOWED = set(_ENTRY_FIELDS)


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
    _fields(row, what, _ENTRY_REQUIRED, _ENTRY_ALLOWED)
    for name, value in row.items():
        _text(value, f"{what}.{name}")
    parse_version(row["version"], f"{what}.version")
    return JournalEntry(**row)


# The usual rows and entries, as this module writes them, are recognised at once
# (a replay reads a thousand of each); anything else is checked field by field
# below, and refused naming the field.


def _usual_entry(row: Any) -> JournalEntry | None:
    """The entry of ``row`` if it is one as written (every field a string, the version
    PEP 440); ``None`` for anything else."""
    if type(row) is not dict or not _ENTRY_REQUIRED <= row.keys() <= _ENTRY_ALLOWED:
        return None
    for value in row.values():
        if type(value) is not str:
            return None
    try:
        parse_version(row["version"], "version")
    except ValueError:
        return None
    return JournalEntry(**row)


def _usual_row(row: Any) -> bool:
    """Is ``row`` a history row as written, its level not given (each field of its type)?"""
    if type(row) is not dict or not _HISTORY_REQUIRED <= row.keys() <= _HISTORY_USUAL:
        return False
    at, elapsed = type(row["time"]), type(row["elapsed_s"])
    return (
        (at is float or at is int)
        and (elapsed is float or elapsed is int)
        and type(row["action"]) is str
        and type(row["version"]) is str
        and type(row.get("who", "")) is str
    )


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
