"""The journal of pre-fork workers: replayed by a worker that starts alone, written by the owner.

It is the ordinary journal (``hotpatch._journal``, the format ``Registry(journal=)``
reads), at ``DIR/.workers/journal.json`` unless ``install(journal=...)`` says
otherwise. It records the *group's* level: the owner of the folder writes it
after a drop was applied in every worker, after a rollback of the group, after
an all-or-none undo (a history row), and when it takes the folder over, so
that what a previous owner applied but did not record yet is recorded. Only
the holder of the folder's lock writes, so there is one writer at a time.

Each change is one record appended to the file (``Journal.append``: the
patches taken off the top of the level and those put on, and one history
row), synced before the drop is filed: what it costs does not grow with the
level. A torn last record is ignored, the file is compacted atomically when it
has grown, and a file the owner does not know as its own (none yet, an older
format, written by a previous owner since) is written whole, atomically. A
journal of format 1 is converted in place when it is replayed or taken over; a
newer format is refused, naming the upgrade.

A journal that cannot be replayed (corrupt, or a patch that no longer
applies) leaves the workers at the baseline, and the owner refuses patches
until it is moved aside: a new level written over it would lose the recorded
one without anybody having decided so.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hotpatch._errors import JournalError
from hotpatch._journal import Journal
from hotpatch._journal_format import FORMAT, JournalEntry, JournalState
from hotpatch._patch import Patch
from hotpatch._registry import Registry

__all__ = ["JOURNAL_NAME", "GroupJournal"]

log = logging.getLogger("hotpatch")

JOURNAL_NAME = "journal.json"


class GroupJournal:
    """The group's journal, as one worker sees it; every method is called under the agent's lock."""

    def __init__(self, path: Path, baseline: str):
        self.path = path
        self.baseline = baseline
        self.report: str | None = None  # what the replay did (or why it set the journal aside)
        self.problem: str | None = None  # why patches are refused until the journal is fixed
        self._journal = Journal(path)
        self._problem_bytes: bytes | None = None  # the journal's bytes when the problem was seen
        # The level the file holds as this worker last read or wrote it (version, sha256);
        # ``None``: not known, read before the next record (appends go by difference).
        self._recorded: list[tuple[str, str]] | None = None
        # The registry's patches when ``_recorded`` was last written from them: the next
        # change is found from what differs at their top, without walking the level.
        self._written: tuple[Patch, ...] | None = None

    # -- a worker that starts alone ------------------------------------------------------

    def replay(self, make: Callable[[Path | None], Registry]) -> Registry:
        """A registry at the journal's level; at the baseline, with ``problem`` set, if the
        journal cannot be replayed (the Registry's own replay: all the level or nothing)."""
        try:
            registry = make(self.path)
        except JournalError as exc:
            self._refuse(str(exc))
            return make(None)
        registry.detach_journal()  # the owner of the folder records the level from now on
        self.report = registry.journal_report
        if self.report:
            log.info("worker %d: %s", os.getpid(), self.report)
        return registry

    # -- the owner ----------------------------------------------------------------------

    def take_over(self, registry: Registry, who: str) -> None:
        """A new owner: record its level if the journal says otherwise. Never raises."""
        try:
            if self._still_refused():
                return
            state = self._read()
            if state is not None:
                self._upgrade(state)
            recorded = self._recorded or []
            running = _running(_patches(registry))
            if recorded == running:
                self._written = registry.patches
                return
            log.warning(
                "worker %d took the folder over: the journal %s says level %s, the workers "
                "run %s; recording the running level",
                os.getpid(),
                self.path,
                ", ".join(v for v, _ in recorded) or "-",
                ", ".join(v for v, _ in running) or "-",
            )
            version = ", ".join(v for v, _ in running)
            self.record(registry, "resync", version, who)
        except JournalError as exc:
            self._refuse(str(exc))

    def check(self) -> None:
        """Raise ``JournalError`` while the journal refuses patches (before anything applies)."""
        if self._still_refused():
            assert self.problem is not None
            raise JournalError(self.problem)

    def record(
        self, registry: Registry, action: str, version: str, who: str, elapsed_s: float = 0.0
    ) -> None:
        """Record the registry's level with one more history row; ``JournalError`` if it fails.

        One record appended: the patches off the top of the level last recorded
        and those on top now (their content), and the row. What changed is found
        at the top of the registry's patches since the last record, so what this
        costs does not grow with the level either."""
        now = registry.patches
        change = self._change(now)
        if change is not None:
            pop, push = change
            assert self._recorded is not None  # _change found it known
            level = self._recorded
        else:  # the file's level known by its versions only: compared whole
            patches = _patches(registry)
            running = _running(patches)
            if self._recorded is None:
                self._read()
            level = self._recorded or []
            same = _common(level, running)
            pop, push = len(level) - same, patches[same:]
        row: dict[str, Any] = {
            "time": time.time(),
            "action": action,
            "version": version,
            "elapsed_s": elapsed_s,
            "who": who,
        }

        def whole() -> JournalState:
            """The state to write in full: the file's history (if any) and the row."""
            state = self._read()
            history = [] if state is None else list(state.history)
            patches = _patches(registry)
            history.append(row | {"level": [p.version for p in patches]})
            return JournalState(self.baseline, [_entry(p) for p in patches], history)

        self._recorded, self._written = None, None  # until the record is known written
        self._journal.append(pop, [_entry(p) for p in push], [row], whole)
        del level[len(level) - pop :]  # now the registry's level: the top changed alone
        level.extend(_running(push))
        self._recorded, self._written = level, now

    def _change(self, now: tuple[Patch, ...]) -> tuple[int, list[Patch]] | None:
        """How many recorded patches come off and which go on, from the registry's patches
        when the file was last written (``None`` if not known, or not the file's now).

        The patches both share at the bottom are the same objects (a level changes at its
        top), compared as a whole in one step; only those above are looked at."""
        before = self._written
        if before is None or self._recorded is None:
            return None
        same = min(len(before), len(now))
        while same and before[:same] != now[:same]:  # a level changed below its top
            same //= 2
        return len(_patches_of(before[same:])), _patches_of(now[same:])

    def refuse(self, problem: str) -> None:
        """Refuse patches for ``problem`` (a live worker's), until the journal is replaced."""
        if self.problem is None:
            self.problem = problem
            try:
                self._problem_bytes = self.path.read_bytes()
            except OSError:
                self._problem_bytes = None

    # -- inside --------------------------------------------------------------------------

    def _read(self) -> JournalState | None:
        """The journal's state; one of another baseline is set aside (and reported)."""
        self._recorded, self._written = None, None
        state = self._journal.read()
        if state is not None and state.baseline != self.baseline:
            moved = self._journal.set_aside(f"baseline-{state.baseline}")
            self.report = (
                f"journal {self.path} was written for baseline {state.baseline}, not "
                f"{self.baseline}: set aside as {moved.name}; a new one records this group"
            )
            log.warning("%s", self.report)
            state = None
        self._recorded = [] if state is None else _keys(state.level)
        return state

    def _upgrade(self, state: JournalState) -> None:
        """A journal of an older format rewritten in this one, atomically (said in the log)."""
        found = self._journal.format_found
        if found is not None and found != FORMAT and self._journal.upgrade(state):
            log.info("journal %s converted from format %s to format %s", self.path, found, FORMAT)

    def _refuse(self, reason: str) -> None:
        self.problem = None
        self.refuse(
            f"{reason}. The workers run baseline {self.baseline} without the recorded patches, "
            "and refuse new ones until the journal is moved aside (a new one then starts at "
            "the running level); to replay a restored or fixed journal, restart the server"
        )
        log.error("worker %d: %s", os.getpid(), self.problem)

    def _still_refused(self) -> bool:
        """Is the journal still the one that was refused? Moved aside or replaced: not."""
        if self.problem is None:
            return False
        try:
            now: bytes | None = self.path.read_bytes()
        except FileNotFoundError:
            now = None
        except OSError:
            return True
        if now is not None and now == self._problem_bytes:
            return True
        log.info(
            "worker %d: the journal %s was replaced; patches are accepted again",
            os.getpid(),
            self.path,
        )
        self.problem = self._problem_bytes = None
        return False


def _patches(registry: Registry) -> list[Patch]:
    """The registry's level: the patches with a source (every one the journal can hold)."""
    return _patches_of(registry.patches)


def _patches_of(patches: tuple[Patch, ...]) -> list[Patch]:
    """Of ``patches``, those with a source."""
    return [p for p in patches if p.source is not None]


def _keys(level: list[JournalEntry]) -> list[tuple[str, str]]:
    """(version, sha256) of each patch of a recorded level."""
    return [(e.version, e.sha256) for e in level]


def _running(patches: list[Patch]) -> list[tuple[str, str]]:
    """(version, sha256) of each patch of a running level."""
    return [(p.version, p.source.sha256) for p in patches if p.source is not None]


def _entry(patch: Patch) -> JournalEntry:
    """A patch as a journal entry: version, sha256, path, text and summary."""
    source = patch.source
    assert source is not None  # _patches keeps only those
    return JournalEntry(patch.version, source.sha256, source.path, source.text, patch.summary)


def _common(a: list[tuple[str, str]], b: list[tuple[str, str]]) -> int:
    """How many patches two levels share at the bottom."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
