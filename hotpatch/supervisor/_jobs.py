"""Patch and baseline jobs: delivery to the serving process, restarts, planned windows."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import logging
import os
import time
from collections.abc import Coroutine
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from hotpatch.supervisor._bundle import Release
from hotpatch.supervisor._child import Child, ChildExited
from hotpatch.supervisor._handover import memfd
from hotpatch.supervisor._records import BaselineJob, PatchJob, RestartOutcome, in_window, not_now
from hotpatch.supervisor._status import utc_now
from hotpatch.supervisor._takeover import CodePoint

if TYPE_CHECKING:
    from hotpatch.supervisor._supervisor import Supervisor

__all__ = ["Jobs"]

log = logging.getLogger("hotpatch.supervisor")

PATCH_LOG_KEPT = 20


class Jobs:
    """The patches and baselines waiting for one supervisor's process, and what became of them.

    A hot patch is sent to the serving process, or applied through a
    memory-preserving restart when it cannot be taken hot. A baseline is
    announced, then restarted onto at once (unplanned) or at its moment
    (planned: the window, the service ready, or the deadline). The supervisor
    runs each as its work (``next_work``), one at a time.
    """

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.config = supervisor.config
        self.queue: collections.deque[PatchJob] = collections.deque()
        self.log: collections.deque[dict[str, Any]] = collections.deque(maxlen=PATCH_LOG_KEPT)
        self.planned: BaselineJob | None = None  # announced, waiting for its moment
        self._planned_task: asyncio.Task[None] | None = None
        self.due: BaselineJob | None = None

    def status(self) -> dict[str, Any] | None:
        """The ``patches`` part of the supervisor's status."""
        if self.config.watch is None and self.config.baseline is None:
            return None
        sup = self.supervisor
        current = sup.current if sup.current is not None and sup.current.alive else None
        info = current.info if current is not None else {}
        return {
            "watch": str(self.config.watch) if self.config.watch else None,
            "journal": str(self.config.journal) if self.config.journal else None,
            "baseline": info.get("baseline", self.config.baseline),
            "level": info.get("level", []),
            "code_root": str(sup.release.code_root) if sup.release else None,
            "baseline_pending": self.planned.describe() if self.planned else None,
            "queued": [job.name for job in self.queue],
            "pending": sup.pipeline.pending() if sup.pipeline is not None else [],
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
                pending.done.set_result(not_now(pending, "the supervisor stopped before it"))
        while self.queue:
            job = self.queue.popleft()
            if not job.done.done():
                job.done.set_result(not_now(job, "the supervisor stopped before applying it"))

    # -- hot patches

    async def submit_patch(self, name: str, path: str, data: bytes, who: str) -> dict[str, Any]:
        """Apply verified patch bytes to the serving process (or through a restart)."""
        sup = self.supervisor
        job = PatchJob(name, path, data, who, asyncio.get_running_loop().create_future())
        if sup.stopping:
            return not_now(job, "the supervisor is stopping")
        self.queue.append(job)
        sup.schedule()
        sup.write_status()
        try:
            async with asyncio.timeout(self.config.patch_timeout):
                return await asyncio.shield(job.done)
        except TimeoutError:
            if job in self.queue:
                self.queue.remove(job)
                return not_now(job, f"no process took it within {self.config.patch_timeout:g}s")
            return await job.done  # being applied: its outcome comes

    async def _deliver(self, job: PatchJob) -> None:
        current = self.supervisor.current
        assert current is not None
        result: dict[str, Any]
        try:
            result = await self._send_patch(current, job)
            result["via"] = "hot"
            if result.get("outcome") == "restart":
                result = await self._restart_for(current, job, result)
        except ChildExited as exc:
            result = not_now(job, f"the service process ended while taking it ({exc})")
        except BaseException:
            if not job.done.done():
                job.done.set_result(not_now(job, "the supervisor stopped meanwhile"))
            raise
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
        self.supervisor.write_status()

    async def _send_patch(self, child: Child, job: PatchJob) -> dict[str, Any]:
        async with child.lock:
            request = Child.request_id()
            fd = memfd(job.data)
            try:
                body = {"op": "patch", "id": request, "name": job.name, "path": job.path}
                child.send({**body, "who": job.who}, [fd])
            finally:
                os.close(fd)
            message = await child.expect(
                "patched", timeout=self.config.patch_timeout, request=request
            )
        answer = dict(message.body)
        child.update_level(answer)
        return answer

    async def _restart_for(
        self, old: Child, job: PatchJob, answer: dict[str, Any]
    ) -> dict[str, Any]:
        """A patch the service cannot take hot: a memory-preserving restart applies it."""
        sup = self.supervisor
        version = answer.get("version") or job.name
        why = "; ".join(answer.get("reasons") or []) or answer.get("reason") or "not hot"
        reason = f"patch {version} needs a restart: {why}"
        sup.state = "restarting"
        sup.write_status()
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
        before = CodePoint.keep(sup.release, sup.baseline, self.config.journal)
        outcome = await sup.restarts.preserving(old, reason, start_patch=job, before=before)
        sup.record(outcome)
        result: dict[str, Any] = {
            "version": version,
            "targets": answer.get("targets", []),
            "via": "restart",
            "restart_reason": why,
            "restart": asdict(outcome),
            "timings": answer.get("timings", {}),
        }
        if outcome.ok and sup.current is not None:
            started = sup.current.info.get("start_patch") or {}
            result.update(
                outcome=started.get("outcome", "applied"),
                reason=f"applied through a memory-preserving restart because {why}"
                f" (paused {(outcome.paused_s or 0.0) * 1e3:.1f} ms)",
                targets=started.get("targets", result["targets"]),
                level=sup.current.info.get("level", []),
            )
        else:
            _refused(
                result,
                outcome,
                unhealthy=f"patch {version} was applied through a restart ({why}), and "
                f"{outcome.error}",
                failed=f"patch {version} needs a restart ({why}), and the restart failed: "
                f"{outcome.error}",
            )
        return result

    # -- baselines

    async def submit_baseline(self, name: str, release: Release, who: str) -> dict[str, Any]:
        """Restart onto a new baseline: now (unplanned) or at its moment (planned)."""
        sup = self.supervisor
        job = BaselineJob(name, release, who, asyncio.get_running_loop().create_future())
        if sup.stopping:
            return not_now(job, "the supervisor is stopping")
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
            sup.schedule()
        sup.write_status()
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
        current = self.supervisor.current
        if current is not None and current.alive and current.ready_at is not None:
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
        """Poll the three moments of a planned baseline; the first one makes it due."""
        deadline = job.release.bundle.deadline
        while True:
            now = datetime.datetime.now(datetime.UTC)
            current = self.supervisor.current
            if deadline is not None and now >= deadline:
                job.due = "deadline"
            elif self.config.window is not None and in_window(self.config.window, now):
                job.due = "window"
            elif current is not None and current.alive and current.baseline_ready:
                job.due = "ready"
            if job.due is not None:
                log.info("planned baseline %s is due (%s)", job.release.version, job.due)
                self.planned, self._planned_task = None, None
                self.due = job
                self.supervisor.schedule()
                self.supervisor.write_status()
                return
            await asyncio.sleep(0.05)

    async def _apply_baseline(self, job: BaselineJob) -> None:
        sup = self.supervisor
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
        old = sup.current
        assert old is not None
        sup.state = "restarting"
        sup.write_status()
        reason = f"baseline {version} ({release.bundle.kind}, {job.due})"
        outcome: RestartOutcome | None = None
        before = CodePoint.keep(sup.release, sup.baseline, self.config.journal)
        try:
            outcome = await sup.restarts.preserving(old, reason, release=release, before=before)
        finally:
            if outcome is None:
                outcome = RestartOutcome("preserving", reason, ok=False, error="interrupted")
            sup.record(outcome)
            result: dict[str, Any] = {
                "version": version,
                "via": "restart",
                "restart": asdict(outcome),
            }
            if outcome.ok:
                sup.release, sup.baseline, sup.previous = release, version, before
                level = sup.current.info.get("level", []) if sup.current else []
                pause = (outcome.paused_s or 0.0) * 1e3
                result.update(
                    outcome="applied",
                    level=level,
                    reason=f"baseline {version} runs from {release.code_root} "
                    f"({job.due}; paused {pause:.1f} ms)",
                )
            else:
                _refused(
                    result,
                    outcome,
                    unhealthy=f"baseline {version}: {outcome.error}",
                    failed=f"baseline {version}: the restart failed: {outcome.error}",
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
            sup.write_status()


def _refused(
    result: dict[str, Any], outcome: RestartOutcome, *, unhealthy: str, failed: str
) -> None:
    """Reject the change whose restart went wrong: its new code was unhealthy, or it failed."""
    if outcome.health is not None:
        result.update(
            outcome="rejected",
            error_type="VerificationFailed",
            reason=unhealthy,
            health=outcome.health,
            rolled_back=outcome.rolled_back,
        )
    else:
        result.update(outcome="rejected", error_type="RestartRequired", reason=failed)
