"""Patch and baseline jobs: delivery to the serving process, restarts, planned windows."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import logging
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict
from typing import Any

from hotpatch._errors import JournalError
from hotpatch._shortage import shortage_of
from hotpatch.service._channel import SHORTAGE
from hotpatch.supervisor._bundle import Release
from hotpatch.supervisor._child import Child, ChildExited, LevelMirror, describe_exit
from hotpatch.supervisor._handover import memfd
from hotpatch.supervisor._records import (
    BaselineJob,
    PatchJob,
    RestartOutcome,
    Running,
    SupervisorConfig,
    in_window,
    not_now,
)
from hotpatch.supervisor._restarts import Restarts
from hotpatch.supervisor._status import pending_shown, utc_now
from hotpatch.supervisor._takeover import CodePoint

__all__ = ["Jobs"]

log = logging.getLogger("hotpatch.supervisor")

PATCH_LOG_KEPT = 20
EXIT_WAIT_S = 5.0  # for a process whose channel closed to be seen exiting
ENDED_TAKING_MAX = 2  # processes ending while they take a patch: then it is refused


class Jobs:
    """The patches and baselines waiting for one supervisor's process, and what became of them.

    A hot patch is sent to the serving process, or applied through a
    memory-preserving restart when it cannot be taken hot. A baseline is
    announced, then restarted onto at once (unplanned) or at its moment
    (planned: the window, the service ready, or the deadline). The supervisor
    runs each as its work (``next_work``), one at a time.

    It is given the supervisor's ``Running`` record (the process it sends to,
    the code a baseline replaces), its ``Restarts`` (for the restarts a patch
    or a baseline needs), and two callbacks: there is work to schedule, and
    something the status shows changed.
    """

    def __init__(
        self,
        config: SupervisorConfig,
        running: Running,
        restarts: Restarts,
        *,
        on_work: Callable[[], None],
        on_change: Callable[[], None],
    ) -> None:
        self.config = config
        self.running = running
        self.restarts = restarts
        self.on_work = on_work
        self.on_change = on_change
        self.queue: collections.deque[PatchJob] = collections.deque()
        self.log: collections.deque[dict[str, Any]] = collections.deque(maxlen=PATCH_LOG_KEPT)
        self.planned: BaselineJob | None = None  # announced, waiting for its moment
        self._planned_task: asyncio.Task[None] | None = None
        self.due: BaselineJob | None = None

    def status(
        self, pending: tuple[list[str], int], *, whole: bool = True
    ) -> dict[str, Any] | None:
        """The ``patches`` part of the supervisor's status (``pending``: drops in the folder
        as ``PatchPipeline.pending`` answers, shown whole or not as ``whole`` says);
        the level and the drops pending shown by their top unless ``whole`` (``shown``)."""
        if self.config.watch is None and self.config.baseline is None:
            return None
        running = self.running
        current = running.current if running.current is not None and running.current.alive else None
        info = current.info if current is not None else {}
        mirror = current.mirror if current is not None else LevelMirror()
        return {
            "watch": str(self.config.watch) if self.config.watch else None,
            **({"state_dir": str(self.config.state_dir)} if self.config.state_dir else {}),
            "journal": str(self.config.journal) if self.config.journal else None,
            "baseline": info.get("baseline", self.config.baseline),
            **mirror.shown(whole=whole),
            "code_root": str(running.release.code_root) if running.release else None,
            "baseline_pending": self.planned.describe() if self.planned else None,
            "queued": [job.name for job in self.queue],
            **pending_shown(pending),
            "last": self.log[-1] if self.log else None,
            "recent": list(self.log),
        }

    def next_work(self) -> Coroutine[Any, Any, None] | None:
        """The next job to run while a process serves: a due baseline first, then a patch."""
        if self.due is not None:
            job, self.due = self.due, None
            return self._apply_baseline(job)
        if self.queue:
            return self._deliver(self.queue.popleft())
        return None

    def drop(self) -> None:
        """The supervisor stops: every waiting job is answered ``pending``."""
        if self._planned_task is not None:
            self._planned_task.cancel()
            self._planned_task = None
        for pending in (self.planned, self.due):
            if pending is not None and not pending.done.done():
                pending.done.set_result(not_now("the supervisor stopped before it"))
        while self.queue:
            job = self.queue.popleft()
            if not job.done.done():
                job.done.set_result(not_now("the supervisor stopped before applying it"))

    # -- hot patches

    async def submit_patch(self, name: str, path: str, data: bytes, who: str) -> dict[str, Any]:
        """Apply verified patch bytes to the serving process (or through a restart)."""
        job = PatchJob(name, path, data, who, asyncio.get_running_loop().create_future())
        self.queue.append(job)
        self.on_work()
        self.on_change()
        try:
            async with asyncio.timeout(self.config.patch_timeout):
                return await asyncio.shield(job.done)
        except TimeoutError:
            if job in self.queue:
                self.queue.remove(job)
                return not_now(f"no process took it within {self.config.patch_timeout:g}s")
            return await job.done  # being applied: its outcome comes

    async def _deliver(self, job: PatchJob) -> None:
        current = self.running.current
        assert current is not None
        result: dict[str, Any]
        try:
            result = await self._send_patch(current, job)
            result["via"] = "hot"
            if result.get("outcome") == "restart":
                result = await self._restart_for(current, job, result)
        except ChildExited as exc:
            refused = await self._ended(current, job, exc)
            if refused is None:  # kept, first in line: sent to the process replacing it
                self.queue.appendleft(job)
                self.on_change()
                return
            result = refused
        except TimeoutError:  # stopped or stuck: it may still take it, and report its level
            result = not_now(
                f"service process {current.pid} did not answer within "
                f"{self.config.patch_timeout:g}s; it may still apply the patch (its level "
                "in the status will say)"
            )
        except BaseException:
            if not job.done.done():
                job.done.set_result(not_now("the supervisor stopped meanwhile"))
            raise
        if job.ended:
            _after_ended(job, current, result)
        result.setdefault("version", None)
        entry: dict[str, Any] = {
            "file": job.name,
            "version": result.get("version"),
            "outcome": result.get("outcome"),
            "via": result.get("via"),
            "reason": result.get("reason"),
            "time": utc_now(),
            **{k: result[k] for k in ("health", "rolled_back") if k in result},
        }
        self.log.append(entry)
        if not job.done.done():
            job.done.set_result(result)
        self.on_change()

    async def _send_patch(self, child: Child, job: PatchJob) -> dict[str, Any]:
        async with child.lock:
            request = Child.request_id()
            if job.level is None:
                job.level = [str(v) for v in child.info.get("level") or []]
            fd = memfd(job.data)
            try:
                body = {"op": "patch", "id": request, "name": job.name, "path": job.path}
                child.send({**body, "who": job.who}, [fd])
            finally:
                os.close(fd)
            job.sent_to = child.pid
            message = await child.expect(
                "patched", timeout=self.config.patch_timeout, request=request
            )
        answer = dict(message.body)
        child.update_level(answer)
        return answer

    async def _ended(self, child: Child, job: PatchJob, exc: ChildExited) -> dict[str, Any] | None:
        """``child`` ended while it was sent ``job`` or taking it: the answer, or ``None``
        when the patch is to go to the process that replaces it.

        It is not the patch's fault if the process never got it (its channel was
        closed: EPIPE), nor, once, if it ended while taking it (a SIGKILL from
        outside): the new process replays the journal, so sent again the patch
        either goes in or is found there. A patch that processes ended taking
        twice is refused: it may be what ends them.
        """
        if child.alive:  # a closed channel: its exit follows
            await child.wait_exit(EXIT_WAIT_S)
        if child.alive:
            return not_now(
                f"the channel to service process {child.pid} broke ({exc}) and the process "
                f"did not end within {EXIT_WAIT_S:g}s"
            )
        how = f"process {child.pid} {describe_exit(child.returncode)}"
        taken = job.sent_to == child.pid
        if taken:
            job.ended.append(f"{how} while taking it")
        if len(job.ended) >= ENDED_TAKING_MAX:
            return {
                "outcome": "rejected",
                "error_type": "VerificationFailed",
                "via": None,
                "reason": f"the serving process ended each time it took this patch "
                f"({'; '.join(job.ended)}): the patch may be what ends it (a migration "
                "that exits or kills its process?). Nothing of it is applied (the journal "
                "of the process serving now does not hold it); fix it and publish a newer "
                "version, or drop it again if the processes were stopped from outside",
            }
        log.warning(
            "%s %s: not the patch's fault; it is kept, first in line, and sent again to "
            "the process that replaces it (whose journal says whether it went in)",
            how,
            f"while taking patch {job.name}"
            if taken
            else f"before it could be sent patch {job.name} ({exc})",
        )
        return None

    async def _restart_for(
        self, old: Child, job: PatchJob, answer: dict[str, Any]
    ) -> dict[str, Any]:
        """A patch the service cannot take hot: a memory-preserving restart applies it."""
        running = self.running
        version = answer.get("version") or job.name
        why = "; ".join(answer.get("reasons") or []) or answer.get("reason") or "not hot"
        reason = f"patch {version} needs a restart: {why}"
        running.state = "restarting"
        self.on_change()
        log.info("applying patch %s through a memory-preserving restart (%s)", version, why)
        with contextlib.suppress(ChildExited):
            old.send(
                {
                    "op": "announce",
                    "version": version,
                    "kind": "hot",
                    "reasons": list(answer.get("reasons") or [why]),
                    "when": time.time(),
                }
            )
        try:
            before = running.code_point(self.config.journal)
        except JournalError as exc:
            outcome = _not_started(reason, old, exc)
        else:
            try:
                outcome = await self.restarts.preserving(
                    old, reason, start_patch=job, before=before
                )
            finally:
                before.discard()  # rolled back already if it had to be
        self.restarts.record(outcome, kept=True)
        result: dict[str, Any] = {
            "version": version,
            "targets": answer.get("targets", []),
            "via": "restart",
            "restart_reason": why,
            "restart": asdict(outcome),
            "timings": answer.get("timings", {}),
        }
        if outcome.ok and running.current is not None:
            started = running.current.info.get("start_patch") or {}
            result.update(
                outcome=started.get("outcome", "applied"),
                reason=f"applied through a memory-preserving restart because {why}"
                f" (paused {(outcome.paused_s or 0.0) * 1e3:.1f} ms)",
                targets=started.get("targets", result["targets"]),
                level=running.current.info.get("level", []),
            )
        else:
            _refused(
                result,
                outcome,
                unhealthy=f"patch {version} was applied through a restart ({why}), and "
                f"{outcome.error}",
                failed=f"patch {version} needs a restart ({why}), and the restart failed: "
                f"{outcome.error}",
                what=f"patch {version}",
            )
        return result

    # -- baselines

    async def submit_baseline(self, name: str, release: Release, who: str) -> dict[str, Any]:
        """Restart onto a new baseline: now (unplanned) or at its moment (planned)."""
        job = BaselineJob(name, release, who, asyncio.get_running_loop().create_future())
        for older in (self.planned, self.due):
            if older is not None and not older.done.done():
                older.done.set_result(
                    {
                        "outcome": "rejected",
                        "version": older.release.version,
                        "reason": f"superseded by baseline {release.version} ({name})",
                        "error_type": "VersionConflict",
                        "via": None,
                    }
                )
        self.planned = self.due = None
        if self._planned_task is not None:
            self._planned_task.cancel()
            self._planned_task = None
        bundle = release.bundle
        when = bundle.deadline.timestamp() if bundle.deadline is not None else 0.0
        self._announce(job, when)
        if bundle.planned:
            self.planned = job
            self._planned_task = asyncio.create_task(self._wait_for_moment(job))
        else:
            job.due = "unplanned"
            self.due = job
            self.on_work()
        self.on_change()
        return await asyncio.shield(job.done)

    def _announce(self, job: BaselineJob, when: float) -> None:
        bundle = job.release.bundle
        reasons = [f"baseline {bundle.version}: {bundle.summary or 'new code'}"]
        if bundle.planned:
            moments = []
            if self.config.window is not None:
                start, end = self.config.window
                moments.append(f"the window {start:%H:%M}-{end:%H:%M} UTC")
            moments.append("when the service says it is ready")
            if bundle.deadline is not None:
                moments.append(f"at the latest {bundle.deadline.isoformat()}")
            log.info(
                "planned baseline %s announced: restart at %s", bundle.version, ", ".join(moments)
            )
        else:
            log.info("unplanned baseline %s: restarting as soon as possible", bundle.version)
        current = self.running.serving
        if current is not None:
            with contextlib.suppress(ChildExited):
                current.send(
                    {
                        "op": "announce",
                        "version": bundle.version,
                        "kind": bundle.kind,
                        "reasons": reasons,
                        "when": when,
                    }
                )

    async def _wait_for_moment(self, job: BaselineJob) -> None:
        """Poll the window and the deadline of a planned baseline; the first one makes it due.

        The third moment, the service saying it is ready, is an event
        (``baseline_ready``).
        """
        deadline = job.release.bundle.deadline
        while True:
            now = datetime.datetime.now(datetime.UTC)
            if deadline is not None and now >= deadline:
                self._make_due(job, "deadline")
                return
            if self.config.window is not None and in_window(self.config.window, now):
                self._make_due(job, "window")
                return
            await asyncio.sleep(0.05)

    def baseline_ready(self, child: Child) -> None:
        """``child`` called ``hotpatch.ready_for_baseline()``: the planned baseline pending
        now is due. With none pending it is only logged: readiness is a moment, and a
        baseline announced later waits for its own."""
        job = self.planned
        if child.retiring or not child.alive:
            log.info(
                "process %d said it is ready for a baseline while stopping; ignored", child.pid
            )
            return
        if job is None:
            log.info(
                "process %d said it is ready for a baseline, but none is pending; "
                "not remembered (a planned baseline announced later waits for its moment)",
                child.pid,
            )
            return
        if self._planned_task is not None:
            self._planned_task.cancel()
        self._make_due(job, "ready")

    def _make_due(self, job: BaselineJob, why: str) -> None:
        job.due = why
        log.info("planned baseline %s is due (%s)", job.release.version, why)
        self.planned, self._planned_task = None, None
        self.due = job
        self.on_work()
        self.on_change()

    async def _apply_baseline(self, job: BaselineJob) -> None:
        running = self.running
        release = job.release
        version = release.version
        superseded = list(self.queue)
        self.queue.clear()
        for hot in superseded:
            hot.done.set_result(
                {
                    "outcome": "rejected",
                    "reason": f"superseded by baseline {version}: hot patches of the old "
                    "baseline no longer apply",
                    "error_type": "BaselineMismatch",
                    "via": None,
                }
            )
        old = running.current
        assert old is not None
        running.state = "restarting"
        self.on_change()
        reason = f"baseline {version} ({release.bundle.kind}, {job.due})"
        outcome: RestartOutcome | None = None
        before: CodePoint | None = None
        try:
            before = running.code_point(self.config.journal)
            outcome = await self.restarts.preserving(old, reason, release=release, before=before)
        except JournalError as exc:  # the journal cannot be kept for a rollback
            outcome = _not_started(reason, old, exc)
        finally:
            if outcome is None:
                outcome = RestartOutcome("preserving", reason, ok=False, error="interrupted")
            self.restarts.record(outcome, kept=True)
            result: dict[str, Any] = {
                "version": version,
                "via": "restart",
                "restart": asdict(outcome),
            }
            if outcome.ok:
                if running.previous is not None:
                    running.previous.discard()  # only the last baseline's is gone back to
                running.release, running.baseline, running.previous = release, version, before
                if before is not None and self.config.check_takeover:
                    # Found healthy, and no fleet reverts it: the kept file goes (and the
                    # space it holds); a revert would write the kept bytes back.
                    before.discard()
                level = running.current.info.get("level", []) if running.current else []
                pause = (outcome.paused_s or 0.0) * 1e3
                result.update(
                    outcome="applied",
                    level=level,
                    reason=f"baseline {version} runs from {release.code_root} "
                    f"({job.due}; paused {pause:.1f} ms)",
                )
            else:
                if before is not None:
                    before.discard()
                _refused(
                    result,
                    outcome,
                    unhealthy=f"baseline {version}: {outcome.error}",
                    failed=f"baseline {version}: the restart failed: {outcome.error}",
                    what=f"baseline {version}",
                )
            self.log.append(
                {
                    "file": job.name,
                    "version": version,
                    "outcome": result["outcome"],
                    "via": "restart",
                    "reason": result["reason"],
                    "time": utc_now(),
                    **{k: result[k] for k in ("health", "rolled_back") if k in result},
                }
            )
            if not job.done.done():
                job.done.set_result(result)
            self.on_change()


def _after_ended(job: PatchJob, child: Child, result: dict[str, Any]) -> None:
    """The answer of ``child`` to a patch that an earlier process ended taking.

    ``unchanged`` means the earlier one applied and journalled it before it
    ended, and ``child`` replayed it: applied, unless it was there before.
    """
    ended = "; ".join(job.ended)
    version = result.get("version")
    if result.get("outcome") == "unchanged" and version not in (job.level or []):
        result["outcome"] = "applied"
        result["reason"] = (
            f"patch {version} was applied and journalled, then {ended}; process "
            f"{child.pid} replaced it and has the patch from the journal"
        )
    elif result.get("outcome") == "applied":
        prior = f"{result['reason']}; " if result.get("reason") else ""
        result["reason"] = f"{prior}applied by process {child.pid} after {ended}"


def _not_started(reason: str, old: Child, exc: JournalError) -> RestartOutcome:
    """A code change not started: its journal could not be kept for a rollback (a shortage)."""
    return RestartOutcome(
        "preserving",
        reason,
        ok=False,
        error=f"{exc}; nothing was changed",
        old_pid=old.pid,
        shortage=shortage_of(exc),
    )


def _refused(
    result: dict[str, Any], outcome: RestartOutcome, *, unhealthy: str, failed: str, what: str
) -> None:
    """Reject the change whose restart went wrong: its new code was unhealthy, or it failed.

    Not when the new process failed for want of a resource (its journal's disk
    full): ``what`` is not at fault, the answer is ``SHORTAGE``, kept and retried
    (its reason names no process: the same each time it is tried).
    """
    if outcome.shortage is not None and outcome.health is None:
        if outcome.new_pid is None:
            why = f"which could not start ({outcome.error})"
        else:
            why = "and the new process ran short of a resource"
        result.update(
            outcome=SHORTAGE,
            resource=outcome.shortage,
            error_type="Shortage",
            reason=f"{what} goes in through a restart, {why}; the old process keeps serving",
        )
    elif outcome.health is not None:
        result.update(
            outcome="rejected",
            error_type="VerificationFailed",
            reason=unhealthy,
            health=outcome.health,
            rolled_back=outcome.rolled_back,
        )
    else:
        result.update(outcome="rejected", error_type="RestartRequired", reason=failed)
