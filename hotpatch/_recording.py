"""A registry's journal: each level recorded, read back for a replay, followed for a resync."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from hotpatch._errors import JournalError, PatchError
from hotpatch._journal import Journal
from hotpatch._journal_format import HISTORY_KEPT, JournalEntry, JournalState
from hotpatch._patch import Patch, parse_version
from hotpatch._results import HistoryEntry

__all__ = ["Recording"]

log = logging.getLogger("hotpatch")


class Recording:
    """Writes every level the registry reaches; gives back the level to replay.

    While ``muted()``, the registry changes its level in memory only (undoing a
    replay that failed, catching up with the journal): the journal keeps what
    it recorded.
    """

    def __init__(self, journal: Journal, baseline: str):
        self.journal = journal
        self.baseline = baseline
        self._baseline_version = parse_version(baseline, "baseline")
        self._muted = 0
        # History entries the journal has not recorded yet (a replay's, a muted
        # rollback's): written with the next change, as rows that carry their level.
        self._unrecorded: list[HistoryEntry] = []
        self.report: str | None = None  # what the replay did, for the log and status

    @property
    def on(self) -> bool:
        return not self._muted

    @contextlib.contextmanager
    def muted(self) -> Iterator[None]:
        self._muted += 1
        try:
            yield
        finally:
            self._muted -= 1

    def record(
        self,
        pop: int,
        push: Sequence[Patch],
        row: HistoryEntry,
        whole: Callable[[], tuple[Sequence[Patch], Sequence[HistoryEntry]]],
    ) -> Callable[[], None]:
        """Record one change of the level: ``pop`` patches off its top, ``push`` on, ``row``.

        One record appended to the journal, whatever the level's length;
        ``whole()`` (the level and history afterwards) is written in full only
        when the journal file is not the one this process knows. Returns what
        takes the change back out of the journal.
        """
        entries = [_entry(patch) for patch in push]
        rows = _rows(self._unrecorded[-HISTORY_KEPT:])
        rows.append(_row(row))

        def state() -> JournalState:
            patches, history = whole()
            rows = [h.record() for h in list(history)[-HISTORY_KEPT:]]
            return JournalState(self.baseline, [_entry(p) for p in patches], rows)

        undo = self.journal.append(pop, entries, rows, state)
        self._unrecorded.clear()
        return undo

    def rewrite(
        self, patches: Sequence[Patch], history: Sequence[HistoryEntry]
    ) -> Callable[[], None]:
        """Write the journal whole as it stands (``patches``, ``history``), to know it can be
        written before a step that cannot be taken back. Returns what puts it back.

        The history not recorded yet stays for the next change's record."""
        back = self.journal.undo_point()
        later = {id(h) for h in self._unrecorded}
        rows = [h.record() for h in list(history)[-HISTORY_KEPT:] if id(h) not in later]
        self.journal.write(JournalState(self.baseline, [_entry(p) for p in patches], rows))
        return back

    def keep(self, patches: Sequence[Patch], history: Sequence[HistoryEntry]) -> bool:
        """Write the journal again as it stands if its file has gone (deleted by hand, or
        with its folder) while the level holds patches; ``True`` if written. A file there
        is left as it is, whoever wrote it (a new process of a restart may have)."""
        if not patches or os.path.lexists(self.journal.path):
            return False
        self.rewrite(patches, history)
        return True

    def unrecorded(self, entry: HistoryEntry) -> None:
        """``entry`` is in the history but not in the journal: record it with the next change."""
        self._unrecorded.append(entry)
        if len(self._unrecorded) > 2 * HISTORY_KEPT:
            del self._unrecorded[:-HISTORY_KEPT]  # the journal keeps no more than that

    def to_replay(self) -> JournalState | None:
        """The recorded level, if there is one for this baseline.

        A journal of another baseline is set aside (kept for inspection) and
        said so in ``report``: the process starts at the baseline.
        """
        state = self.journal.read()
        if state is None:
            return None
        if parse_version(state.baseline, "journal baseline") != self._baseline_version:
            moved = self.journal.set_aside(f"baseline-{state.baseline}")
            self.report = (
                f"journal {self.journal.path} was written for baseline {state.baseline}, not "
                f"{self.baseline}: not replayed (kept as {moved.name}); starting at the baseline"
            )
            log.warning("%s", self.report)
            return None
        found = self.journal.format_found
        if self.journal.upgrade(state):
            log.info(
                "journal %s converted from format %s to format %s",
                self.journal.path,
                found,
                self.journal.format_found,
            )
        return state

    def replayed(self, state: JournalState) -> None:
        self.report = f"replayed {len(state.level)} patches from {self.journal.path}"

    def failed(self, entry: JournalEntry, exc: PatchError) -> JournalError:
        """The error of a level that cannot be replayed (the registry is back at the baseline)."""
        msg = (
            f"journal {self.journal.path}: patch {entry.version} cannot be replayed ({exc}); "
            f"the process runs baseline {self.baseline} with no patches. Fix the cause or "
            "move the journal aside"
        )
        return JournalError(msg, patch=entry.version)

    def moved_on(self, running: Sequence[Patch]) -> bool:
        """Does the journal now record another level than ``running`` (versions, contents)?

        A journal rewritten for another baseline is logged and not followed.
        """
        state = self.journal.read()
        if state is not None and state.baseline != self.baseline:
            log.warning(
                "journal %s is now for baseline %s, not %s: not followed",
                self.journal.path,
                state.baseline,
                self.baseline,
            )
            return False
        recorded = [] if state is None else [(e.version, e.sha256) for e in state.level]
        now = [(p.version, p.sha256) for p in running]
        if recorded == now:
            return False
        log.warning(
            "journal %s changed since it was replayed (level %s, running %s): catching up",
            self.journal.path,
            ", ".join(v for v, _ in recorded) or "none",
            ", ".join(v for v, _ in now) or "none",
        )
        return True


def _entry(patch: Patch) -> JournalEntry:
    source = patch.source
    assert source is not None  # the planner refuses a patch without one
    return JournalEntry(patch.version, source.sha256, source.path, source.text, patch.summary)


def _row(entry: HistoryEntry) -> dict[str, Any]:
    return {
        "time": entry.time,
        "action": entry.action,
        "version": entry.version,
        "elapsed_s": entry.elapsed_s,
        "who": entry.who,
    }


def _rows(entries: Sequence[HistoryEntry]) -> list[dict[str, Any]]:
    """Rows that carry their level: the first whole, each next one as a change of it."""
    rows: list[dict[str, Any]] = []
    prev: tuple[str, ...] | None = None
    for entry in entries:
        level = entry.level
        row = _row(entry)
        if prev is None:
            row["level"] = list(level)
        else:
            same = len(prev) if level[: len(prev)] == prev else _common(prev, level)
            row["delta"] = [len(prev) - same, list(level[same:])]
        rows.append(row)
        prev = level
    return rows


def _common(a: Sequence[str], b: Sequence[str]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
