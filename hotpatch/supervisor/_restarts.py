"""The work that replaces a supervisor's service process: recover, restart, roll back."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import Callable

from hotpatch.supervisor._bundle import Release
from hotpatch.supervisor._child import Child, ChildExited, describe_exit
from hotpatch.supervisor._handover import BringUpFailed, HandedOver, Handover
from hotpatch.supervisor._records import (
    PatchJob,
    RestartMode,
    RestartOutcome,
    Running,
    SupervisorConfig,
)
from hotpatch.supervisor._takeover import HEALTH_TIMEOUT, CodePoint, describe_level, health_of

__all__ = ["Restarts"]

JOURNAL_TIMEOUT_S = 10.0  # the old process's answer before a restart: is its journal there?

log = logging.getLogger("hotpatch.supervisor")

PAUSES_KEPT = 100


class Restarts:
    """Each kind of restart of one supervisor's process, run as the supervisor's work.

    It is given the supervisor's ``Running`` record, whose process, state and
    code (``release``, ``baseline``) it sets as it goes, the ``Handover`` that
    brings processes up, and two callbacks: something the status shows
    changed, and the restart budget is spent (the supervisor gives up). It
    keeps what only restarts need: what they did (``record``), the recent
    restarts that the back-off and the budget count, and since when (and
    why) no process serves.
    """

    def __init__(
        self,
        config: SupervisorConfig,
        running: Running,
        handover: Handover,
        *,
        on_change: Callable[[], None],
        on_give_up: Callable[[str], None],
    ) -> None:
        self.config = config
        self.running = running
        self.handover = handover
        self.on_change = on_change
        self.on_give_up = on_give_up
        self.last: RestartOutcome | None = None
        self.counts: collections.Counter[str] = collections.Counter()
        self.pauses: collections.deque[float] = collections.deque(maxlen=PAUSES_KEPT)
        self.down_since: float | None = None
        self.down_reason = "no process is serving"
        self._recent: collections.deque[float] = collections.deque()
        self._lost_level: tuple[object, list[str], int] | None = None  # baseline, level, pid

    def record(self, outcome: RestartOutcome, *, kept: bool = False) -> None:
        """Count and log a start or restart, and show it in the status.

        ``kept``: the restart was for a change the folder keeps and tries again
        (its new process ran short of a resource); the folder's one ERROR says
        so, and each failed attempt is a warning here.
        """
        self.last = outcome
        self.counts[outcome.kind if outcome.ok else "failed"] += 1
        if outcome.ok and outcome.paused_s is not None:
            self.pauses.append(outcome.paused_s)
        current = self.running.current
        if current is not None and current.alive:
            self.running.state = "running"
        if outcome.ok:
            pause = "" if outcome.paused_s is None else f", paused {outcome.paused_s * 1e3:.1f} ms"
            log.info(
                "%s (%s): process %s serving, state %s%s",
                outcome.kind,
                outcome.reason,
                outcome.new_pid,
                outcome.state,
                pause,
            )
        else:
            level = logging.WARNING if kept and outcome.shortage else logging.ERROR
            log.log(level, "%s (%s) failed: %s", outcome.kind, outcome.reason, outcome.error)
        self.on_change()

    def lost(self) -> str:
        """No process serves (the last one died, or none was left): forget it; say why."""
        current = self.running.current
        if current is None:
            return self.down_reason
        self.down_since = current.exited_at
        self._lost_level = (current.info.get("baseline"), current.mirror.level, current.pid)
        self.handover.forget(current)
        self.running.current = None
        return f"process {current.pid} {describe_exit(current.returncode)}"

    async def recover(self, reason: str, *, first: bool = False) -> None:
        """Start a process from the last state round: at start-up, or after one died."""
        running = self.running
        kind = "start" if first else "recovery"
        while True:
            if not first:
                now = time.monotonic()
                while self._recent and self._recent[0] < now - self.config.restart_period:
                    self._recent.popleft()
                if len(self._recent) >= self.config.max_restarts:
                    self.on_give_up(
                        f"the service was restarted {len(self._recent)} times within "
                        f"{self.config.restart_period:g}s and failed again ({reason}); giving up "
                        f"(raise --max-restarts/--restart-period, or fix the service)"
                    )
                    return
                delay = min(
                    self.config.backoff_initial * 2 ** len(self._recent), self.config.backoff_max
                )
                running.state = "backing-off"
                self.on_change()
                log.warning("restarting the service in %.2fs (%s)", delay, reason)
                await asyncio.sleep(delay)
                self._recent.append(time.monotonic())
            first = False
            running.state = "starting" if kind == "start" else "recovering"
            try:
                new, handover = await self.handover.bring_up(
                    None, down_since=self.down_since, carry_state=True, release=running.release
                )
            except BringUpFailed as exc:
                self.record(
                    RestartOutcome(kind, reason, ok=False, error=str(exc), new_pid=exc.new_pid)
                )
                reason = str(exc)
                continue
            outcome = self._now_serving(kind, reason, new, handover)
            self.down_since = None
            self._say_lost_patches(new)
            self.record(outcome)
            return

    def _say_lost_patches(self, new: Child) -> None:
        """ERROR if ``new`` came back without patches of its baseline that the process it
        replaces ran: its journal did not record them (deleted while it ran)."""
        lost, self._lost_level = self._lost_level, None
        if lost is None or self.config.journal is None:
            return
        baseline, level, pid = lost
        running = set(new.mirror.level)
        missing = [v for v in level if v not in running]
        if missing and new.info.get("baseline") == baseline:
            log.error(
                "process %d came back at %s without %s, which process %d ran: the journal %s "
                "did not hold them (deleted while it ran?); drop them again",
                new.pid,
                describe_level(new.info),
                ", ".join(missing),
                pid,
                self.config.journal,
            )

    async def restart(
        self, reason: str, mode: RestartMode, waiters: list[asyncio.Future[RestartOutcome]]
    ) -> None:
        """A requested restart (SIGHUP, a fleet's rollout); ``waiters`` get its outcome."""
        old = self.running.current
        assert old is not None
        self.running.state = "restarting"
        self.on_change()
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
        self.record(result)

    async def _journal_kept(self, old: Child) -> str | None:
        """Before a restart that keeps the code, ``old`` writes its journal again if the file
        has gone (deleted with the patch folder): the new process replays the journal. Why
        it could not, if so; a process that does not answer restarts as before."""
        if self.config.journal is None:
            return None
        try:
            async with old.lock:
                request = Child.request_id()
                old.send({"op": "journal", "id": request})
                message = await old.expect("journal", timeout=JOURNAL_TIMEOUT_S, request=request)
        except (ChildExited, TimeoutError) as exc:
            log.warning("process %d did not say whether its journal is there: %s", old.pid, exc)
            return None
        return None if message.body.get("ok") else str(message.body.get("error"))

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
        if start_patch is None and release is None and before is None:
            lost = await self._journal_kept(old)
            if lost is not None:
                error = (
                    f"{lost}: the new process would come back at the baseline, without the "
                    f"patches process {old.pid} runs, so it keeps serving"
                )
                return RestartOutcome("preserving", reason, ok=False, error=error, old_pid=old.pid)
        try:
            new, handover = await self.handover.bring_up(
                old,
                down_since=None,
                carry_state=True,
                start_patch=start_patch,
                release=release or self.running.release,
            )
        except BringUpFailed as exc:
            if before is not None:  # before a recovery starts from it, or the old one goes on
                await before.restore_journal()
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
                "preserving",
                reason,
                ok=False,
                error=error,
                old_pid=old.pid,
                new_pid=exc.new_pid,
                shortage=exc.shortage,
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
            self.pauses.append(outcome.paused_s)
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
        running = self.running
        running.release, running.baseline = to.release, to.baseline
        running.state = "rolling-back"
        self.on_change()
        await to.restore_journal()  # waits while it cannot be put back for want of room
        try:
            new, handover = await self.handover.bring_up(
                bad, down_since=None, carry_state=True, release=running.release
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
        self.running.current = None
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
        self.running.current = new
        return RestartOutcome(
            kind,
            reason,
            ok=True,
            old_pid=old_pid,
            new_pid=new.pid,
            paused_s=handover.paused_s,
            state=handover.state,
            final_round_bytes=handover.final_bytes,
            rolled_back=rolled_back,
        )

    async def revert(
        self, to: CodePoint, reason: str, done: asyncio.Future[RestartOutcome]
    ) -> None:
        """Go back to ``to``'s code and journal (a fleet's halted baseline rollout)."""
        old = self.running.current
        assert old is not None
        self.running.previous = None
        outcome: RestartOutcome | None = None
        try:
            outcome = await self._roll_back(old, to, reason)
        finally:
            to.discard()
            result = outcome or RestartOutcome("rollback", reason, ok=False, error="interrupted")
            if not done.done():
                done.set_result(result)
        self.record(result)

    async def _plain(self, old: Child, reason: str) -> RestartOutcome:
        """Stop, then start: the service keeps its state its own way (the sockets stay open)."""
        self.running.current = None
        stopped_at = time.monotonic()
        await self.handover.stop_child(old)
        self.handover.chain.clear()
        try:
            new, handover = await self.handover.bring_up(
                None, down_since=stopped_at, carry_state=False, release=self.running.release
            )
        except BringUpFailed as exc:
            self.down_since = stopped_at
            self.down_reason = f"plain restart failed: {exc}"
            return RestartOutcome(
                "plain", reason, ok=False, error=str(exc), old_pid=old.pid, new_pid=exc.new_pid
            )
        return self._now_serving("plain", reason, new, handover, old_pid=old.pid)
