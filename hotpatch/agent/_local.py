"""Applying in this process: the ``Applier`` over the service's own ``Registry``."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from packaging.version import Version

from hotpatch._errors import RestartRequired, VerificationFailed
from hotpatch._loader import load_patch_source
from hotpatch._mapped import Mapped
from hotpatch._patch import Patch
from hotpatch._registry import Registry
from hotpatch._results import level_summary
from hotpatch._shortage import Shortage, shortage_of
from hotpatch._targets import is_nested
from hotpatch.agent._applier import (
    AppliedPatch,
    PatchText,
    already_applied,
    not_applied,
    settled_check,
    show_answer,
)
from hotpatch.agent._drops import bundle_version
from hotpatch.agent._outcome import Outcome

__all__ = ["BUNDLE_REASON", "VITAL_WHO", "LocalApplier", "StoppedDuringCheck", "Vital"]

log = logging.getLogger("hotpatch")

BUNDLE_REASON = "baseline bundles need the supervisor (hotpatch run)"
VITAL_WHO = "hotpatch (vital check)"  # who rolls back a patch that broke the agent
ROLLBACK_TRIES_S = 10.0  # a rollback after the check, out of descriptors, is tried so long


class StoppedDuringCheck(Exception):
    """The check after an apply was cut short by the agent's own stop (its control socket
    closed under it): whether the agent still answers with the patch is not known, and
    not the patch's doing. What was checked before (filing) passed."""


class Vital(Protocol):
    """The agent's vital path (``hotpatch.agent._vital.VitalCheck``)."""

    def reserve(self) -> None:
        """Before an apply: what the check needs made now; ``OSError`` when it cannot be."""

    def __call__(self, record: dict[str, Any], /) -> str | None:
        """Given the record about to be filed: ``None`` when the agent can still file it
        and answer its control socket, else what is broken; ``Shortage`` when that could
        not be found out (no descriptor left even with those kept for it);
        ``StoppedDuringCheck`` when the agent's stop closed the socket under it."""

    def released(self) -> contextlib.AbstractContextManager[int]:
        """The descriptors kept for the check, given up while the block runs."""


class LocalApplier:
    """Loads verified bytes and applies them through ``registry``, in this process.

    ``vital``: tried after every apply; a patch with which the agent can no
    longer file an outcome or answer its control socket is rolled back at once
    and filed ``rejected`` (SPEC 11: no patch cuts off the way to roll it back).
    One whose check could not be made for want of descriptors is rolled back
    too, and the drop waits (``Shortage``) to be tried again. At the limit the
    rollback's journal record is written with the descriptors the check keeps.
    One whose check was cut short by the agent's own stop (its socket closed
    under it) stays applied and journalled: the stop is not the patch's doing,
    and the outcome says the socket was not asked.
    """

    def __init__(self, registry: Registry, *, vital: Vital | None = None) -> None:
        self.registry = registry
        self.vital = vital

    def level(self) -> tuple[str, ...]:
        return self.registry.level

    def applied(self) -> Sequence[AppliedPatch]:
        """The applied patches, as the level stands now (asked for every drop, twice: made
        in O(1), each patch described when it is read -- a drop newer than the top of the
        level reads the top alone, whatever the level's length)."""
        return Mapped(self.registry.patches, _describe)

    def sys_path(self) -> list[str]:
        """The service's own ``sys.path``: the verification child imports what it imports."""
        return list(sys.path)

    def deliver(self, data: bytes, path: Path, outcome: Outcome) -> None:
        patch = self.load(data, path, outcome)
        if patch is None:
            return
        outcome.notified = True  # the registry reports a refusal to the plugins itself
        self.apply(patch, outcome)

    def deliver_bundle(self, path: Path, outcome: Outcome) -> None:
        """A baseline bundle waits in ``pending/``: only the supervisor can restart into it."""
        outcome.version = bundle_version(path)
        outcome.outcome, outcome.reason = "pending", BUNDLE_REASON
        outcome.error_type = "RestartRequired"

    def check(self, data: bytes, path: Path, outcome: Outcome) -> dict[str, Any]:
        patch = self.load(data, path, outcome)
        if patch is None:
            return settled_check(outcome)
        return {"ok": True, **self.registry.check(patch).record()}

    def check_bundle(self, path: Path, outcome: Outcome) -> dict[str, Any]:
        self.deliver_bundle(path, outcome)
        return settled_check(outcome)

    def rejected(self, outcome: Outcome, path: Path) -> None:
        self.registry.plugins.notify(
            "hotpatch_rejected",
            version=outcome.version,
            source=str(path),
            reason=outcome.reason or "",
            who=outcome.who,
        )

    def rollback(self, to: str | None, who: str) -> dict[str, Any]:
        result = self.registry.rollback(to=to, who=who)
        return {"ok": True, "versions": list(result.versions), **level_summary(result.level)}

    def history(self) -> dict[str, Any]:
        return {"ok": True, "history": [h.record() for h in self.registry.history]}

    def show(self, version: str) -> dict[str, Any]:
        """The applied patch ``version`` as the registry holds it: its text and sha256."""
        registry, wanted = self.registry, Version(version)
        for patch in registry.patches:
            if patch.parsed_version == wanted and patch.source is not None:
                source = patch.source
                text = PatchText(
                    patch.version,
                    source.sha256,
                    source.path,
                    source.text,
                    patch.summary,
                    patch.targets,
                )
                history = [h.record() for h in registry.history]
                return show_answer(text, registry.baseline, history)
        raise not_applied(version, registry.level, registry.baseline)

    # -- the two steps of ``deliver``, which a pre-fork worker also takes on its own ---------

    def load(self, data: bytes, path: Path, outcome: Outcome) -> Patch | None:
        """Load verified bytes in this process; ``None`` when the version is applied already."""
        t = time.perf_counter()
        try:
            patch = load_patch_source(data, path=str(path))
        except Exception:
            raise
        except BaseException as exc:
            # KeyboardInterrupt and the like, raised by the patch itself: in this
            # thread they would end the agent, not the service. A rejection.
            msg = f"patch file {path.name} raised {type(exc).__name__} while importing; remove it"
            raise VerificationFailed(msg) from exc
        outcome.timings["load_s"] = time.perf_counter() - t
        outcome.version, outcome.targets = patch.version, patch.targets
        if already_applied(self.applied(), patch.version, outcome):
            return None
        return patch

    def apply(self, patch: Patch, outcome: Outcome) -> None:
        """Apply a loaded patch; ``RestartRequired`` leaves it ``pending``."""
        registry = self.registry
        if self.vital is not None:
            # What the check needs, made before the patch is in (and can break making it,
            # or the service's load takes the last descriptors): none left now is a
            # shortage, the patch not taken (the drop waits and is tried again).
            self.vital.reserve()
        with registry.lock:  # no other change of the level between the apply and its check
            before = registry.level
            t = time.perf_counter()
            try:
                result = registry.apply(patch, who=outcome.who)
            except RestartRequired as exc:
                outcome.outcome, outcome.reason = "pending", str(exc)
                outcome.error_type = type(exc).__name__
                return
            finally:
                outcome.timings["apply_s"] = time.perf_counter() - t
            outcome.outcome, outcome.reason = "applied", None
            outcome.targets = result.targets
            nested = {t: n for t, n in result.patched.items() if is_nested(t)}
            if nested:  # how many function objects each nested target patched
                outcome.details["patched"] = nested
            if self.vital is not None:
                self._check_vital(patch, outcome, before)

    def _check_vital(self, patch: Patch, outcome: Outcome, before: tuple[str, ...]) -> None:
        """Roll ``patch`` back if the agent can no longer file ``outcome`` or answer, or
        if that could not be found out (``Shortage``, raised once it is rolled back)."""
        assert self.vital is not None
        registry = self.registry
        t = time.perf_counter()
        outcome.level = registry.level
        unknown: Shortage | None = None
        try:
            broken = self.vital(outcome.record())
        except Shortage as exc:
            unknown, broken = exc, f"not known: {exc}"
        except StoppedDuringCheck as exc:
            outcome.timings["vital_s"] = time.perf_counter() - t
            _stopped_during_check(patch, outcome, exc)
            return
        outcome.timings["vital_s"] = time.perf_counter() - t
        if broken is None:
            return
        if unknown is None:
            log.error(
                "patch %s broke what the agent needs to file outcomes and answer its control "
                "socket (%s): rolling it back",
                patch.version,
                broken,
            )
        else:
            log.warning(  # not the patch's doing: the drop waits, to be tried again
                "patch %s: whether the agent can still file outcomes and answer is %s; "
                "rolling it back (it is tried again once that is over: %s)",
                patch.version,
                broken,
                unknown.resource,
            )
        failed = self._roll_back(before)
        if failed is not None:
            _not_rolled_back(patch, outcome, broken, failed, unknown)
            return
        if unknown is not None:
            outcome.outcome, outcome.error_type = "rejected", "Shortage"
            outcome.notified = False
            msg = f"patch {patch.version} was applied and rolled back at once: {unknown.detail}"
            raise Shortage(unknown.resource, msg) from unknown
        outcome.outcome, outcome.error_type = "rejected", "VerificationFailed"
        outcome.notified = False  # the plugins saw an apply and a rollback: now a refusal
        outcome.reason = (
            f"patch {patch.version} was applied and rolled back at once: with it the agent could "
            f"not file an outcome or answer its control socket ({broken}). A patch must not break "
            "what hotpatch needs (json, files, sockets); fix it and publish a newer version"
        )
        try:
            still = self.vital(outcome.record())
        except Shortage:
            still = None  # not known: said when the next patch is checked
        except StoppedDuringCheck:
            still = None  # the agent stops: its socket is not asked again
        if still is not None:
            log.critical(
                "the agent still cannot file outcomes or answer with patch %s rolled back (%s); "
                "restart the service",
                patch.version,
                still,
            )

    def _roll_back(self, before: tuple[str, ...]) -> Exception | None:
        """Back to ``before``; the error if that failed. Out of descriptors (its journal
        record), tried again with those the check keeps, for up to ``ROLLBACK_TRIES_S``."""
        assert self.vital is not None
        registry = self.registry
        to = before[-1] if before else registry.baseline
        deadline = time.monotonic() + ROLLBACK_TRIES_S
        pause = 0.01
        while True:
            try:
                registry.rollback(to=to, who=VITAL_WHO)
            except Exception as exc:
                if shortage_of(exc) is None or time.monotonic() > deadline:
                    return exc
            else:
                return None
            with self.vital.released():  # a journal record needs a descriptor or two
                try:
                    registry.rollback(to=to, who=VITAL_WHO)
                except Exception as exc:
                    if shortage_of(exc) is None:
                        return exc
                else:
                    return None
            time.sleep(pause)  # another thread took them: until one is free again
            pause = min(pause * 2, 0.5)


def _not_rolled_back(
    patch: Patch, outcome: Outcome, broken: str, failed: Exception, unknown: Shortage | None
) -> None:
    """``patch`` stays applied and journalled: its rollback failed. Said as it is: broken
    (CRITICAL), or only not checked for want of a resource (ERROR); what ran short named."""
    why = f"{type(failed).__name__}: {failed}"
    short = shortage_of(failed)
    # The journal records the patch: a restart would replay it. The way out is a rollback.
    fix = "roll it back (hotpatch rollback)"
    if short is not None:
        fix = f"once that is over ({short}), {fix}"
    if unknown is not None:
        log.error(
            "patch %s stays applied, unchecked: %s; rolling it back failed (%s); %s",
            patch.version,
            broken,
            why,
            fix,
        )
        outcome.reason = f"applied, unchecked ({broken}); rolling it back failed ({why}); {fix}"
        return
    log.critical(
        "patch %s broke what the agent needs to file outcomes and answer (%s), and rolling it "
        "back failed (%s): it stays applied and journalled (a restart would apply it again); "
        "%s if the control socket still answers, else restart the service with the journal "
        "moved aside",
        patch.version,
        broken,
        why,
        fix,
    )
    outcome.reason = (
        f"applied, but the agent is broken with it ({broken}) and rolling it back failed "
        f"({why}); {fix} if the control socket still answers, else restart the service with "
        "the journal moved aside"
    )


def _stopped_during_check(patch: Patch, outcome: Outcome, exc: StoppedDuringCheck) -> None:
    """The agent's stop cut the check after ``patch``'s apply short: it stays applied."""
    log.warning(
        "patch %s: the agent stopped during its apply (%s); the patch stays applied and "
        "journalled, and the next agent's control socket is the one to ask",
        patch.version,
        exc,
    )
    outcome.reason = (
        f"applied while the agent stopped: {exc}; the patch stays applied and journalled"
    )


def _describe(patch: Patch) -> AppliedPatch:
    return AppliedPatch(patch.version, patch.sha256, patch.targets)
