"""Every pluggy hook a hotpatch plugin can implement, grouped by stage.

Project name ``hotpatch``; plugins are found in the ``hotpatch`` entry-point
group or passed explicitly. Implement a hook with ``@hotpatch.hookimpl``. A
plugin that raises is logged and never takes the service down; only
``hotpatch_validate`` can stop a patch (by returning a reason or raising).

The parameters are typed with the real classes, so a plugin annotated the
same way is checked by mypy against what hotpatch passes (the classes are
imported for type checking only: the registry imports this module).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from hotpatch._patch import Patch
    from hotpatch._registry import Registry
    from hotpatch._results import ApplyResult, CheckReport, RollbackResult

__all__ = ["PROJECT", "hookimpl", "hookspec"]

PROJECT = "hotpatch"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# -- validation -------------------------------------------------------------------


@hookspec
def hotpatch_validate(patch: Patch, report: CheckReport) -> str | None:
    """Veto a patch before it changes anything.

    ``report`` is the ``CheckReport`` of the dry run. Return a reason (a
    string) to refuse the patch, or ``None`` to let it through; raising counts
    as a veto with the exception as its reason. Runs for ``check()`` too.
    """


# -- applying and rolling back ----------------------------------------------------------


@hookspec
def hotpatch_before_apply(patch: Patch, registry: Registry) -> None:
    """A valid patch is about to be applied (migrations and switch follow)."""


@hookspec
def hotpatch_after_apply(patch: Patch, registry: Registry, result: ApplyResult) -> None:
    """A patch is active; ``result`` is its ``ApplyResult``."""


@hookspec
def hotpatch_after_rollback(registry: Registry, result: RollbackResult) -> None:
    """Patches were rolled back; ``result`` is the ``RollbackResult``."""


@hookspec
def hotpatch_rejected(version: str | None, source: str, reason: str, who: str) -> None:
    """A patch was refused: ``source`` is its file or ``<api>``, ``who`` asked for it."""


# -- health ---------------------------------------------------------------------------


@hookspec
def hotpatch_health_check(registry: Registry) -> bool | None:
    """Is the service healthy after a change? Return ``False`` for unhealthy."""


# -- restarts (supervisor) ----------------------------------------------------------


@hookspec
def hotpatch_restart_scheduled(version: str, kind: str, reasons: list[str], when: float) -> None:
    """A restart is scheduled (baseline patch, or a patch that cannot go in hot)."""


@hookspec
def hotpatch_resumed(paused_s: float) -> None:
    """The service resumed after a memory-preserving restart, paused ``paused_s`` seconds."""


@hookspec
def hotpatch_save_state() -> dict[str, Any] | None:
    """Return extra state to carry across a memory-preserving restart (picklable)."""


@hookspec
def hotpatch_restore_state(state: dict[str, Any]) -> None:
    """Take back what ``hotpatch_save_state`` returned, in the new process."""
