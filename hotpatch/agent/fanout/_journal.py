"""The journal of pre-fork workers: replayed by a worker that starts alone, written by the owner.

It is the ordinary journal (``hotpatch._journal``, the format ``Registry(journal=)``
reads), at ``DIR/.workers/journal.json`` unless ``install(journal=...)`` says
otherwise. It records the *group's* level: the owner of the folder writes it
after a drop was applied in every worker, after a rollback of the group, after
an all-or-none undo (a history row), and when it takes the folder over, so
that what a previous owner applied but did not record yet is recorded. Only
the holder of the folder's lock writes, so there is one writer at a time.

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
from hotpatch._journal import Journal, JournalEntry, JournalState
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
            recorded = [] if state is None else [(e.version, e.sha256) for e in state.level]
            running = [(e.version, e.sha256) for e in _entries(registry)]
            if recorded == running:
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
            self._write(state, registry, action="resync", version=version, who=who, elapsed_s=0.0)
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
        """Write the registry's level with one more history row; ``JournalError`` if it fails."""
        self._write(
            self._read(), registry, action=action, version=version, who=who, elapsed_s=elapsed_s
        )

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
        state = self._journal.read()
        if state is not None and state.baseline != self.baseline:
            moved = self._journal.set_aside(f"baseline-{state.baseline}")
            self.report = (
                f"journal {self.path} was written for baseline {state.baseline}, not "
                f"{self.baseline}: set aside as {moved.name}; a new one records this group"
            )
            log.warning("%s", self.report)
            return None
        return state

    def _write(
        self,
        state: JournalState | None,
        registry: Registry,
        *,
        action: str,
        version: str,
        who: str,
        elapsed_s: float,
    ) -> None:
        level = _entries(registry)
        history: list[dict[str, Any]] = [] if state is None else list(state.history)
        history.append(
            {
                "time": time.time(),
                "action": action,
                "version": version,
                "level": [e.version for e in level],
                "elapsed_s": elapsed_s,
                "who": who,
            }
        )
        self._journal.write(JournalState(self.baseline, level, history))

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


def _entries(registry: Registry) -> list[JournalEntry]:
    """The registry's level as journal entries (text and sha256 of each patch)."""
    return [
        JournalEntry(p.version, p.source.sha256, p.source.path, p.source.text, p.summary)
        for p in registry.patches
        if p.source is not None
    ]
