"""The owner's side of the pre-fork workers: apply verified bytes in every live worker, all or none.

The owner applies the bytes itself first, then sends them with their sha256
to every other live worker (``deliver``). When every worker applied the patch
the drop is ``applied`` and the group's journal records the level; when one
refused, the workers that applied it roll it back (``undo``) and the drop is
``rejected``, with each worker's result in ``NAME.result.json``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

from hotpatch._errors import JournalError
from hotpatch._shortage import Shortage
from hotpatch.agent._outcome import Outcome
from hotpatch.agent.fanout._journal import GroupJournal
from hotpatch.agent.fanout._peers import Roster, call, send
from hotpatch.agent.fanout._worker import Replica

__all__ = ["Fanout"]

log = logging.getLogger("hotpatch")


class Fanout:
    """Delivers the owner's verified patches to the workers of ``folder``; keeps ``journal``."""

    def __init__(
        self, replica: Replica, folder: Path, journal: GroupJournal, roster: Roster
    ) -> None:
        self.replica = replica
        self.folder = folder
        self.journal = journal
        self.roster = roster  # the other workers, once those whose socket went are back

    def deliver(self, data: bytes, path: Path, outcome: Outcome) -> None:
        """Apply the verified bytes here, then in every other live worker; all or none.

        The group's journal records the level once every worker has applied it."""
        self.journal.check()  # a journal that could not be replayed refuses new levels
        item = {
            "name": path.name,
            "path": str(path),
            "text": data.decode("utf-8"),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        peers = self.roster.peers()  # first: a worker registering again is not left out
        mine = self.replica.accept(item, who=outcome.who)
        results = [mine]
        if mine["outcome"] == "applied":
            for pid, sock in sorted(peers.items()):
                results.append(send(pid, sock, {"cmd": "deliver", **item, "who": outcome.who}))
        outcome.notified = True
        outcome.workers = results
        outcome.version = mine.get("version") or outcome.version
        outcome.targets = tuple(mine.get("targets") or outcome.targets)
        outcome.timings["workers_s"] = sum(
            r.get("timings", {}).get("total_s", 0.0) for r in results
        )
        answered = [r for r in results if r["outcome"] != "gone"]
        kinds = {r["outcome"] for r in answered}
        if kinds <= {"applied", "unchanged"}:
            outcome.outcome = "unchanged" if kinds == {"unchanged"} else "applied"
            outcome.reason = mine.get("reason") if outcome.outcome == "unchanged" else None
            if outcome.outcome == "applied":
                self._record_apply(outcome)
            return
        failed = [r for r in answered if r["outcome"] not in ("applied", "unchanged")]
        short = [r for r in failed if isinstance(r.get("shortage"), str)]
        if short:
            self._short(str(outcome.version), failed, short)
        if kinds == {"pending"}:
            outcome.outcome, outcome.reason = "pending", mine.get("reason")
            outcome.error_type = mine.get("error_type")
            return
        undone = self._undo(str(outcome.version), failed={r["pid"] for r in failed})
        if undone:
            self.record("undo", str(outcome.version), f"{outcome.who} (another worker refused)")
        outcome.outcome = "rejected"
        outcome.error_type = failed[0].get("error_type") or "VerificationFailed"
        reasons = "; ".join(f"worker {r['pid']}: {r.get('reason')}" for r in failed)
        outcome.reason = (
            f"patch {outcome.version} failed in {len(failed)} of {len(answered)} workers and was "
            f"rolled back in the {undone} that had applied it ({reasons}); fix the patch and "
            "drop a newer version"
        )

    def _short(
        self, version: str, failed: list[dict[str, Any]], short: list[dict[str, Any]]
    ) -> None:
        """A worker ran short (descriptors, memory): not the patch's fault. Undone where it
        went in, the drop waits (``Shortage``) and is tried again in every worker."""
        undone = self._undo(version, failed={r["pid"] for r in failed})
        reasons = "; ".join(f"worker {r['pid']}: {r.get('reason')}" for r in short)
        detail = f"patch {version} was undone in the {undone} workers that had applied it"
        raise Shortage(short[0]["shortage"], f"{reasons}; {detail}")

    def _record_apply(self, outcome: Outcome) -> None:
        """Journal an applied drop; if that fails, undo it everywhere: it would not survive."""
        version = str(outcome.version)
        try:
            self.journal.record(
                self.replica.local.registry,
                "apply",
                version,
                outcome.who,
                outcome.timings.get("workers_s", 0.0),
            )
        except JournalError as exc:
            undone = self._undo(version, failed=set())
            outcome.outcome, outcome.error_type = "rejected", type(exc).__name__
            outcome.reason = (
                f"{exc}; patch {version} was rolled back in the {undone} workers that had "
                "applied it, since a restart would lose it. Fix the journal and drop it again"
            )

    def record(self, action: str, version: str, who: str) -> str | None:
        """Add a history row to the journal (the level as it is); the error, if any."""
        try:
            self.journal.check()
            self.journal.record(self.replica.local.registry, action, version, who)
        except JournalError as exc:
            log.warning("worker %d: %s %s not recorded: %s", os.getpid(), action, version, exc)
            return str(exc)
        return None

    def _undo(self, version: str, *, failed: set[int]) -> int:
        """Roll ``version`` back in every worker but those that refused it; how many did."""
        undone = 0
        local = self.replica.undo(version, "owner")
        undone += bool(local.get("undone"))
        for pid, sock in sorted(self.roster.peers().items()):
            if pid in failed:
                continue
            answer = call(pid, sock, {"cmd": "undo", "version": version})
            undone += bool(answer and answer.get("undone"))
        return undone
