"""A drop's turn in its folder's version order: what the pipeline asks the folder about it.

The folder takes a burst's lowest version once the burst has settled
(``hotpatch.agent._queue``). A move can still be split: descheduled between
two renames for longer than the settle (often, on a loaded machine), it
brings the rest of the burst after the first files were taken. Two questions
close that gap, asked by the pipeline (``DropPipeline.process``) of the
drop's ``Turn``:

* ``lower_waiting`` -- just before the drop is applied, after its checks
  (verification takes tens of milliseconds): did a lower version come
  meanwhile, queued or in the folder? Then nothing is applied, ``Overtaken``
  puts the drop back in the queue, and the lower one goes in first. A burst
  is thus kept in order as long as its files come before its first one is
  applied, however long the move paused.
* ``late`` -- when the level refused a lower version than its top as not
  newer: was the top applied from this folder shortly before this drop came?
  It stays refused (the level stacks in version order; applying it beneath,
  or rolling the level back by itself, would change running code no one
  asked to change), and its reason says what happened and the two ways in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

from packaging.version import Version

from hotpatch.agent._names import shown
from hotpatch.agent._queue import DropQueue

__all__ = ["LATE_S", "Applied", "FolderTurn", "Overtaken", "Turn", "late_reason"]

# A lower version coming this long after a higher one was applied is told the two may
# have been one burst, split; later than that it gets the plain refusal.
LATE_S = 10.0


class Overtaken(Exception):
    """A lower version came into the folder while this drop was checked; nothing was applied.

    Not the patch's fault: the folder puts it back in the queue, and takes the
    lower version first.
    """


class Turn(Protocol):
    """What the folder tells the pipeline about the drop being processed."""

    def lower_waiting(self, version: str) -> str | None:
        """The name of a drop of a lower version than ``version`` waiting now; ``None``: none."""
        ...

    def late(self, version: str, level: Sequence[str]) -> str | None:
        """Why ``version``, lower than the top of ``level``, comes too late; ``None``: no burst."""
        ...


class Applied(NamedTuple):
    """The last drop the folder applied: its name, version, and when (``time.monotonic``)."""

    name: str
    version: str
    at: float


class FolderTurn:
    """The ``Turn`` of the drop ``name`` its folder's worker is processing from ``queue``.

    ``applied``: the last drop that folder applied, if any.
    """

    def __init__(self, queue: DropQueue, name: str, applied: Applied | None) -> None:
        self._queue, self._name, self._applied = queue, name, applied

    def lower_waiting(self, version: str) -> str | None:
        return self._queue.lower_than(version)

    def late(self, version: str, level: Sequence[str]) -> str | None:
        top = self._applied
        if top is None or not level or top.version != level[-1]:
            return None  # the top of the level is not this folder's last drop
        if Version(version) >= Version(top.version):
            return None
        gap = self._queue.came - top.at
        if gap > LATE_S:
            return None  # long after: the level's own refusal says it
        return late_reason(self._name, version, level, top, gap_s=gap, settle_s=self._queue.settle)


def late_reason(
    name: str, version: str, level: Sequence[str], top: Applied, *, gap_s: float, settle_s: float
) -> str:
    """The refusal of ``name`` (``version``), which came ``gap_s`` after ``top`` was applied."""
    when = (
        f"came {_duration(gap_s)} after {shown(top.name)} ({top.version}) was applied"
        if gap_s > 0
        else f"came as {shown(top.name)} ({top.version}) was being applied"
    )
    wanted = Version(version)
    below = [v for v in level if Version(v) < wanted]
    back = f"`hotpatch rollback --to {below[-1]}`" if below else "`hotpatch rollback --to BASELINE`"
    return (
        f"patch {version} is not newer than the current level {level[-1]}: {shown(name)} "
        f"{when}, so the two were not one burst (a burst is kept in version order when its "
        f"files come within {settle_s * 1000:.0f} ms of each other, or before its first one "
        "is applied; a move paused for longer, as on a loaded machine, is split); nothing "
        f"of {version} was applied. To have it in: give it a version above {level[-1]}, or "
        f"roll back below it ({back}) and drop {version} and the versions above it again"
    )


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"
