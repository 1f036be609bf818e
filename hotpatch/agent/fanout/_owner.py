"""The owner's side of the pre-fork workers: apply verified bytes in every live worker, all or none.

The owner applies the bytes itself first, then sends them with their sha256
to every other live worker (``deliver``). When every worker applied the patch
the drop is ``applied`` and the group's journal records the level; when one
refused, the workers that applied it roll it back (``undo``) and the drop is
``rejected``, with each worker's result in ``NAME.result.json``.

The undo goes to the workers the patch was delivered to (not a new listing of
``.workers/``, which can fail), each asked again while it cannot be reached
(either side short of descriptors, no answer) for up to ``RETRY_S``. A worker
still not reached then is named in the outcome with the version it runs, and
the drop is ``rejected`` (never held as a shortage claiming nothing of it is
applied): ``hotpatch rollback`` brings every worker to the owner's level.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from hotpatch._errors import JournalError
from hotpatch._shortage import Shortage, shortage_of
from hotpatch.agent._outcome import Outcome
from hotpatch.agent.fanout._journal import GroupJournal
from hotpatch.agent.fanout._peers import RETRY_S, Roster, call_until, send
from hotpatch.agent.fanout._worker import Replica

__all__ = ["Fanout"]

log = logging.getLogger("hotpatch")


class Fanout:
    """Delivers the owner's verified patches to the workers of ``folder``; keeps ``journal``.

    ``deliver_timeout``: how long a worker's answer to each request is awaited."""

    def __init__(
        self,
        replica: Replica,
        folder: Path,
        journal: GroupJournal,
        roster: Roster,
        *,
        deliver_timeout: float,
    ) -> None:
        self.replica = replica
        self.folder = folder
        self.journal = journal
        self.roster = roster  # the other workers, once those whose socket went are back
        self.deliver_timeout = deliver_timeout

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
                request = {"cmd": "deliver", **item, "who": outcome.who}
                results.append(send(pid, sock, request, timeout=self.deliver_timeout))
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
                self._record_apply(outcome, peers)
            return
        failed = [r for r in answered if r["outcome"] not in ("applied", "unchanged")]
        version = str(outcome.version)
        if kinds == {"pending"}:
            outcome.outcome, outcome.reason = "pending", mine.get("reason")
            outcome.error_type = mine.get("error_type")
            return
        _given_up(version, failed)
        # Undone in every worker but those that did not apply it; one that took the delivery
        # without answering may have: asked too (that version, those bytes, if its top).
        unapplied = {r["pid"] for r in failed if not r.get("taken")}
        undone, left = self._undo(version, results, peers, failed=unapplied, sha256=item["sha256"])
        short = [r for r in failed if isinstance(r.get("shortage"), str)]
        if short and not left:
            # A worker ran short (descriptors, memory): not the patch's fault. Undone where
            # it went in, the drop waits (``Shortage``) and is tried again in every worker.
            reasons = "; ".join(f"worker {r['pid']}: {r.get('reason')}" for r in short)
            detail = f"patch {version} was undone in the {undone} workers that had applied it"
            raise Shortage(short[0]["shortage"], f"{reasons}; {detail}")
        if undone:
            self.record("undo", version, f"{outcome.who} (another worker refused)")
        outcome.outcome = "rejected"
        outcome.error_type = failed[0].get("error_type") or "VerificationFailed"
        reasons = "; ".join(f"worker {r['pid']}: {r.get('reason')}" for r in failed)
        fix = "drop it again" if short else "fix the patch and drop a newer version"
        still = _left(left, version, self.folder)
        outcome.reason = (
            f"patch {version} failed in {len(failed)} of {len(answered)} workers and was "
            f"rolled back in the {undone} that had applied it ({reasons}){still}; {fix}"
        )

    def _record_apply(self, outcome: Outcome, peers: dict[int, Path]) -> None:
        """Journal an applied drop; if that fails, undo it everywhere: it would not survive
        (for want of a resource, the drop then waits: ``Shortage``)."""
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
            undone, left = self._undo(
                version, outcome.workers or [], peers, failed=set(), sha256=outcome.sha256
            )
            short = shortage_of(exc)
            if short is not None and not left:  # the journal's disk or descriptors: it waits
                detail = f"{exc}; patch {version} was undone in the {undone} workers"
                raise Shortage(short, detail) from exc
            outcome.outcome, outcome.error_type = "rejected", type(exc).__name__
            still = _left(left, version, self.folder)
            outcome.reason = (
                f"{exc}; patch {version} was rolled back in the {undone} workers that had "
                f"applied it, since a restart would lose it{still}. Fix the journal and drop "
                "it again"
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

    def listed(self) -> dict[int, Path]:
        """The other live workers (``Roster.peers``), the listing of ``.workers/`` tried again
        while it fails for want of a resource (descriptors), for up to ``RETRY_S``."""
        deadline = time.monotonic() + RETRY_S
        pause = 0.05
        while True:
            try:
                return self.roster.peers()
            except OSError as exc:
                if shortage_of(exc) is None or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 1.0)

    def _undo(
        self,
        version: str,
        results: list[dict[str, Any]],
        peers: dict[int, Path],
        *,
        failed: set[int],
        sha256: str | None = None,
    ) -> tuple[int, dict[int, str]]:
        """Roll ``version`` back here and in every worker of ``peers`` (those it was delivered
        to) but those that refused it: how many did, and ``pid -> why`` for each still
        running it (or that may be). Each result of ``results`` gets ``undone`` (and
        ``undo_error``). ``sha256``: a worker undoes only the patch of those bytes."""
        by_pid = {r.get("pid"): r for r in results}
        local = self.replica.undo(version, "owner")
        undone = int(bool(local.get("undone")))
        left: dict[int, str] = {}
        if os.getpid() in by_pid:
            by_pid[os.getpid()]["undone"] = bool(local.get("undone"))
        if not local.get("ok"):
            left[os.getpid()] = str(local.get("error"))
        deadline = time.monotonic() + RETRY_S  # for them all, not for each
        for pid, sock in sorted(peers.items()):
            if pid in failed:
                continue
            within = max(0.0, deadline - time.monotonic())
            request = {"cmd": "undo", "version": version}
            if sha256 is not None:
                request["sha256"] = sha256
            answer = call_until(
                pid, sock, request, within=within, claim=True, timeout=self.deliver_timeout
            )
            result = by_pid.get(pid)
            if answer is not None and not answer.get("ok"):
                left[pid] = str(answer.get("error"))
                if result is not None:
                    result.update(undone=False, undo_error=left[pid])
                continue
            undone += bool(answer and answer.get("undone"))
            if result is not None:
                result["undone"] = bool(answer and answer.get("undone"))
                if result.get("taken"):
                    log.warning(
                        "worker %d: worker %d, which took patch %s without answering, %s",
                        os.getpid(),
                        pid,
                        version,
                        "had applied it: undone there"
                        if result["undone"]
                        else "does not run it (not applied there, or gone)",
                    )
        if left:
            log.error(
                "worker %d: patch %s could not be rolled back in every worker: %s",
                os.getpid(),
                version,
                _left(left, version, self.folder).lstrip("; "),
            )
        return undone, left


def _given_up(version: str, failed: list[dict[str, Any]]) -> None:
    """Say loudly which workers the delivery of ``version`` was given up on, and so what."""
    for result in failed:
        if result.get("withdrawn"):
            log.warning(
                "worker %d: gave up delivering patch %s to worker %d (%s); the delivery is "
                "withdrawn: that worker will not apply it",
                os.getpid(),
                version,
                result["pid"],
                result.get("reason"),
            )
        elif result.get("taken"):
            log.error(
                "worker %d: worker %d took patch %s but gave no answer (%s); it may have "
                "applied it: it is undone there if so",
                os.getpid(),
                result["pid"],
                version,
                result.get("reason"),
            )


def _left(left: dict[int, str], version: str, folder: Path) -> str:
    """``; worker P still runs V (why), ...: ...`` for the workers an undo did not reach."""
    if not left:
        return ""
    each = ", ".join(f"worker {pid} ({why})" for pid, why in sorted(left.items()))
    return (
        f"; NOT rolled back in {each}: they still run {version} (or may) while the others "
        f"do not; run `hotpatch rollback --folder {folder}` once they answer, or restart them"
    )
