"""Applying in every worker of a pre-fork server: the ``Applier`` the folder's owner runs with."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hotpatch._errors import JournalError
from hotpatch._journal import Journal
from hotpatch.agent._applier import AppliedPatch
from hotpatch.agent._local import LocalApplier
from hotpatch.agent._outcome import Outcome
from hotpatch.agent.fanout._journal import GroupJournal
from hotpatch.agent.fanout._owner import Fanout
from hotpatch.agent.fanout._ownership import Ownership
from hotpatch.agent.fanout._peers import RETRY_S, call_until

__all__ = ["FanoutApplier"]


class FanoutApplier:
    """Delivers through ``fanout`` to every live worker (the owner only); rolls back the group.

    What is only read -- the level, the checks, the history -- comes from this
    worker (``local``), whose level is the group's.
    """

    def __init__(
        self,
        local: LocalApplier,
        fanout: Fanout,
        ownership: Ownership,
        journal: GroupJournal,
    ) -> None:
        self.local = local
        self.fanout = fanout
        self.ownership = ownership
        self.journal = journal

    def level(self) -> tuple[str, ...]:
        return self.local.level()

    def applied(self) -> Sequence[AppliedPatch]:
        return self.local.applied()

    def sys_path(self) -> list[str]:
        return self.local.sys_path()

    def deliver(self, data: bytes, path: Path, outcome: Outcome) -> None:
        """Apply the verified bytes in every live worker, all or none: the owner only."""
        if not self.ownership.owner:  # `hotpatch apply` sent to another worker's socket
            folder = self.ownership.folder
            msg = (
                f"worker {os.getpid()} does not own the patch folder {folder}, so it cannot "
                "record the patch in the workers' journal; send it to the owner "
                f"(hotpatch apply --folder {folder} ...)"
            )
            raise JournalError(msg)
        self.fanout.deliver(data, path, outcome)

    def deliver_bundle(self, path: Path, outcome: Outcome) -> None:
        self.local.deliver_bundle(path, outcome)

    def check(self, data: bytes, path: Path, outcome: Outcome) -> dict[str, Any]:
        return self.local.check(data, path, outcome)

    def check_bundle(self, path: Path, outcome: Outcome) -> dict[str, Any]:
        return self.local.check_bundle(path, outcome)

    def rejected(self, outcome: Outcome, path: Path) -> None:
        self.local.rejected(outcome, path)

    def rollback(self, to: str | None, who: str) -> dict[str, Any]:
        """Roll back here, then bring every other worker to the same level; the owner
        records it in the journal."""
        answer = self.local.rollback(to, who)
        level = answer["level"]  # its top and ``level_size``: not the whole level
        top = level[-1] if level else self.local.registry.baseline
        # The keys `hotpatch rollback` shows for the workers of `hotpatch run --workers N` too.
        fields = ("ok", "versions", "level", "level_size", "error")
        results = [{"index": os.getpid(), **{k: answer.get(k) for k in fields}}]
        try:
            peers = self.fanout.listed()
        except OSError as exc:  # never a half-done rollback said to be done
            peers = {}
            answer["ok"] = False
            answer["error"] = (
                f"rolled back in worker {os.getpid()} (this one), but the other workers could "
                f"not be listed ({exc}): they were not rolled back; run the rollback again"
            )
        deadline = time.monotonic() + RETRY_S  # for them all, not for each
        for pid, sock in sorted(peers.items()):
            within = max(0.0, deadline - time.monotonic())
            request = {"cmd": "rollback", "to": top, "local": True}
            result = call_until(
                pid, sock, request, within=within, timeout=self.fanout.deliver_timeout
            )
            if result is None:
                continue
            results.append({"index": pid, **{k: result.get(k) for k in fields}})
            if not result.get("ok"):
                answer["ok"] = False
                answer["error"] = (
                    f"worker {pid} was not rolled back ({result.get('error')}); it may still run "
                    f"what this one rolled back: run the rollback again"
                )
        answer["workers"] = results
        if answer["versions"] and self.ownership.owner:
            error = self.fanout.record("rollback", ", ".join(answer["versions"]), who)
            if error is not None:
                answer["journal_error"] = error
        return answer

    def show(self, version: str) -> dict[str, Any]:
        """From this worker: every worker runs the group's level."""
        return self.local.show(version)

    def history(self) -> dict[str, Any]:
        """The group's history, as the journal records it across owners and restarts."""
        with contextlib.suppress(JournalError):
            state = Journal(self.journal.path).read()
            if state is not None and state.baseline == self.local.registry.baseline:
                return {"ok": True, "history": state.history}
        return self.local.history()
