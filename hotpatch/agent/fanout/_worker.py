"""A worker's copy of the group's level: patches verified by the owner applied here, undone, listed.

The owner has verified the bytes already, so a worker only checks they arrived
whole, then loads and applies them in this process (``LocalApplier``), under
the pipeline's lock: one patch operation at a time, as for a drop.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hotpatch._errors import PatchError, VerificationFailed
from hotpatch._results import level_summary, level_text
from hotpatch._shortage import shortage_of
from hotpatch.agent._applier import already_applied
from hotpatch.agent._control import request
from hotpatch.agent._drops import peek_version
from hotpatch.agent._local import LocalApplier
from hotpatch.agent._outcome import Outcome, log_outcome
from hotpatch.agent.fanout._journal import GroupJournal
from hotpatch.agent.fanout._peers import PEER_TIMEOUT_S, other_workers, owner_pid, remove_stale

__all__ = ["Replica"]

log = logging.getLogger("hotpatch")


class GivenUp(VerificationFailed):
    """A delivery its sender stopped waiting for before this worker took it: not applied."""


class Replica:
    """This worker's level, kept equal to the group's: ``local`` changed under ``lock``."""

    def __init__(self, local: LocalApplier, lock: threading.RLock) -> None:
        self.local = local
        self.lock = lock

    def accept(
        self,
        item: dict[str, Any],
        *,
        who: str,
        claim: Callable[[], str | None] | None = None,
    ) -> dict[str, Any]:
        """Load and apply verified patch text in this worker; its result, never an exception.

        ``claim`` (a delivery from the owner): taken under the lock before anything is
        done; when it cannot be (``take_claim``: why), the owner gave up on this delivery
        and it is not applied (``GivenUp``)."""
        start = time.perf_counter()
        text = item.get("text")
        name = str(item.get("name") or "patch.py")
        outcome = Outcome(name=name, who=who)
        before = self.local.level()
        short: str | None = None
        try:
            if not isinstance(text, str):
                msg = f"delivery of {name} carries no patch text"
                raise VerificationFailed(msg)
            data = text.encode("utf-8")
            outcome.sha256 = hashlib.sha256(data).hexdigest()
            if outcome.sha256 != item.get("sha256"):
                msg = (
                    f"delivery of {name} arrived damaged (sha256 {outcome.sha256[:16]}, "
                    f"announced {str(item.get('sha256'))[:16]}); drop it again"
                )
                raise VerificationFailed(msg)
            outcome.version = peek_version(data)
            with self.lock:
                given_up = claim() if claim is not None else None
                if given_up is not None:
                    level = level_text(self.local.level(), self.local.registry.baseline)
                    log.warning(
                        "worker %d: patch %s (%s, sha256 %s) NOT applied: %s; "
                        "this worker stays at level %s",
                        os.getpid(),
                        outcome.version,
                        name,
                        outcome.sha256[:16],
                        given_up,
                        level,
                    )
                    short = f"the delivery's claim was gone ({given_up})"
                    msg = f"delivery of patch {outcome.version} not applied: {given_up}"
                    raise GivenUp(msg)
                if outcome.version is None or not already_applied(
                    self.local.applied(), outcome.version, outcome
                ):
                    path = Path(str(item.get("path") or name))
                    patch = self.local.load(data, path, outcome)
                    if patch is not None:
                        self.local.apply(patch, outcome)
        except PatchError as exc:
            outcome.outcome, outcome.reason = "rejected", str(exc)
            outcome.error_type = type(exc).__name__
        except Exception as exc:
            short = shortage_of(exc) if self.local.level() == before else None
            if short is not None:  # nothing of it applied: not the patch's fault
                outcome.outcome, outcome.error_type = "rejected", "Shortage"
                outcome.reason = f"worker {os.getpid()} ran short: {short} ({exc})"
            else:
                log.exception("worker %d: applying %s failed unexpectedly", os.getpid(), name)
                outcome.outcome, outcome.error_type = "rejected", "Error"
                outcome.reason = (
                    f"internal error in worker {os.getpid()}: {type(exc).__name__}: {exc}"
                )
        outcome.timings["total_s"] = time.perf_counter() - start
        outcome.level = self.local.level()
        if outcome.outcome != "applied":
            log_outcome(outcome)
        return {
            "pid": os.getpid(),
            "outcome": outcome.outcome,
            "version": outcome.version,
            **level_summary(outcome.level),  # its top: the answer costs the same at any level
            "reason": outcome.reason,
            "error_type": outcome.error_type,
            "targets": list(outcome.targets),
            "timings": {k: round(v, 6) for k, v in outcome.timings.items()},
            **({"shortage": short} if short is not None else {}),
        }

    def undo(
        self,
        version: object,
        who: str,
        *,
        sha256: object = None,
        claim: Callable[[], str | None] | None = None,
    ) -> dict[str, Any]:
        """Roll ``version`` back here if it is the last patch here (another worker refused it,
        or the owner did not hear whether this one applied it); with ``sha256``, only
        the patch of those bytes. ``claim``: as for ``accept`` (``GivenUp``: not undone)."""
        registry = self.local.registry
        with self.lock:
            given_up = claim() if claim is not None else None
            level = registry.level
            if given_up is not None:
                shown = level_text(level, registry.baseline)
                log.warning(
                    "worker %d: the undo of patch %s NOT done: %s; this worker stays at level %s",
                    os.getpid(),
                    version,
                    given_up,
                    shown,
                )
                msg = f"the undo of patch {version} not done: {given_up}"
                return {"ok": False, "pid": os.getpid(), "error": msg, "error_type": "GivenUp"}
            if version not in level:
                return {"ok": True, "pid": os.getpid(), "undone": False, **level_summary(level)}
            top = registry.patches[-1].source if registry.patches else None
            if level[-1] != version or (
                sha256 is not None and (top is None or top.sha256 != sha256)
            ):
                shown = level_text(level, registry.baseline)
                what = f"patch {version}" + (f" (sha256 {str(sha256)[:16]})" if sha256 else "")
                msg = f"{what} is not the last one applied here (level {shown})"
                return {"ok": False, "pid": os.getpid(), "error": msg, "error_type": "Conflict"}
            registry.rollback(who=f"{who} (undo: another worker refused {version})")
            log.warning(
                "worker %d: patch %s undone at the owner's request (%s)", os.getpid(), version, who
            )
            return {"ok": True, "pid": os.getpid(), "undone": True, **level_summary(registry.level)}

    def texts(self, journal: GroupJournal) -> dict[str, Any]:
        """The level with each patch's text: what a new worker applies to catch up."""
        registry = self.local.registry
        items = [
            {
                "version": patch.version,
                "name": Path(patch.source.path).name,
                "path": patch.source.path,
                "text": patch.source.text,
                "sha256": patch.source.sha256,
            }
            for patch in registry.patches
            if patch.source is not None
        ]
        return {
            "ok": True,
            "baseline": registry.baseline,
            "patches": items,
            "journal_error": journal.problem,
        }

    def catch_up(self, folder: Path, journal: GroupJournal) -> bool:
        """Apply the level of a live worker (the owner first): a replaced worker starts patched.

        ``False`` when no live worker of this baseline gave its level."""
        baseline = self.local.registry.baseline
        peers = other_workers(folder)
        owner = owner_pid(folder)
        for pid in sorted(peers, key=lambda pid: (pid != owner, pid)):
            try:
                answer = request(peers[pid], {"cmd": "patches"}, timeout=PEER_TIMEOUT_S)
            except (FileNotFoundError, ConnectionRefusedError):
                remove_stale(peers[pid])
                continue
            except OSError as exc:
                log.warning("worker %d did not give its level (%s); asking another", pid, exc)
                continue
            if not answer.get("ok") or answer.get("baseline") != baseline:
                continue
            if isinstance(answer.get("journal_error"), str):  # it refuses patches: so do we
                journal.refuse(answer["journal_error"])
            for item in answer.get("patches", []):
                record = self.accept(item, who=f"worker:{pid} (catch-up)")
                if record["outcome"] not in ("applied", "unchanged"):
                    log.error(
                        "worker %d could not apply patch %s that worker %d runs: %s",
                        os.getpid(),
                        record.get("version"),
                        pid,
                        record.get("reason"),
                    )
                    return True
            if answer.get("patches"):
                log.info(
                    "worker %d caught up with worker %d: level %s",
                    os.getpid(),
                    pid,
                    level_text(self.local.level(), baseline),
                )
            return True
        return False
