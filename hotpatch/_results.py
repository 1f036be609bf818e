"""What the registry answers: a check's report, an apply's and a rollback's result, history."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

T = TypeVar("T")

__all__ = [
    "LEVEL_SHOWN",
    "ApplyResult",
    "CheckReport",
    "HistoryEntry",
    "LevelChain",
    "LevelDigests",
    "RollbackResult",
    "TupleStack",
    "as_json_reads",
    "chain_below",
    "chain_of",
    "chain_versions",
    "level_line",
    "level_summary",
    "level_text",
]

# What an answer, a record or a log line says of a level: its top versions and how many
# it holds, so that it costs the same at level 1 and at level 10,000 (``status`` and
# ``Registry.level`` give the whole level).
LEVEL_SHOWN = 10


def as_json_reads(value: Any) -> Any:
    """``value`` as JSON gives it back (mappings become dicts with string keys, tuples
    lists), worked out without ``json``: what a reader of a record or message written from
    ``value`` must find, even where a patch broke ``json`` (the vital checks)."""
    if isinstance(value, Mapping):
        return {str(k): as_json_reads(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_json_reads(v) for v in value]
    return value


def level_summary(level: Sequence[str]) -> dict[str, Any]:
    """``level`` (the top ``LEVEL_SHOWN`` versions, oldest first) and ``level_size``."""
    return {"level": list(level[-LEVEL_SHOWN:]), "level_size": len(level)}


K = TypeVar("K")


class LevelDigests(Generic[K]):
    """The digest of a level's bottom: what lets a summary of the top (``level_summary``)
    stand for the whole level at the other end of a channel.

    ``digest(keys, n)`` is a chained sha256 of the first ``n`` entries (``entry(key)``:
    version and sha256), the same for the same entries on either side. The digests are
    kept between calls: a level that changed at its top costs what changed (the part
    kept is found by one comparison of the keys, by identity first), not the level.
    """

    def __init__(self, entry: Callable[[K], tuple[str, str | None]]) -> None:
        self._entry = entry
        self._keys: tuple[K, ...] = ()
        self._digests = [""]  # [i]: the digest of the first i entries

    def digest(self, keys: Sequence[K], n: int) -> str:
        """The digest of ``keys[:n]``'s entries (``""`` for none)."""
        known = self._keys
        m = min(len(known), n)
        head = tuple(keys[:m])
        if known[:m] != head:  # a change below the top: kept up to where they differ
            m = next(i for i, (a, b) in enumerate(zip(known, head, strict=False)) if a != b)
            known = known[:m]
            del self._digests[m + 1 :]
        if n > len(known):
            added = tuple(keys[len(known) : n])
            digests = self._digests
            for key in added:
                version, sha = self._entry(key)
                step = f"{digests[-1]}\n{version}\n{sha or ''}".encode()
                digests.append(hashlib.sha256(step).hexdigest())
            known += added
        self._keys = known
        return self._digests[n]


def level_text(level: Sequence[str], baseline: str) -> str:
    """A level for a log line: all of it up to ``LEVEL_SHOWN`` versions, else its top and
    its size (``..., 1.0.991, ..., 1.0.1000 (1000 patches)``)."""
    if not level:
        return f"baseline {baseline}"
    return level_line(level[-LEVEL_SHOWN:], len(level))


def level_line(top: Sequence[str], size: int) -> str:
    """The versions ``top`` (a level's top, or all of it) as a line, marked as the top of
    a level holding ``size`` patches when that is more."""
    text = ", ".join(top)
    return f"..., {text} ({size} patches)" if size > len(top) else text


@dataclass(frozen=True, slots=True)
class CheckReport:
    """What ``check()`` found: whether the patch goes in hot, and if not, why."""

    version: str
    hot: bool
    reasons: tuple[str, ...]
    targets: tuple[str, ...]
    modes: Mapping[str, str]  # target -> "inline", or "forward (why)"
    names: tuple[str, ...]  # globals the patch adds to its target modules

    def record(self) -> dict[str, Any]:
        """The report as JSON-ready data, ``names`` aside (the control protocol, the channel)."""
        return {
            "version": self.version,
            "hot": self.hot,
            "reasons": list(self.reasons),
            "targets": list(self.targets),
            "modes": dict(self.modes),
        }


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """A patch went in: its targets, how each runs, and how long it took."""

    version: str
    hot: bool
    targets: tuple[str, ...]
    elapsed_s: float  # the whole apply, validation included
    switch_s: float  # the step during which calls could observe a change
    modes: Mapping[str, str]
    # target -> how many function objects run its new code: 1 for a function; for a
    # nested function (mod:outer.<locals>.inner), every one made from its code so far
    patched: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RollbackResult:
    """Patches went out: which, the level afterwards, and how long it took."""

    versions: tuple[str, ...]  # rolled back, newest first
    level: tuple[str, ...]  # the level afterwards
    elapsed_s: float
    switch_s: float


# One state of a ``TupleStack``: (its top item, the state below, its size). A plain
# tuple: one whose item is a string (a version) the garbage collector stops tracking,
# with the states below it, so that a level of versions costs it nothing.
_Node = tuple[T, "_Node[T] | None", int]
_ITEM: Final = 0
_BELOW: Final = 1
_SIZE: Final = 2


def _node(item: T, below: _Node[T] | None) -> _Node[T]:
    return (item, below, below[_SIZE] + 1 if below is not None else 1)


# A level as the versions' ``TupleStack`` holds it: its top state. History entries keep
# the state of their level, shared with the stack and with each other: an entry costs the
# same whatever the level's length, and, a tuple of strings and of such tuples, nothing
# the garbage collector tracks once it has seen it.
LevelChain = _Node[str]


def chain_of(versions: Iterable[str], below: LevelChain | None = None) -> LevelChain | None:
    """``below`` with ``versions`` put on top, oldest first."""
    for version in versions:
        below = _node(version, below)
    return below


def chain_below(chain: LevelChain | None, count: int) -> LevelChain | None:
    """``chain`` less its top ``count`` versions (``None``: none left)."""
    for _ in range(count):
        if chain is None:
            break
        chain = chain[_BELOW]
    return chain


def chain_versions(chain: LevelChain | None) -> tuple[str, ...]:
    """The versions of ``chain``, oldest first."""
    out: list[str] = []
    while chain is not None:
        out.append(chain[_ITEM])
        chain = chain[_BELOW]
    out.reverse()
    return tuple(out)


class TupleStack(Generic[T]):
    """A stack pushed and popped in O(1), read as tuples that are consistent snapshots.

    Its state is one immutable node (item, state below, size), replaced whole by
    each change: a reader on another thread, without a lock, sees the stack
    before a change or after it, never half of one. The tuple of a state is
    made when it is read, from the tuple last read: a push since then costs one
    copy of it, a change of any shape a walk of what changed (not a walk of the
    stack), and a state read again costs nothing. Only the last tuple read is
    kept: the states themselves share their nodes.
    """

    __slots__ = ("_read", "_top")

    def __init__(self, items: Iterable[T] = ()):
        self._top: _Node[T] | None = None
        self._read: tuple[_Node[T] | None, tuple[T, ...]] = (None, ())
        self.push(*items)

    def __len__(self) -> int:
        top = self._top
        return top[_SIZE] if top is not None else 0

    def push(self, *items: T) -> None:
        self.change(0, items)

    def pop(self, count: int = 1) -> None:
        self.change(count, ())

    def change(self, pop: int, push: Iterable[T]) -> None:
        """Take ``pop`` items off the top (all if it holds fewer), then put ``push`` on,
        oldest first: one change, which a reader sees whole or not at all."""
        top = self._top
        for _ in range(pop):
            if top is None:
                break
            top = top[_BELOW]
        for item in push:
            top = _node(item, top)
        self._top = top

    @property
    def top(self) -> _Node[T] | None:
        """The state now (``chain_of`` and ``chain_below`` make others from it)."""
        return self._top

    def set(self, top: _Node[T] | None) -> None:
        """The stack in state ``top`` (one made from this stack's states), in one change."""
        self._top = top

    def last(self, default: T) -> T:
        """The top item, or ``default`` when the stack is empty."""
        top = self._top
        return top[_ITEM] if top is not None else default

    def snapshot(self) -> tuple[T, ...]:
        """The items, oldest first, as the stack holds them now."""
        now = top = self._top  # one state, whatever a writer does meanwhile
        read, items = self._read
        if read is now:
            return items
        # Down from both states to the one they share (the same node, at the same size).
        above: list[T] = []
        while top is not None and (read is None or top[_SIZE] > read[_SIZE]):
            above.append(top[_ITEM])
            top = top[_BELOW]
        while read is not None and (top is None or read[_SIZE] > top[_SIZE]):
            read = read[_BELOW]
        while top is not read:
            assert top is not None
            assert read is not None
            above.append(top[_ITEM])
            top, read = top[_BELOW], read[_BELOW]
        shared = read[_SIZE] if read is not None else 0
        above.reverse()
        items = (items if shared == len(items) else items[:shared]) + tuple(above)
        self._read = (now, items)
        return items


class HistoryEntry:
    """One change of the level: an apply, a journal replay or a rollback (read-only)."""

    __slots__ = ("_chain", "_level", "action", "elapsed_s", "time", "version", "who")
    __match_args__ = ("time", "action", "version", "level", "elapsed_s", "who")

    time: float
    action: str  # "apply", "replay", "rollback"
    version: str
    elapsed_s: float
    who: str
    _level: tuple[str, ...] | None
    _chain: LevelChain | None  # the level as the registry's stack shares it, if not _level

    def __init__(  # noqa: PLR0917 -- the fields in the order HistoryEntry always took them
        self,
        time: float,
        action: str,
        version: str,
        level: tuple[str, ...] | None,
        elapsed_s: float,
        who: str = "api",
    ):
        put = object.__setattr__  # read-only: __setattr__ refuses
        put(self, "time", time)
        put(self, "action", action)
        put(self, "version", version)
        put(self, "_level", level)
        put(self, "_chain", None)
        put(self, "elapsed_s", elapsed_s)
        put(self, "who", who)

    @classmethod
    def at(  # noqa: PLR0917 -- the fields in the order of __init__
        cls,
        time: float,
        action: str,
        version: str,
        chain: LevelChain | None,
        elapsed_s: float,
        who: str,
    ) -> HistoryEntry:
        """An entry whose level is ``chain`` (spelt out when read)."""
        entry = cls(time, action, version, None, elapsed_s, who)
        object.__setattr__(entry, "_chain", chain)
        return entry

    @property
    def level(self) -> tuple[str, ...]:
        """The level after the change, oldest first."""
        if self._chain is not None:
            return chain_versions(self._chain)
        return self._level or ()

    def __setattr__(self, name: str, value: object) -> None:
        msg = f"HistoryEntry is read-only: cannot set {name}"
        raise AttributeError(msg)

    def _key(self) -> tuple[object, ...]:
        return (self.time, self.action, self.version, self.level, self.elapsed_s, self.who)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HistoryEntry):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"HistoryEntry(time={self.time!r}, action={self.action!r}, version={self.version!r}, "
            f"level={self.level!r}, elapsed_s={self.elapsed_s!r}, who={self.who!r})"
        )

    def record(self) -> dict[str, Any]:
        """The entry as JSON-ready data (the journal's history rows, the control protocol)."""
        return {
            "time": self.time,
            "action": self.action,
            "version": self.version,
            "level": list(self.level),
            "elapsed_s": self.elapsed_s,
            "who": self.who,
        }

    @classmethod
    def from_record(cls, row: Mapping[str, Any]) -> HistoryEntry:
        """An entry back from ``record()``'s data (the journal has checked its fields)."""
        return cls(**dict(row, level=tuple(row["level"])))

    @classmethod
    def from_records(cls, rows: Iterable[Mapping[str, Any]]) -> list[HistoryEntry]:
        """Entries back from rows, consecutive levels sharing what they have in common."""
        entries: list[HistoryEntry] = []
        prev: list[str] = []
        chain: LevelChain | None = None
        for row in rows:
            level = row["level"]  # only read (a copy if it is not a list)
            if type(level) is not list:
                level = list(level)
            same = len(prev)
            if level[:same] != prev:
                same = len(level) if prev[: len(level)] == level else _common(prev, level)
                chain = chain_below(chain, len(prev) - same)
            chain = chain_of(level[same:], chain)
            prev = level
            entries.append(
                cls.at(
                    row["time"],
                    row["action"],
                    row["version"],
                    chain,
                    row["elapsed_s"],
                    row.get("who", "api"),
                )
            )
        return entries


def _common(a: list[str], b: list[str]) -> int:
    """The length of what ``a`` and ``b`` begin with in common."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
