"""A rollback's course: which entries come off the level, and what the level keeps.

Pure functions of the registry's stack, as ``_plan`` is for an apply: nothing
here changes anything live.
"""

from __future__ import annotations

from collections.abc import Sequence

from packaging.version import Version

from hotpatch._errors import VersionConflict
from hotpatch._patch import parse_version
from hotpatch._plan import Applied

__all__ = ["kept_of", "unwind"]


def unwind(
    current: Sequence[Applied], to: str | None, baseline: str, baseline_version: Version
) -> tuple[list[Applied], list[Applied]]:
    """(stack afterwards, entries popped newest first) of a rollback of ``current``: its
    top entry, or down to level ``to``. Raises ``VersionConflict`` before anything changes."""
    stack = list(current)
    if not stack:
        msg = f"nothing to roll back: the process runs baseline {baseline} with no patches"
        raise VersionConflict(msg)
    goal = parse_version(str(to), "rollback target") if to is not None else None
    popped: list[Applied] = []
    while stack:
        if goal is not None and stack[-1].patch.parsed_version == goal:
            break
        entry = stack.pop()
        popped.append(entry)
        stack.extend(entry.replaced)
        if goal is None:
            break
    if goal is not None and goal != baseline_version and not stack:
        level = ", ".join(e.patch.version for e in current)
        msg = (
            f"cannot roll back to {to}: it is neither in the level ({level}) "
            f"nor the baseline {baseline}"
        )
        raise VersionConflict(msg, patch=str(to))
    return stack, popped


def kept_of(old: Sequence[Applied], new: Sequence[Applied]) -> tuple[int, tuple[str, ...]]:
    """(how many entries of ``old`` begin ``new``, the versions of ``new`` after them).

    ``new`` is ``old`` less its top entries, plus entries they had replaced (never
    the same objects): found from the top, in the length of the change.
    """
    kept = min(len(old), len(new))
    while kept and new[kept - 1] is not old[kept - 1]:
        kept -= 1
    return kept, tuple(e.patch.version for e in new[kept:])
