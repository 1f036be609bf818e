"""The work that replaces a supervisor's service process: recover, restart, roll back."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from typing import TYPE_CHECKING

from hotpatch.supervisor._bundle import Release
from hotpatch.supervisor._child import Child
from hotpatch.supervisor._handover import BringUpFailed, HandedOver
from hotpatch.supervisor._records import PatchJob, RestartMode, RestartOutcome
from hotpatch.supervisor._takeover import HEALTH_TIMEOUT, CodePoint, describe_level, health_of

if TYPE_CHECKING:
    from hotpatch.supervisor._supervisor import Supervisor

__all__ = ["Restarts"]

log = logging.getLogger("hotpatch.supervisor")


class Restarts:
    """Each kind of restart of one supervisor's process, run as the supervisor's work.

    It sets the supervisor's ``current`` process, ``state`` and code
    (``release``, ``baseline``) as it goes, and keeps what only restarts need:
    the recent restarts that the back-off and the restart budget count, and
    since when (and why) no process serves.
    """

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.config = supervisor.config
        self.handover = supervisor.handover
        self.down_since: float | None = None
        self.down_reason = "no process is serving"
        self._recent: collections.deque[float] = collections.deque()

    async def recover(self, reason: str, *, first: bool = False) -> None:
        """Start a process from the last state round: at start-up, or after one died."""
        sup = self.supervisor
        kind = "start" if first else "recovery"
        while True:
            if not first:
                now = time.monotonic()
                while self._recent and self._recent[0] < now - self.config.restart_period:
                    self._recent.popleft()
                if len(self._recent) >= self.config.max_restarts:
                    sup.fail(
                        f"the service was restarted {len(self._recent)} times within "
                        f"{self.config.restart_period:g}s and failed again ({reason}); giving up "
                        f"(raise --max-restarts/--restart-period, or fix the service)"
                    )
                    return
                delay = min(
                    self.config.backoff_initial * 2 ** len(self._recent), self.config.backoff_max
                )
                sup.state = "backing-off"
                sup.write_status()
                log.warning("restarting the service in %.2fs (%s)", delay, reason)
                await asyncio.sleep(delay)
                self._recent.append(time.monotonic())
            first = False
            sup.state = "starting" if kind == "start" else "recovering"
            try:
                new, handover = await self.handover.bring_up(
                    None, down_since=self.down_since, carry_state=True, release=sup.release
                )
            except BringUpFailed as exc:
                sup.record(
                    RestartOutcome(kind, reason, ok=False, error=str(exc), new_pid=exc.new_pid)
                )
                reason = str(exc)
                continue
            outcome = self._now_serving(kind, reason, new, handover)
            self.down_since = None
            sup.record(outcome)
            return

    async def restart(
        self, reason: str, mode: RestartMode, waiters: list[asyncio.Future[RestartOutcome]]
    ) -> None:
        """A requested restart (SIGHUP, a fleet's rollout); ``waiters`` get its outcome."""
        sup = self.supervisor
        old = sup.current
        assert old is not None
        sup.state = "restarting"
        sup.write_status()
        log.info("%s restart (%s) of process %d", mode, reason, old.pid)
        outcome: RestartOutcome | None = None
        try:
            if mode == "plain":
                outcome = await self._plain(old, reason)
            else:
                outcome = await self.preserving(old, reason)
        finally:
            result = outcome or RestartOutcome(mode, reason, ok=False, error="interrupted")
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(result)
        sup.record(result)

    async def preserving(
        self,
        old: Child,
        reason: str,
        *,
        start_patch: PatchJob | None = None,
        release: Release | None = None,
        before: CodePoint | None = None,
    ) -> RestartOutcome:
        """Hand ``old``'s work and state to a new process; with ``before``, a code change.

        A code change (a new baseline, or a patch applied at start) may have
        written the journal: if it fails, ``before``'s journal is put back, and
        once it has taken over the new process must pass its health check.
        """
        sup = self.supervisor
        try:
            new, handover = await self.handover.bring_up(
                old,
                down_since=None,
                carry_state=True,
                start_patch=start_patch,
                release=release or sup.release,
            )
        except BringUpFailed as exc:
            if before is not None:  # before a recovery starts from it, or the old one goes on
                before.restore_journal()
            if exc.old_drained or not old.alive:
                # Nobody serves any more: the work that follows brings up a
                # replacement from the chain (which holds the final round, if
                # the old process handed it over).
                error = f"{exc}; the old process {old.pid} no longer serves, starting another"
                self._nobody_serves(
                    old, exc.stopped_at, f"restart failed after the hand-over: {exc}"
                )
            else:
                error = f"{exc}; the old process {old.pid} keeps serving"
            return RestartOutcome(
                "preserving", reason, ok=False, error=error, old_pid=old.pid, new_pid=exc.new_pid
            )
        outcome = self._now_serving("preserving", reason, new, handover, old_pid=old.pid)
        self.handover.retire_later(old)
        if before is None or not self.config.check_takeover:
            return outcome
        return await self._check_takeover(new, outcome, before)

    async def _check_takeover(
        self, new: Child, outcome: RestartOutcome, before: CodePoint
    ) -> RestartOutcome:
        """Let the new code serve ``--settle`` seconds, ask its health; unhealthy: roll back."""
        if self.config.settle > 0:
            await new.wait_exit(self.config.settle)
        healthy, reasons = await health_of(new, self.config.health_url, HEALTH_TIMEOUT)
        if healthy:
            return outcome
        if outcome.paused_s is not None:
            self.supervisor.pauses.append(outcome.paused_s)
        why = (
            f"the new process {new.pid} took over and failed its health check "
            f"({'; '.join(reasons)})"
        )
        log.error("%s (%s); rolling back to the previous code", why, outcome.reason)
        rolled = await self._roll_back(new, before, f"rollback: {why}")
        if rolled.ok:
            error = f"{why}; rolled back to {rolled.rolled_back}: process {rolled.new_pid} serves"
        else:
            error = f"{why}; the rollback failed too ({rolled.error})"
        return dataclasses.replace(
            rolled,
            kind="preserving",
            reason=outcome.reason,
            ok=False,
            error=error,
            old_pid=outcome.old_pid,
            health=reasons,
        )

    async def _roll_back(self, bad: Child, to: CodePoint, reason: str) -> RestartOutcome:
        """A memory-preserving restart from ``bad`` back to ``to``'s code and journal.

        If that fails, ``bad`` is drained into the chain (if it still serves)
        and the recovery that follows starts ``to``'s code from it.
        """
        sup = self.supervisor
        sup.release, sup.baseline = to.release, to.baseline
        to.restore_journal()
        sup.state = "rolling-back"
        sup.write_status()
        try:
            new, handover = await self.handover.bring_up(
                bad, down_since=None, carry_state=True, release=sup.release
            )
        except BringUpFailed as exc:
            stopped_at = exc.stopped_at
            if bad.alive and not exc.old_drained:
                stopped_at, _ = await self.handover.drain(bad)
            self._nobody_serves(bad, stopped_at, f"rollback failed: {exc}")
            error = f"{exc}; starting the previous code again from the last state round"
            return RestartOutcome(
                "rollback", reason, ok=False, error=error, old_pid=bad.pid, new_pid=exc.new_pid
            )
        rolled_back = describe_level(new.info)
        outcome = self._now_serving(
            "rollback", reason, new, handover, old_pid=bad.pid, rolled_back=rolled_back
        )
        self.handover.retire_later(bad)
        return outcome

    def _nobody_serves(self, old: Child, since: float | None, why: str) -> None:
        """``old`` no longer serves (it retires if it still runs) and no process replaced it."""
        if old.alive:
            self.handover.retire_later(old)
        self.supervisor.current = None
        self.down_since = since
        self.down_reason = why

    def _now_serving(
        self,
        kind: str,
        reason: str,
        new: Child,
        handover: HandedOver,
        *,
        old_pid: int | None = None,
        rolled_back: str | None = None,
    ) -> RestartOutcome:
        """``new`` serves now: the outcome of a start or restart that went well."""
        self.supervisor.current = new
        return RestartOutcome(
            kind,
            reason,
            ok=True,
            old_pid=old_pid,
            new_pid=new.pid,
            paused_s=handover.paused_s,
            state=handover.state,
            rolled_back=rolled_back,
        )

    async def revert(
        self, to: CodePoint, reason: str, done: asyncio.Future[RestartOutcome]
    ) -> None:
        """Go back to ``to``'s code and journal (a fleet's halted baseline rollout)."""
        sup = self.supervisor
        old = sup.current
        assert old is not None
        sup.previous = None
        outcome: RestartOutcome | None = None
        try:
            outcome = await self._roll_back(old, to, reason)
        finally:
            result = outcome or RestartOutcome("rollback", reason, ok=False, error="interrupted")
            if not done.done():
                done.set_result(result)
        sup.record(result)

    async def _plain(self, old: Child, reason: str) -> RestartOutcome:
        """Stop, then start: the service keeps its state its own way (the sockets stay open)."""
        sup = self.supervisor
        sup.current = None
        stopped_at = time.monotonic()
        await self.handover.stop_child(old)
        self.handover.chain.clear()
        try:
            new, handover = await self.handover.bring_up(
                None, down_since=stopped_at, carry_state=False, release=sup.release
            )
        except BringUpFailed as exc:
            self.down_since = stopped_at
            self.down_reason = f"plain restart failed: {exc}"
            return RestartOutcome(
                "plain", reason, ok=False, error=str(exc), old_pid=old.pid, new_pid=exc.new_pid
            )
        return self._now_serving("plain", reason, new, handover, old_pid=old.pid)
