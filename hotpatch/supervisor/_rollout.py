"""Rollouts: a change rolled through a fleet's workers in update domains, health-checked."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from hotpatch.supervisor._child import ChildExited
from hotpatch.supervisor._status import utc_now
from hotpatch.supervisor._supervisor import Supervisor
from hotpatch.supervisor._takeover import HEALTH_TIMEOUT

__all__ = ["DOMAIN_SHARE", "Rollouts", "domains"]

log = logging.getLogger("hotpatch.supervisor")

DOMAIN_SHARE = 0.2  # of the workers changed at once, and allowed to be unhealthy
ROLLOUTS_KEPT = 20


def domains(count: int, share: float = DOMAIN_SHARE) -> list[list[int]]:
    """The workers ``0..count-1`` in update domains of at most ``share`` of them (at least 1)."""
    size = max(1, math.floor(count * share + 1e-9))
    return [list(range(i, min(i + size, count))) for i in range(0, count, size)]


class Rollouts:
    """Changes rolled through ``members`` domain by domain, one at a time; what became of them.

    It is given the fleet's workers (the list is filled when the fleet runs),
    the ``--health-url`` and ``--settle`` of the health checks after each
    batch, and a callback: something the status shows changed. ``current``
    is the rollout running, or the last one; ``history`` the recent ones.
    """

    def __init__(
        self,
        members: Sequence[Supervisor],
        *,
        health_url: str | None,
        settle: float,
        on_change: Callable[[], None],
    ) -> None:
        self.members = members
        self.health_url = health_url
        self.settle = settle
        self.on_change = on_change
        self.current: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []
        self._lock = asyncio.Lock()  # one rollout at a time

    def _progress(self, rollout: dict[str, Any], message: str) -> None:
        rollout["progress"].append(f"{utc_now()} {message}")
        log.info("rollout %s: %s", rollout["what"], message)
        self.on_change()

    def _begin(self, what: str) -> dict[str, Any]:
        rollout: dict[str, Any] = {
            "what": what,
            "state": "running",
            "domains": domains(len(self.members)),
            "batches": [],
            "changed": [],
            "unhealthy": [],
            "progress": [],
            "started": utc_now(),
            "finished": None,
        }
        self.current = rollout
        self.history.append(rollout)
        del self.history[:-ROLLOUTS_KEPT]
        return rollout

    async def _health(
        self, member: Supervisor, still: Callable[[Supervisor], str | None] | None
    ) -> tuple[bool, list[str]]:
        body: dict[str, Any] = {"op": "health"}
        if self.health_url:
            body["url"] = self.health_url
        try:
            answer = await member.ask(body, "health", HEALTH_TIMEOUT)
        except (ChildExited, TimeoutError) as exc:
            return False, [f"no health answer: {exc}"]
        reasons = list(answer.get("reasons") or [])
        if still is not None and (gone := still(member)) is not None:
            reasons.append(gone)
        return bool(answer.get("ok")) and not reasons, reasons

    async def run(
        self,
        what: str,
        change: Callable[[Supervisor], Awaitable[tuple[bool, str]]],
        undo: Callable[[Supervisor], Awaitable[str]] | None,
        still: Callable[[Supervisor], str | None] | None = None,
    ) -> dict[str, Any]:
        """Apply ``change`` domain by domain, health-checked; halt and ``undo`` on failure.

        A batch passes when every worker in it took the change and answers
        healthy; the workers changed before are checked again, and once more
        than 20% of all workers are unhealthy the rollout halts too.
        ``still(member)`` says why a changed worker lost the change (a plugin
        rolled it back), or ``None``.
        """
        async with self._lock:
            count = len(self.members)
            rollout = self._begin(what)
            allowed = math.floor(count * DOMAIN_SHARE + 1e-9)
            plan = rollout["domains"]
            for number, batch in enumerate(plan, 1):
                entry: dict[str, Any] = {
                    "batch": number,
                    "workers": batch,
                    "started": utc_now(),
                    "results": {},
                }
                rollout["batches"].append(entry)
                self._progress(rollout, f"batch {number}/{len(plan)}: workers {batch}")
                results = await asyncio.gather(*(change(self.members[i]) for i in batch))
                for index, (ok, text) in zip(batch, results, strict=True):
                    entry["results"][str(index)] = text
                    if ok:
                        rollout["changed"].append(index)
                    else:
                        rollout["unhealthy"].append(index)
                if self.settle > 0:
                    await asyncio.sleep(self.settle)
                checks = await asyncio.gather(
                    *(self._health(self.members[i], still) for i in rollout["changed"])
                )
                for index, (healthy, reasons) in zip(rollout["changed"], checks, strict=True):
                    if not healthy and index not in rollout["unhealthy"]:
                        rollout["unhealthy"].append(index)
                        entry["results"][str(index)] = "unhealthy: " + "; ".join(reasons)
                entry["finished"] = utc_now()
                bad = rollout["unhealthy"]
                self._progress(
                    rollout,
                    f"batch {number}/{len(plan)} done: {len(rollout['changed'])}/{count} "
                    f"changed, {len(bad)} unhealthy",
                )
                if len(bad) > allowed or any(i in bad for i in batch):
                    await self._halt(rollout, undo, allowed)
                    return rollout
            rollout["state"] = "done"
            rollout["finished"] = utc_now()
            self._progress(rollout, f"done: all {count} workers changed")
            return rollout

    async def _halt(
        self,
        rollout: dict[str, Any],
        undo: Callable[[Supervisor], Awaitable[str]] | None,
        allowed: int,
    ) -> None:
        bad = rollout["unhealthy"]
        self._progress(
            rollout,
            f"halted: unhealthy workers {bad} (a batch must pass; at most {allowed} of "
            f"{len(self.members)} may be unhealthy)",
        )
        rollout["state"] = "halted"
        if undo is not None:
            touched = sorted({*rollout["changed"], *bad})
            undone = await asyncio.gather(*(undo(self.members[i]) for i in touched))
            rollout["rolled_back"] = dict(zip(map(str, touched), undone, strict=True))
            rollout["state"] = "rolled-back"
            self._progress(rollout, f"rolled back workers {touched}")
        rollout["finished"] = utc_now()
        self.on_change()
