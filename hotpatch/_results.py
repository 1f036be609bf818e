"""What the registry answers: a check's report, an apply's and a rollback's result, history."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["ApplyResult", "CheckReport", "HistoryEntry", "RollbackResult"]


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


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One change of the level: an apply, a journal replay or a rollback."""

    time: float
    action: str  # "apply", "replay", "rollback"
    version: str
    level: tuple[str, ...]
    elapsed_s: float
    who: str = "api"

    def record(self) -> dict[str, Any]:
        """The entry as JSON-ready data (the journal's history rows, the control protocol)."""
        return dict(asdict(self), level=list(self.level))

    @classmethod
    def from_record(cls, row: Mapping[str, Any]) -> HistoryEntry:
        """An entry back from ``record()``'s data (the journal has checked its fields)."""
        return cls(**dict(row, level=tuple(row["level"])))
