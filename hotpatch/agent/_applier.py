"""What applies a verified patch: the ``Applier`` protocol a ``DropPipeline`` is given.

Three appliers exist: ``LocalApplier`` (``hotpatch.agent._local``, a ``Registry``
in this process), ``FanoutApplier`` (``hotpatch.agent.fanout._applier``, every
worker of a pre-fork server) and ``SupervisorApplier``
(``hotpatch.supervisor._patches``, the serving process of ``hotpatch run``,
through a restart when the patch is not hot).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from packaging.version import Version

from hotpatch._errors import VerificationFailed, VersionConflict
from hotpatch._patch import parse_version
from hotpatch.agent._outcome import Outcome

__all__ = [
    "AppliedPatch",
    "Applier",
    "PatchText",
    "already_applied",
    "not_applied",
    "settled_check",
    "show_answer",
]


class AppliedPatch(NamedTuple):
    """A patch the applier runs: its version, its content's sha256 and, if known, its targets."""

    version: str
    sha256: str | None
    targets: tuple[str, ...] | None  # None: not known where it was applied


class Applier(Protocol):
    """What a ``DropPipeline`` hands the patches it has read, signature-checked and verified.

    The pipeline calls every method under its lock, one patch operation at a time.
    Answers (``check``, ``rollback``, ``history``) are control-socket responses:
    ``{"ok": True, ...}``, or ``{"ok": False, "error": ..., "error_type": ...}``;
    a refusal may also raise a ``PatchError``.
    """

    def level(self) -> tuple[str, ...]:
        """The versions applied, oldest first."""
        ...

    def applied(self) -> Sequence[AppliedPatch]:
        """The patches applied, for the pipeline's same-version check (read for each drop:
        the top at least, all of them only for a version that is not newer)."""
        ...

    def sys_path(self) -> list[str]:
        """The ``sys.path`` the verification child gets: that of the code to be patched."""
        ...

    def deliver(self, data: bytes, path: Path, outcome: Outcome) -> None:
        """Apply the verified bytes of the hot patch read from ``path``; fill ``outcome``.

        Sets ``outcome.notified`` once the patch reached something that tells the
        plugins of a refusal itself.
        """
        ...

    def deliver_bundle(self, path: Path, outcome: Outcome) -> None:
        """Take the baseline bundle at ``path`` (ownership checked); fill ``outcome``."""
        ...

    def check(self, data: bytes, path: Path, outcome: Outcome) -> dict[str, Any]:
        """The answer of ``hotpatch verify``: would the verified bytes apply, and hot?"""
        ...

    def check_bundle(self, path: Path, outcome: Outcome) -> dict[str, Any]:
        """The answer of ``hotpatch verify`` for the baseline bundle at ``path``."""
        ...

    def rejected(self, outcome: Outcome, path: Path) -> None:
        """Tell the plugins of a refusal that never reached them (``outcome.notified`` unset)."""
        ...

    def rollback(self, to: str | None, who: str) -> dict[str, Any]:
        """Roll back the last patch, or to level ``to``; ``ValueError`` for a bad version."""
        ...

    def history(self) -> dict[str, Any]:
        """The answer of ``hotpatch history``."""
        ...

    def show(self, version: str) -> dict[str, Any]:
        """The answer of ``hotpatch show``: the applied patch ``version``'s source and sha256.

        ``VersionConflict`` when it is not applied; ``ValueError`` for a bad version.
        """
        ...


class PatchText(NamedTuple):
    """An applied patch as ``hotpatch show`` tells it: what it is and the text it runs."""

    version: str
    sha256: str
    path: str  # where it was read from (files move: the text is the patch)
    text: str
    summary: str
    targets: tuple[str, ...]


def show_answer(
    patch: PatchText, baseline: str, history: Iterable[Mapping[str, Any]]
) -> dict[str, Any]:
    """``hotpatch show``'s answer for ``patch``, with when and by whom it was applied."""
    applied = None
    for row in history:  # the newest apply (or replay, in a restarted process) wins
        if row.get("version") == patch.version and row.get("action") in ("apply", "replay"):
            applied = row
    when = None
    if applied is not None and isinstance(applied.get("time"), int | float):
        stamp = datetime.datetime.fromtimestamp(float(applied["time"]), datetime.UTC)
        when = stamp.isoformat(timespec="milliseconds")
    return {
        "ok": True,
        "version": patch.version,
        "baseline": baseline,
        "summary": patch.summary,
        "sha256": patch.sha256,
        "path": patch.path,
        "targets": list(patch.targets),
        "applied": when,
        "action": applied.get("action") if applied is not None else None,
        "who": applied.get("who") if applied is not None else None,
        "source": patch.text,
    }


def _version(text: str) -> Version:
    """Each applied version is compared with every drop: parsed once, not once per drop,
    in the cache the patches' own versions are parsed in (one ``Version`` for both)."""
    return parse_version(text, "version")


def not_applied(version: str, level: Iterable[str], baseline: str) -> VersionConflict:
    """The refusal of ``hotpatch show`` for a version that is not in the level."""
    applied = ", ".join(level)
    msg = (
        f"patch {version} is not applied: the level is {applied or 'empty'} on baseline "
        f"{baseline}; `hotpatch history` lists what was applied and rolled back"
    )
    return VersionConflict(msg, patch=version)


def already_applied(applied: Sequence[AppliedPatch], version: str, outcome: Outcome) -> bool:
    """Is ``version`` applied already? Same content: ``unchanged``; other content: refused."""
    wanted = _version(version)
    if applied and wanted > _version(applied[-1].version):
        return False  # newer than the top of the level (which is in version order)
    for patch in applied:
        if _version(patch.version) != wanted:
            continue
        if patch.sha256 == outcome.sha256:
            outcome.outcome = "unchanged"
            outcome.reason = f"patch {patch.version} is already applied with this content"
            if patch.targets is not None:
                outcome.targets = patch.targets
            return True
        msg = (
            f"patch {version} is already applied with other content (applied sha256 "
            f"{(patch.sha256 or '?')[:16]}, this file {(outcome.sha256 or '?')[:16]}); publish "
            "the change under a newer version"
        )
        raise VerificationFailed(msg, patch=version)
    return False


def settled_check(outcome: Outcome) -> dict[str, Any]:
    """The ``verify`` answer for a patch decided without importing it: applied, or pending."""
    hot = outcome.outcome == "unchanged"
    return {
        "ok": True,
        "version": outcome.version,
        "hot": hot,
        "reasons": [] if hot else [outcome.reason],
        "targets": list(outcome.targets),
        "modes": {},
        "note": outcome.reason,
    }
