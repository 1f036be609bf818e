"""The supervisor: owns the listening sockets, runs the service, restarts it keeping its memory.

One asyncio loop, one thread. At most one piece of *work* runs at a time --
the first start, a restart, or bringing back a process that died -- and
everything else (SIGHUP, SIGTERM, a child's exit, the periodic snapshot) is
an event that starts or interrupts that work. A memory-preserving restart
runs in the order of SPEC §6:

1. announce (log, status ``restarting``);
2. start the new process; meanwhile ask the old one for a state round, so the
   chain of rounds the supervisor holds is fresh;
3. the new process imports and pulls the chain, then smaller and smaller
   rounds (pre-copy), all while the old process serves;
4. the old process drains (stops accepting, finishes in-flight work) and
   sends the final round -- only what changed since the last one;
5. the new process applies it, says ready and starts accepting from the
   backlog that kept the waiting connections; the old one retires.

The pause is step 4 to 5: from the old process stopping to the new one
being ready.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from hotpatch._service import ENV_BASELINE, ENV_JOURNAL, format_address, open_listener
from hotpatch.supervisor._bundle import Release
from hotpatch.supervisor._child import Child, ChildExited, ChildSpec, describe_exit
from hotpatch.supervisor._state import Chunk, StateChain
from hotpatch.supervisor._status import utc_now, write_status
from hotpatch.supervisor._takeover import HEALTH_TIMEOUT, CodePoint, describe_level, health_of

__all__ = ["RestartOutcome", "StateError", "Supervisor", "SupervisorConfig"]

log = logging.getLogger("hotpatch.supervisor")

PRECOPY_DONE_BYTES = 256 * 1024  # a round this small: drain now
PRECOPY_MAX_ROUNDS = 8
PULL_TIMEOUT = 60.0  # for the service to write one round
HANDOVER_GRACE = 2.0  # after the drain timeout, for the final round
RETIRE_GRACE = 5.0  # after the drain timeout, for the old process to exit
STOP_GRACE = 2.0  # SIGTERM to SIGKILL
PAUSES_KEPT = 100

RestartMode = Literal["preserving", "plain"]


@dataclass(frozen=True, slots=True)
class SupervisorConfig:
    """Everything ``hotpatch run`` is told (see ``python -m hotpatch.supervisor run --help``)."""

    spec: ChildSpec
    binds: tuple[tuple[str, tuple[str, int]], ...] = ()
    state_limit: int = 1024 * 2**20
    drain_timeout: float = 5.0
    ready_timeout: float = 30.0
    status_file: Path | None = None
    snapshot_interval: float = 5.0
    max_restarts: int = 5
    restart_period: float = 60.0
    backoff_initial: float = 0.1
    backoff_max: float = 30.0
    restart_mode: RestartMode = "preserving"
    # Patches (--watch): the folder, the service's baseline and journal, signatures.
    watch: Path | None = None
    baseline: str | None = None
    journal: Path | None = None
    require_signature: bool = True
    trusted_keys: Path | None = None
    verify_timeout: float = 10.0
    patch_timeout: float = 120.0  # for a serving process to take a patch
    releases: Path | None = None  # where baseline bundles are unpacked
    window: tuple[datetime.time, datetime.time] | None = None  # maintenance window, UTC
    # After a restart that changes the code: serve ``settle`` seconds, then the new
    # process's health (hooks, and GET ``health_url``); unhealthy -> back to the old code.
    health_url: str | None = None
    settle: float = 0.0
    check_takeover: bool = True  # a fleet's workers: off, the fleet checks each batch


@dataclass(frozen=True, slots=True)
class RestartOutcome:
    """How a start or restart went.

    ``kind``: ``start``, ``preserving``, ``plain`` or ``recovery`` (after the
    process died). ``state``: ``complete`` (handed over up to the pause),
    ``from-snapshot`` (changes since the last round were lost), ``fresh``.
    """

    kind: str
    reason: str
    ok: bool
    error: str | None = None
    old_pid: int | None = None
    new_pid: int | None = None
    paused_s: float | None = None
    state: str | None = None
    health: list[str] | None = None  # why the new process was found unhealthy
    rolled_back: str | None = None  # what it was rolled back to: ``baseline 1.0 at level 1.0.1``
    finished: str = field(default_factory=utc_now)


class StateError(Exception):
    """The service could not write its state (not picklable, over ``--state-mb``, no reply)."""


class _BringUpFailed(Exception):
    def __init__(
        self,
        message: str,
        *,
        old_drained: bool,
        stopped_at: float | None,
        new_pid: int | None = None,
    ) -> None:
        super().__init__(message)
        self.old_drained = old_drained
        self.stopped_at = stopped_at
        self.new_pid = new_pid


@dataclass(slots=True)
class PatchJob:
    """A verified patch on its way to the service process (from the folder's thread)."""

    name: str
    path: str
    data: bytes
    who: str
    done: asyncio.Future[dict[str, Any]]


@dataclass(slots=True)
class BaselineJob:
    """A baseline bundle, unpacked, waiting for its restart."""

    name: str
    release: Release
    who: str
    done: asyncio.Future[dict[str, Any]]
    announced: str = field(default_factory=utc_now)
    due: str | None = None  # why it is due now: "unplanned", "window", "ready", "deadline"

    def describe(self) -> dict[str, Any]:
        bundle = self.release.bundle
        return {
            "file": self.name,
            "version": bundle.version,
            "kind": bundle.kind,
            "summary": bundle.summary,
            "deadline": bundle.deadline.isoformat() if bundle.deadline else None,
            "announced": self.announced,
            "due": self.due,
        }


def in_window(window: tuple[datetime.time, datetime.time], now: datetime.datetime) -> bool:
    """Is ``now`` (UTC) inside the daily window ``start-end`` (which may cross midnight)?"""
    start, end = window
    t = now.astimezone(datetime.UTC).time().replace(tzinfo=None)
    if start <= end:
        return start <= t < end
    return t >= start or t < end


class _StartRefused(Exception):
    """The new process said it cannot run: its journal, or the patch it was started for."""


def _memfd(data: bytes, name: str = "hotpatch-patch") -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        os.pwrite(fd, data, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


@dataclass(frozen=True, slots=True)
class _Handover:
    paused_s: float | None
    state: str


class _Feed:
    """What of the chain a new process has been sent: it gets each round once, in order."""

    def __init__(self, child: Child, chain: StateChain) -> None:
        self.child = child
        self.chain = chain
        self.sent = 0
        self.epoch = chain.epoch

    def send(self) -> None:
        if self.epoch != self.chain.epoch:  # replaced meanwhile: again (it starts with "full")
            self.sent, self.epoch = 0, self.chain.epoch
        for chunk in self.chain.chunks[self.sent :]:
            body = {"op": "state", "size": chunk.size, "records": chunk.records, "full": chunk.full}
            self.child.send(body, [chunk.fd])
        self.sent = len(self.chain)


class Supervisor:
    """Runs one service process at a time and restarts it without dropping connections."""

    def __init__(
        self,
        config: SupervisorConfig,
        *,
        listeners: dict[str, socket.socket] | None = None,
        index: int | None = None,
        on_status: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        # A worker of a fleet (``--workers N``): the fleet owns the sockets, the
        # signals, the folder and the status file; this one runs one process.
        self.index = index
        self.shared_sockets = listeners is not None
        self.listeners: dict[str, socket.socket] = dict(listeners or {})
        self.on_status = on_status
        self.chain = StateChain()
        self.current: Child | None = None
        self.starting: Child | None = None
        self.children: set[Child] = set()
        self.state = "starting"
        self.error: str | None = None
        self.last_restart: RestartOutcome | None = None
        self.counts: collections.Counter[str] = collections.Counter()
        self.pauses: collections.deque[float] = collections.deque(maxlen=PAUSES_KEPT)
        self.snapshots = 0
        self.snapshot_at: str | None = None
        self.snapshot_error: str | None = None
        self._generation = 0
        self._restarts: collections.deque[float] = collections.deque()
        self._down_since: float | None = None
        self._down_reason = "no process is serving"
        self._work: asyncio.Task[None] | None = None
        self._pending: tuple[str, RestartMode, list[asyncio.Future[RestartOutcome]]] | None = None
        self._stopping: asyncio.Event | None = None
        self._pulls: set[asyncio.Task[Any]] = set()  # abandoned by a failed start, still running
        self._retiring: set[asyncio.Task[None]] = set()
        self._exit_code = 0
        self._patch_jobs: collections.deque[PatchJob] = collections.deque()
        self.patch_log: collections.deque[dict[str, Any]] = collections.deque(maxlen=20)
        self.service_sys_path: list[str] | None = None
        self.sys_path_known = threading.Event()
        self.pipeline: Any = None  # the watched folder's pipeline (supervisor._patches)
        self.metrics_url: str | None = None  # where --metrics serves (supervisor._metrics)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.release: Release | None = None  # the code the processes run (None: as started)
        self.baseline = config.baseline
        self._planned: BaselineJob | None = None  # announced, waiting for its moment
        self._planned_task: asyncio.Task[None] | None = None
        self._baseline_due: BaselineJob | None = None
        self.previous: CodePoint | None = None  # before the last baseline restart
        self._revert: tuple[CodePoint, str, asyncio.Future[RestartOutcome]] | None = None

    # -- sockets and status

    def open_sockets(self) -> None:
        """Bind every ``--bind`` now, so an address in use is reported before anything starts."""
        for name, (host, port) in self.config.binds:
            if name in self.listeners:
                continue
            try:
                self.listeners[name] = open_listener(host, port)
            except OSError as exc:
                self.close_sockets()
                msg = (
                    f"cannot listen on {name}={format_address((host, port))}: {exc.strerror or exc}"
                )
                raise OSError(exc.errno, msg) from exc

    def close_sockets(self) -> None:
        if not self.shared_sockets:  # shared ones are the fleet's to close
            for sock in self.listeners.values():
                sock.close()
        self.listeners.clear()

    @property
    def addresses(self) -> dict[str, str]:
        return {name: format_address(s.getsockname()) for name, s in self.listeners.items()}

    def status(self) -> dict[str, Any]:
        """What ``hotpatch status`` shows (and the status file holds)."""

        def child(c: Child | None) -> dict[str, Any] | None:
            if c is None:
                return None
            return {"pid": c.pid, "generation": c.generation, "ready": c.ready_at is not None}

        return {
            "pid": os.getpid(),
            "state": self.state,
            "error": self.error,
            "command": list(self.config.spec.argv),
            "sockets": self.addresses,
            "metrics": self.metrics_url,
            "child": child(self.current if self.current and self.current.alive else None),
            "starting": child(self.starting),
            "restarts": dict(self.counts),
            "last_restart": asdict(self.last_restart) if self.last_restart else None,
            "pauses_s": list(self.pauses),
            "patches": self._patch_status(),
            "snapshot": {
                "count": self.snapshots,
                "last": self.snapshot_at,
                "error": self.snapshot_error,
                "rounds": len(self.chain),
                "bytes": self.chain.size,
            },
            "updated": utc_now(),
        }

    def _patch_status(self) -> dict[str, Any] | None:
        if self.config.watch is None and self.config.baseline is None:
            return None
        current = self.current if self.current is not None and self.current.alive else None
        info = current.info if current is not None else {}
        return {
            "watch": str(self.config.watch) if self.config.watch else None,
            "journal": str(self.config.journal) if self.config.journal else None,
            "baseline": info.get("baseline", self.config.baseline),
            "level": info.get("level", []),
            "code_root": str(self.release.code_root) if self.release else None,
            "baseline_pending": self._planned.describe() if self._planned else None,
            "queued": [job.name for job in self._patch_jobs],
            "pending": self.pipeline.pending() if self.pipeline is not None else [],
            "last": self.patch_log[-1] if self.patch_log else None,
            "recent": list(self.patch_log),
        }

    @property
    def applied_patches(self) -> list[tuple[str, str | None]]:
        """``(version, sha256)`` of the current process's level, as it last said."""
        current = self.current
        if current is None:
            return []
        return [(str(v), sha) for v, sha in current.info.get("patches", [])]

    def _write_status(self) -> None:
        if self.on_status is not None:
            self.on_status()
        if self.config.status_file is not None:
            try:
                write_status(self.config.status_file, self.status())
            except OSError as exc:
                log.warning("cannot write the status file %s: %s", self.config.status_file, exc)

    # -- running

    async def run(self) -> int:
        """Supervise until SIGTERM/SIGINT (0) or until the restart budget is spent (1)."""
        loop = asyncio.get_running_loop()
        self.loop = loop
        self._stopping = asyncio.Event()
        self.open_sockets()
        handlers: dict[int, Callable[[], object]] = {
            signal.SIGHUP: lambda: self.request_restart("SIGHUP"),
            signal.SIGTERM: lambda: self.request_stop("SIGTERM"),
            signal.SIGINT: lambda: self.request_stop("SIGINT"),
        }
        if self.index is not None:
            handlers = {}  # the fleet hears the signals
        for signum, handler in handlers.items():
            loop.add_signal_handler(signum, handler)
        log.info(
            "supervising %s on %s (pid %d)",
            " ".join(self.config.spec.argv),
            ", ".join(f"{n}={a}" for n, a in self.addresses.items()) or "no sockets",
            os.getpid(),
        )
        self._start_work(self._recover("start", first=True))
        if self.config.watch is not None:
            from hotpatch.supervisor._patches import SupervisedPipeline  # noqa: PLC0415

            self.pipeline = SupervisedPipeline(self)
            try:
                await asyncio.to_thread(self.pipeline.start)
            except Exception as exc:
                self.pipeline = None
                self._fail(f"cannot watch {self.config.watch}: {exc}")
        snapshots = None
        if self.config.snapshot_interval > 0:
            snapshots = asyncio.create_task(self._snapshot_loop())
        try:
            await self._stopping.wait()
        finally:
            for signum in handlers:
                loop.remove_signal_handler(signum)
            if snapshots is not None:
                snapshots.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await snapshots
            await self._shutdown()
        return self._exit_code

    # -- patches

    async def submit_patch(self, name: str, path: str, data: bytes, who: str) -> dict[str, Any]:
        """Apply verified patch bytes to the serving process (or through a restart)."""
        job = PatchJob(name, path, data, who, asyncio.get_running_loop().create_future())
        assert self._stopping is not None
        if self._stopping.is_set():
            return _not_now(job, "the supervisor is stopping")
        self._patch_jobs.append(job)
        self._schedule()
        self._write_status()
        try:
            async with asyncio.timeout(self.config.patch_timeout):
                return await asyncio.shield(job.done)
        except TimeoutError:
            if job in self._patch_jobs:
                self._patch_jobs.remove(job)
                return _not_now(job, f"no process took it within {self.config.patch_timeout:g}s")
            return await job.done  # being applied: its outcome comes

    async def submit_baseline(self, name: str, release: Release, who: str) -> dict[str, Any]:
        """Restart onto a new baseline: now (unplanned) or at its moment (planned)."""
        job = BaselineJob(name, release, who, asyncio.get_running_loop().create_future())
        assert self._stopping is not None
        if self._stopping.is_set():
            return _not_now(job, "the supervisor is stopping")
        for older in (self._planned, self._baseline_due):
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
        self._planned = self._baseline_due = None
        if self._planned_task is not None:
            self._planned_task.cancel()
            self._planned_task = None
        bundle = release.bundle
        when = self._when(bundle.deadline)
        self._announce(job, when)
        if bundle.planned:
            self._planned = job
            self._planned_task = asyncio.create_task(self._wait_for_moment(job))
        else:
            job.due = "unplanned"
            self._baseline_due = job
            self._schedule()
        self._write_status()
        return await asyncio.shield(job.done)

    def _when(self, deadline: datetime.datetime | None) -> float:
        return deadline.timestamp() if deadline is not None else 0.0

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
        current = self.current
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
            current = self.current
            if deadline is not None and now >= deadline:
                job.due = "deadline"
            elif self.config.window is not None and in_window(self.config.window, now):
                job.due = "window"
            elif current is not None and current.alive and current.baseline_ready:
                job.due = "ready"
            if job.due is not None:
                log.info("planned baseline %s is due (%s)", job.release.version, job.due)
                self._planned, self._planned_task = None, None
                self._baseline_due = job
                self._schedule()
                self._write_status()
                return
            await asyncio.sleep(0.05)

    async def _apply_baseline(self, job: BaselineJob) -> None:
        release = job.release
        version = release.version
        superseded = list(self._patch_jobs)
        self._patch_jobs.clear()
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
        old = self.current
        assert old is not None
        self.state = "restarting"
        self._write_status()
        reason = f"baseline {version} ({release.bundle.kind}, {job.due})"
        outcome: RestartOutcome | None = None
        before = CodePoint.keep(self.release, self.baseline, self.config.journal)
        try:
            outcome = await self._restart_preserving(old, reason, release=release, before=before)
        finally:
            if outcome is None:
                outcome = RestartOutcome("preserving", reason, ok=False, error="interrupted")
            self._record(outcome)
            result: dict[str, Any] = {
                "version": version,
                "via": "restart",
                "restart": asdict(outcome),
            }
            if outcome.ok:
                self.release, self.baseline, self.previous = release, version, before
                level = self.current.info.get("level", []) if self.current else []
                pause = (outcome.paused_s or 0.0) * 1e3
                result.update(
                    outcome="applied",
                    level=level,
                    reason=f"baseline {version} runs from {release.code_root} "
                    f"({job.due}; paused {pause:.1f} ms)",
                )
            elif outcome.health is not None:
                result.update(
                    outcome="rejected",
                    error_type="VerificationFailed",
                    reason=f"baseline {version}: {outcome.error}",
                    health=outcome.health,
                    rolled_back=outcome.rolled_back,
                )
            else:
                result.update(
                    outcome="rejected",
                    error_type="RestartRequired",
                    reason=f"baseline {version}: the restart failed: {outcome.error}",
                )
            self.patch_log.append(
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
            self._write_status()

    async def _deliver(self, job: PatchJob) -> None:
        current = self.current
        assert current is not None
        result: dict[str, Any]
        try:
            result = await self._send_patch(current, job)
            result["via"] = "hot"
            if result.get("outcome") == "restart":
                result = await self._restart_for(current, job, result)
        except ChildExited as exc:
            result = _not_now(job, f"the service process ended while taking it ({exc})")
        except BaseException:
            if not job.done.done():
                job.done.set_result(_not_now(job, "the supervisor stopped meanwhile"))
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
        self.patch_log.append(entry)
        if not job.done.done():
            job.done.set_result(result)
        self._write_status()

    async def _send_patch(self, child: Child, job: PatchJob) -> dict[str, Any]:
        async with child.lock:
            request = Child.request_id()
            fd = _memfd(job.data)
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

    async def ask(self, body: dict[str, Any], reply: str, timeout: float) -> dict[str, Any]:
        """Ask the serving process (``health``, ``rollback``) and return its reply.

        Raises ``ChildExited`` if no process serves or it ends meanwhile.
        """
        child = self.current
        if child is None or not child.alive or child.ready_at is None:
            msg = f"worker {self.index}: no process is serving"
            raise ChildExited(msg)
        async with child.lock:
            request = Child.request_id()
            child.send({**body, "id": request})
            message = await child.expect(reply, timeout=timeout, request=request)
        answer = dict(message.body)
        if child.update_level(answer):
            self._write_status()
        return answer

    @property
    def serving(self) -> Child | None:
        """The process serving now, if any."""
        child = self.current
        return child if child is not None and child.alive and child.ready_at is not None else None

    async def _restart_for(
        self, old: Child, job: PatchJob, answer: dict[str, Any]
    ) -> dict[str, Any]:
        """A patch the service cannot take hot: a memory-preserving restart applies it."""
        version = answer.get("version") or job.name
        why = "; ".join(answer.get("reasons") or []) or answer.get("reason") or "not hot"
        reason = f"patch {version} needs a restart: {why}"
        self.state = "restarting"
        self._write_status()
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
        before = CodePoint.keep(self.release, self.baseline, self.config.journal)
        outcome = await self._restart_preserving(old, reason, start_patch=job, before=before)
        self._record(outcome)
        result: dict[str, Any] = {
            "version": version,
            "targets": answer.get("targets", []),
            "via": "restart",
            "restart_reason": why,
            "restart": asdict(outcome),
            "timings": answer.get("timings", {}),
        }
        if outcome.ok and self.current is not None:
            started = self.current.info.get("start_patch") or {}
            result.update(
                outcome=started.get("outcome", "applied"),
                reason=f"applied through a memory-preserving restart because {why}"
                f" (paused {(outcome.paused_s or 0.0) * 1e3:.1f} ms)",
                targets=started.get("targets", result["targets"]),
                level=self.current.info.get("level", []),
            )
        elif outcome.health is not None:
            result.update(
                outcome="rejected",
                error_type="VerificationFailed",
                reason=f"patch {version} was applied through a restart ({why}), and "
                f"{outcome.error}",
                health=outcome.health,
                rolled_back=outcome.rolled_back,
            )
        else:
            result.update(
                outcome="rejected",
                error_type="RestartRequired",
                reason=f"patch {version} needs a restart ({why}), and the restart failed: "
                f"{outcome.error}",
            )
        return result

    def request_restart(
        self, reason: str, *, mode: RestartMode | None = None
    ) -> asyncio.Future[RestartOutcome]:
        """Restart the service (memory-preserving unless ``mode="plain"``); resolves when done.

        Requests that arrive while a restart is pending are merged into it.
        """
        future: asyncio.Future[RestartOutcome] = asyncio.get_running_loop().create_future()
        if self._pending is not None:
            log.info("restart requested (%s); one is already pending, merging", reason)
            self._pending[2].append(future)
        else:
            log.info("restart requested (%s)", reason)
            self._pending = (reason, mode or self.config.restart_mode, [future])
        self._schedule()
        return future

    def request_stop(self, reason: str = "request") -> None:
        """Drain and stop the service, then return from ``run()``."""
        assert self._stopping is not None
        if not self._stopping.is_set():
            log.info("stopping (%s)", reason)
            self._stopping.set()

    def _fail(self, message: str) -> None:
        log.error("%s", message)
        self.error = message
        self.state = "failed"
        self._exit_code = 1
        self._write_status()
        assert self._stopping is not None
        self._stopping.set()

    # -- scheduling the work

    def _retire_later(self, child: Child) -> None:
        task = asyncio.create_task(self._retire(child))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def _start_work(self, coroutine: Coroutine[Any, Any, None]) -> None:
        self._work = asyncio.create_task(coroutine)
        self._work.add_done_callback(self._work_done)

    def _work_done(self, task: asyncio.Task[None]) -> None:
        self._work = None
        if task.cancelled():
            return
        if (exc := task.exception()) is not None:
            log.critical("supervisor failure", exc_info=exc)
            self._fail(f"internal error in the supervisor: {exc!r}")
            return
        self._schedule()

    def _schedule(self) -> None:
        assert self._stopping is not None
        if self._stopping.is_set() or self._work is not None:
            return
        current = self.current
        if current is None or not current.alive:
            if current is not None:
                self._down_since = current.exited_at
                reason = f"process {current.pid} {describe_exit(current.returncode)}"
                self._forget(current)
                self.current = None
            else:
                reason = self._down_reason
            self._start_work(self._recover(reason))
        elif self._revert is not None and current.ready_at is not None:
            (to, reason, done), self._revert = self._revert, None
            self._start_work(self._revert_work(to, reason, done))
        elif self._pending is not None:
            reason, mode, waiters = self._pending
            self._pending = None
            self._start_work(self._restart(reason, mode, waiters))
        elif self._baseline_due is not None and current.ready_at is not None:
            job, self._baseline_due = self._baseline_due, None
            self._start_work(self._apply_baseline(job))
        elif self._patch_jobs and current.ready_at is not None:
            self._start_work(self._deliver(self._patch_jobs.popleft()))

    def _on_level(self, child: Child) -> None:
        """The process changed its level by itself (a plugin's rollback, its own code)."""
        level = ", ".join(child.info.get("level") or []) or "none"
        log.info("process %d reports its patch level: %s", child.pid, level)
        self._write_status()

    def _on_exit(self, child: Child) -> None:
        if child is self.current and not child.retiring:
            log.error("service process %d %s", child.pid, describe_exit(child.returncode))
            self._schedule()
        self._write_status()

    def _record(self, outcome: RestartOutcome) -> None:
        self.last_restart = outcome
        self.counts[outcome.kind if outcome.ok else "failed"] += 1
        if outcome.ok and outcome.paused_s is not None:
            self.pauses.append(outcome.paused_s)
        if self.current is not None and self.current.alive:
            self.state = "running"
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
            log.error("%s (%s) failed: %s", outcome.kind, outcome.reason, outcome.error)
        self._write_status()

    # -- the work

    async def _recover(self, reason: str, *, first: bool = False) -> None:
        """Start a process from the last state round: at start-up, or after one died."""
        kind = "start" if first else "recovery"
        while True:
            if not first:
                now = time.monotonic()
                while self._restarts and self._restarts[0] < now - self.config.restart_period:
                    self._restarts.popleft()
                if len(self._restarts) >= self.config.max_restarts:
                    self._fail(
                        f"the service was restarted {len(self._restarts)} times within "
                        f"{self.config.restart_period:g}s and failed again ({reason}); giving up "
                        f"(raise --max-restarts/--restart-period, or fix the service)"
                    )
                    return
                delay = min(
                    self.config.backoff_initial * 2 ** len(self._restarts), self.config.backoff_max
                )
                self.state = "backing-off"
                self._write_status()
                log.warning("restarting the service in %.2fs (%s)", delay, reason)
                await asyncio.sleep(delay)
                self._restarts.append(time.monotonic())
            first = False
            self.state = "starting" if kind == "start" else "recovering"
            try:
                new, handover = await self._bring_up(
                    None, down_since=self._down_since, carry_state=True
                )
            except _BringUpFailed as exc:
                self._record(
                    RestartOutcome(kind, reason, ok=False, error=str(exc), new_pid=exc.new_pid)
                )
                reason = str(exc)
                continue
            self.current = new
            self._down_since = None
            self._record(
                RestartOutcome(
                    kind,
                    reason,
                    ok=True,
                    new_pid=new.pid,
                    paused_s=handover.paused_s,
                    state=handover.state,
                )
            )
            return

    async def _restart(
        self, reason: str, mode: RestartMode, waiters: list[asyncio.Future[RestartOutcome]]
    ) -> None:
        old = self.current
        assert old is not None
        self.state = "restarting"
        self._write_status()
        log.info("%s restart (%s) of process %d", mode, reason, old.pid)
        outcome: RestartOutcome | None = None
        try:
            if mode == "plain":
                outcome = await self._restart_plain(old, reason)
            else:
                outcome = await self._restart_preserving(old, reason)
        finally:
            result = outcome or RestartOutcome(mode, reason, ok=False, error="interrupted")
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(result)
        self._record(result)

    async def _restart_preserving(
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
        try:
            new, handover = await self._bring_up(
                old, down_since=None, carry_state=True, start_patch=start_patch, release=release
            )
        except _BringUpFailed as exc:
            if before is not None:  # before a recovery starts from it, or the old one goes on
                before.restore_journal()
            if exc.old_drained or not old.alive:
                # Nobody serves any more: the work that follows brings up a
                # replacement from the chain (which holds the final round, if
                # the old process handed it over).
                error = f"{exc}; the old process {old.pid} no longer serves, starting another"
                if old.alive:
                    self._retire_later(old)
                self.current = None
                self._down_since = exc.stopped_at
                self._down_reason = f"restart failed after the hand-over: {exc}"
            else:
                error = f"{exc}; the old process {old.pid} keeps serving"
            return RestartOutcome(
                "preserving", reason, ok=False, error=error, old_pid=old.pid, new_pid=exc.new_pid
            )
        self.current = new
        self._retire_later(old)
        outcome = RestartOutcome(
            "preserving",
            reason,
            ok=True,
            old_pid=old.pid,
            new_pid=new.pid,
            paused_s=handover.paused_s,
            state=handover.state,
        )
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
        self.release, self.baseline = to.release, to.baseline
        to.restore_journal()
        self.state = "rolling-back"
        self._write_status()
        try:
            new, handover = await self._bring_up(bad, down_since=None, carry_state=True)
        except _BringUpFailed as exc:
            stopped_at = exc.stopped_at
            if bad.alive and not exc.old_drained:
                stopped_at, _ = await self._drain(bad)
            if bad.alive:
                self._retire_later(bad)
            self.current = None
            self._down_since = stopped_at
            self._down_reason = f"rollback failed: {exc}"
            error = f"{exc}; starting the previous code again from the last state round"
            return RestartOutcome(
                "rollback", reason, ok=False, error=error, old_pid=bad.pid, new_pid=exc.new_pid
            )
        self.current = new
        self._retire_later(bad)
        return RestartOutcome(
            "rollback",
            reason,
            ok=True,
            old_pid=bad.pid,
            new_pid=new.pid,
            paused_s=handover.paused_s,
            state=handover.state,
            rolled_back=describe_level(new.info),
        )

    def request_revert(self, to: CodePoint, reason: str) -> asyncio.Future[RestartOutcome]:
        """Go back to ``to``'s code and journal (a fleet's halted baseline rollout)."""
        future: asyncio.Future[RestartOutcome] = asyncio.get_running_loop().create_future()
        if self._revert is not None and not self._revert[2].done():
            self._revert[2].set_result(
                RestartOutcome("rollback", self._revert[1], ok=False, error="superseded")
            )
        self._revert = (to, reason, future)
        self._schedule()
        return future

    async def _revert_work(
        self, to: CodePoint, reason: str, done: asyncio.Future[RestartOutcome]
    ) -> None:
        old = self.current
        assert old is not None
        self.previous = None
        outcome: RestartOutcome | None = None
        try:
            outcome = await self._roll_back(old, to, reason)
        finally:
            result = outcome or RestartOutcome("rollback", reason, ok=False, error="interrupted")
            if not done.done():
                done.set_result(result)
        self._record(result)

    async def _restart_plain(self, old: Child, reason: str) -> RestartOutcome:
        """Stop, then start: the service keeps its state its own way (the sockets stay open)."""
        self.current = None
        stopped_at = time.monotonic()
        await self._stop_child(old)
        self.chain.clear()
        try:
            new, handover = await self._bring_up(None, down_since=stopped_at, carry_state=False)
        except _BringUpFailed as exc:
            self._down_since = stopped_at
            self._down_reason = f"plain restart failed: {exc}"
            return RestartOutcome(
                "plain", reason, ok=False, error=str(exc), old_pid=old.pid, new_pid=exc.new_pid
            )
        self.current = new
        return RestartOutcome(
            "plain",
            reason,
            ok=True,
            old_pid=old.pid,
            new_pid=new.pid,
            paused_s=handover.paused_s,
            state=handover.state,
        )

    async def _bring_up(
        self,
        old: Child | None,
        *,
        down_since: float | None,
        carry_state: bool,
        start_patch: PatchJob | None = None,
        release: Release | None = None,
    ) -> tuple[Child, _Handover]:
        """Start a process, give it the state, drain ``old`` (if any) into it; until ready."""
        new = self._start_child(down_since, release)
        if start_patch is not None:
            fd = _memfd(start_patch.data)
            try:
                body = {"op": "start-patch", "name": start_patch.name, "path": start_patch.path}
                with contextlib.suppress(ChildExited):  # seen as an exit below
                    new.send({**body, "who": start_patch.who}, [fd])
            finally:
                os.close(fd)
        source = old if carry_state else None
        # Freshen the chain while the new process starts and imports.
        refresh = asyncio.create_task(self._pull(source)) if source is not None else None
        feed = _Feed(new, self.chain) if carry_state else None
        drained, stopped_at = False, down_since
        try:
            await self._precopy(new, source, refresh, feed)
            # The pause starts here.
            if source is not None:
                drained = True
                stopped_at, complete = await self._drain(source)
                state = "complete" if complete else "from-snapshot"
            else:
                state = "from-snapshot" if feed and not self.chain.empty else "fresh"
            if feed is not None:
                feed.send()
            handover = {"stopped_at": stopped_at, "limit": self.config.state_limit, "state": state}
            new.send({"op": "handover", **handover})
            message = await new.expect("ready", timeout=self.config.ready_timeout)
        except (ChildExited, TimeoutError, StateError, _StartRefused) as exc:
            await self._discard(new)
            raise _BringUpFailed(
                self._why(new, exc), old_drained=drained, stopped_at=stopped_at, new_pid=new.pid
            ) from exc
        except BaseException:
            new.signal(signal.SIGKILL)
            raise
        finally:
            self.starting = None
            if refresh is not None and not refresh.done():
                # Never abandoned: the old process has forgotten what the
                # round holds, so the round must reach the chain.
                self._pulls.add(refresh)
                refresh.add_done_callback(self._pulls.discard)
        new.ready_at = float(message.body["at"])
        paused = None if stopped_at is None else max(new.ready_at - stopped_at, 0.0)
        return new, _Handover(paused, state)

    def _child_spec(self, release: Release | None = None) -> ChildSpec:
        """The command, with the baseline and journal, and a release's code first on sys.path."""
        spec = self.config.spec
        env = dict(spec.env)
        release = release or self.release
        baseline = release.version if release is not None else self.config.baseline
        if baseline is not None:
            env[ENV_BASELINE] = baseline
            if self.config.journal is not None:
                env[ENV_JOURNAL] = str(self.config.journal)
        if release is not None:
            # Safe path: neither the script's folder nor the working directory goes
            # before the new code tree (which would run the old code again).
            inherited = env.get("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(release.code_root), inherited]))
            env["PYTHONSAFEPATH"] = "1"
        return ChildSpec(spec.argv, env, spec.cwd)

    def _start_child(self, down_since: float | None, release: Release | None = None) -> Child:
        self._generation += 1
        try:
            new = Child.spawn(self._child_spec(release), self.listeners, self._generation)
        except OSError as exc:
            msg = f"cannot start {self.config.spec.argv[0]!r}: {exc.strerror or exc}"
            raise _BringUpFailed(msg, old_drained=False, stopped_at=down_since) from exc
        self.children.add(new)
        new.exited.add_done_callback(lambda _: self._on_exit(new))
        new.on_level = self._on_level
        self.starting = new
        self._write_status()
        return new

    async def _precopy(
        self,
        new: Child,
        source: Child | None,
        refresh: asyncio.Task[Chunk] | None,
        feed: _Feed | None,
    ) -> None:
        """Answer the new process's pulls, with smaller and smaller rounds, until it is loaded."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.ready_timeout
        rounds, last = 0, 0
        while True:
            message = await new.expect("pull", "loaded", timeout=deadline - loop.time())
            if message.op == "loaded":
                new.info = dict(message.body)
                if (sys_path := message.body.get("sys_path")) is not None:
                    self.service_sys_path = list(sys_path)
                    self.sys_path_known.set()
                if error := message.body.get("error"):
                    raise _StartRefused(f"the new process {new.pid} cannot start: {error}")
                return
            if source is not None and source.alive:
                pull = refresh if rounds == 0 and refresh else self._pull(source, full=False)
                chunk = await self._round(pull)
                rounds += 1
                last = chunk.size if chunk is not None else 0
            if feed is not None:
                feed.send()
            more = source is not None and source.alive and last > PRECOPY_DONE_BYTES
            new.send({"op": "pulled", "more": more and rounds < PRECOPY_MAX_ROUNDS})

    def _why(self, new: Child, exc: Exception) -> str:
        if isinstance(exc, TimeoutError):
            return f"the new process {new.pid} was not ready within {self.config.ready_timeout:g}s"
        if isinstance(exc, StateError):
            return f"the state could not be handed over: {exc}"
        if isinstance(exc, _StartRefused):
            return str(exc)
        if new.alive:
            return f"the new process {new.pid} closed its control channel"
        return f"the new process {new.pid} {describe_exit(new.returncode)} before it was ready"

    async def _round(self, pull: Coroutine[Any, Any, Chunk] | asyncio.Task[Chunk]) -> Chunk | None:
        """A state round from the old process, ``None`` if it died meanwhile."""
        try:
            return await pull
        except ChildExited:
            return None

    async def _pull(self, child: Child, *, full: bool | None = None) -> Chunk:
        """Ask ``child`` for a state round and add it to the chain."""
        async with child.lock:
            if full is None:
                full = self.chain.needs_full()
            full = full or self.chain.empty or self.chain.stale
            request = Child.request_id()
            child.send(
                {"op": "pull", "id": request, "full": full, "limit": self.config.state_limit}
            )
            try:
                message = await child.expect(
                    "state", "state-error", timeout=PULL_TIMEOUT, request=request
                )
            except TimeoutError as exc:
                # If the round comes after all, it is dropped: the next one must be full.
                self.chain.stale = True
                msg = f"process {child.pid} sent no state round within {PULL_TIMEOUT:g}s"
                raise StateError(msg) from exc
            if message.op == "state-error" or not message.fds:
                message.close_fds()
                error = message.body.get("error", "no memfd attached")
                msg = f"process {child.pid} cannot hand over its state: {error}"
                raise StateError(msg)
            chunk = Chunk(
                message.fds[0], int(message.body["size"]), int(message.body["records"]), full
            )
            self.chain.add(chunk)
            self.snapshots += 1
            self.snapshot_at = utc_now()
            self.snapshot_error = None
            return chunk

    async def _drain(self, old: Child) -> tuple[float, bool]:
        """Stop ``old`` taking work and take its final round: ``(stopped_at, complete)``."""
        async with old.lock:
            sent_at = time.monotonic()
            timeout = self.config.drain_timeout
            old.retiring = True
            try:
                old.send({"op": "drain", "timeout": timeout, "limit": self.config.state_limit})
                message = await old.expect("handover", timeout=timeout + HANDOVER_GRACE)
            except ChildExited as exc:
                log.warning("%s before handing over; changes since the last round are lost", exc)
                return old.exited_at or sent_at, False
            except TimeoutError:
                log.warning(
                    "process %d did not hand over within %gs (--drain-timeout); killing it; "
                    "changes since the last round are lost",
                    old.pid,
                    timeout,
                )
                await old.kill()
                return sent_at, False
            stopped_at = float(message.body.get("stopped_at", sent_at))
            if message.body.get("error") or not message.fds:
                message.close_fds()
                log.warning(
                    "process %d could not write its final round (%s); changes since the last "
                    "round are lost",
                    old.pid,
                    message.body.get("error"),
                )
                return stopped_at, False
            chunk = Chunk(
                message.fds[0], int(message.body["size"]), int(message.body["records"]), False
            )
            try:
                self.chain.add(chunk)
            except ValueError as exc:
                log.warning("process %d: %s", old.pid, exc)
                return stopped_at, False
            return stopped_at, True

    # -- ending processes

    def _forget(self, child: Child) -> None:
        if not child.alive:
            child.close()
            self.children.discard(child)

    async def _discard(self, child: Child) -> None:
        """A process that never served: no drain, just gone."""
        await child.kill()
        self._forget(child)

    async def _retire(self, child: Child) -> None:
        """Wait for a process that handed over to exit by itself; then insist."""
        if await child.wait_exit(self.config.drain_timeout + RETIRE_GRACE) is None:
            log.warning("process %d did not exit after handing over; terminating it", child.pid)
            await child.terminate(STOP_GRACE)
        self._forget(child)

    async def _stop_child(self, child: Child) -> None:
        """Drain and stop ``child``: the stop message (drain callback) or SIGTERM, then SIGKILL."""
        child.retiring = True
        if child.alive and child.ready_at is not None:
            with contextlib.suppress(ChildExited):
                child.send({"op": "stop", "timeout": self.config.drain_timeout})
            if await child.wait_exit(self.config.drain_timeout + STOP_GRACE) is None:
                log.warning("process %d did not stop in time; terminating it", child.pid)
        if child.alive:
            await child.terminate(STOP_GRACE)
        self._forget(child)

    async def _snapshot_loop(self) -> None:
        """Keep the chain fresh, so a process killed outright comes back with recent state."""
        while True:
            await asyncio.sleep(self.config.snapshot_interval)
            child = self.current
            if self._work is not None or child is None or not child.alive or child.ready_at is None:
                continue
            try:
                await self._pull(child)
            except ChildExited:
                continue
            except StateError as exc:
                log.warning("state snapshot failed: %s", exc)
                self.snapshot_error = str(exc)
            self._write_status()

    def _drop_patch_jobs(self) -> None:
        if self._planned_task is not None:
            self._planned_task.cancel()
            self._planned_task = None
        for pending in (self._planned, self._baseline_due):
            if pending is not None and not pending.done.done():
                pending.done.set_result(_not_now(pending, "the supervisor stopped before it"))
        while self._patch_jobs:
            job = self._patch_jobs.popleft()
            if not job.done.done():
                job.done.set_result(_not_now(job, "the supervisor stopped before applying it"))
        if self._revert is not None:
            _, reason, done = self._revert
            self._revert = None
            if not done.done():
                done.set_result(RestartOutcome("rollback", reason, ok=False, error="stopped"))

    async def _shutdown(self) -> None:
        if self.state != "failed":
            self.state = "stopping"
        self._write_status()
        self._drop_patch_jobs()
        self.sys_path_known.set()  # a drop waiting for the first process: on with it
        # The folder's thread may be waiting for this loop: stop it from another thread.
        pipeline = self.pipeline
        stopping = asyncio.create_task(asyncio.to_thread(pipeline.stop)) if pipeline else None
        if self._work is not None:
            self._work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._work
        if self.current is not None:
            await self._stop_child(self.current)
            self.current = None
        await asyncio.gather(*self._retiring, return_exceptions=True)
        for task in self._pulls:
            task.cancel()
        await asyncio.gather(*self._pulls, return_exceptions=True)
        for child in list(self.children):
            if child.alive:
                await child.kill()
            self._forget(child)
        if self._pending is not None:
            for waiter in self._pending[2]:
                if not waiter.done():
                    waiter.set_result(
                        RestartOutcome(
                            self._pending[1], self._pending[0], ok=False, error="stopped"
                        )
                    )
            self._pending = None
        if stopping is not None:
            self._drop_patch_jobs()
            await stopping
            self.pipeline = None
        self.close_sockets()
        self.chain.clear()
        if self.state != "failed":
            self.state = "stopped"
        self._write_status()
        log.info("stopped")


def _not_now(job: PatchJob | BaselineJob, why: str) -> dict[str, Any]:
    return {
        "outcome": "pending",
        "reason": f"{why}; drop it again to apply it",
        "error_type": "RestartRequired",
        "via": None,
    }
