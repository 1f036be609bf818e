"""The level a journal records, applied again: as a process starts, and to catch up at a hand-over.

The registry lends the steps (``ReplaySteps``); the journal is read through its
``Recording``, never written: a replay that fails is undone in memory only, so
that the journal keeps the level it recorded (the cause can be fixed and the
level replayed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from hotpatch._errors import PatchError
from hotpatch._loader import load_patch_source
from hotpatch._patch import Patch
from hotpatch._recording import Recording
from hotpatch._results import HistoryEntry

__all__ = ["ReplaySteps", "replay", "resync"]


@dataclass(frozen=True, slots=True)
class ReplaySteps:
    """What a replay does to the registry: each a step of its own level."""

    history: Callable[[Iterable[HistoryEntry]], None]  # the recorded history, as it stands
    apply: Callable[[Patch], None]  # one patch, as a process that has not served yet
    to_baseline: Callable[[], None]  # every patch undone (the journal muted meanwhile)


def replay(recording: Recording, steps: ReplaySteps) -> None:
    """Apply the level the journal records, oldest first; ``JournalError`` if one fails."""
    state = recording.to_replay()
    if state is None:
        return
    steps.history(HistoryEntry.from_records(state.history))
    for entry in state.level:
        try:
            steps.apply(load_patch_source(entry.text.encode(), path=entry.path))
        except PatchError as exc:
            with recording.muted():
                steps.to_baseline()
            raise recording.failed(entry, exc) from exc
    recording.replayed(state)


def resync(recording: Recording, running: Sequence[Patch], steps: ReplaySteps) -> bool:
    """Bring the level to what the journal records now, if it moved on; ``True`` if so."""
    if not recording.moved_on(running):
        return False
    with recording.muted():  # undo in memory only: the journal stays as recorded
        steps.to_baseline()
        replay(recording, steps)
    return True
