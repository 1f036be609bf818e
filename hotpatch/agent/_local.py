"""Applying in this process: the ``Applier`` over the service's own ``Registry``."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from packaging.version import Version

from hotpatch._errors import RestartRequired, VerificationFailed
from hotpatch._loader import load_patch_source
from hotpatch._patch import Patch
from hotpatch._registry import Registry
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

__all__ = ["BUNDLE_REASON", "LocalApplier"]

BUNDLE_REASON = "baseline bundles need the supervisor (hotpatch run)"


class LocalApplier:
    """Loads verified bytes and applies them through ``registry``, in this process."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def level(self) -> tuple[str, ...]:
        return self.registry.level

    def applied(self) -> list[AppliedPatch]:
        return [AppliedPatch(p.version, p.sha256, p.targets) for p in self.registry.patches]

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
        return {"ok": True, "versions": list(result.versions), "level": list(result.level)}

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
        t = time.perf_counter()
        try:
            result = self.registry.apply(patch, who=outcome.who)
        except RestartRequired as exc:
            outcome.outcome, outcome.reason = "pending", str(exc)
            outcome.error_type = type(exc).__name__
            return
        finally:
            outcome.timings["apply_s"] = time.perf_counter() - t
        outcome.outcome, outcome.reason = "applied", None
        outcome.targets = result.targets
