"""The supervisor: owns the listening sockets, runs the service, schedules its restarts and jobs.

One asyncio loop, one thread. At most one piece of *work* runs at a time --
the first start, a restart, bringing back a process that died, a patch or a
baseline -- and everything else (SIGHUP, SIGTERM, a child's exit, the
periodic snapshot) is an event that starts or interrupts that work. The work
itself lives beside it: ``_handover`` (a process brought up with the state),
``_restarts`` (each kind of restart), ``_jobs`` (patches and baselines). They
change only the ``Running`` record the supervisor hands them, and tell it
through callbacks: the status changed, work is waiting, the restart budget is
spent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import asdict
from typing import Any

from hotpatch._results import level_text
from hotpatch.service._channel import format_address, open_listeners
from hotpatch.supervisor._bundle import Release
from hotpatch.supervisor._child import Child, ChildExited, describe_exit
from hotpatch.supervisor._handover import Handover
from hotpatch.supervisor._jobs import Jobs
from hotpatch.supervisor._records import (
    FolderPipeline,
    RestartMode,
    RestartOutcome,
    Running,
    StateError,
    SupervisorConfig,
    not_now,
)
from hotpatch.supervisor._restarts import Restarts
from hotpatch.supervisor._status import folder_shown, utc_now, write_status
from hotpatch.supervisor._takeover import CodePoint

__all__ = ["Supervisor"]

log = logging.getLogger("hotpatch.supervisor")


class Supervisor:
    """Runs one service process at a time and restarts it without dropping connections.

    ``pipeline``, if given, makes the watched folder's pipeline once the
    supervisor runs (``hotpatch run --watch`` gives ``_patches.SupervisedPipeline``).
    """

    def __init__(
        self,
        config: SupervisorConfig,
        *,
        pipeline: Callable[[Supervisor], FolderPipeline] | None = None,
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
        self._observers: list[Callable[[], None]] = []  # see observe()
        self.running = Running(config.baseline)
        self.error: str | None = None
        self.make_pipeline = pipeline
        self.pipeline: FolderPipeline | None = None  # the watched folder's, while it runs
        self.metrics_url: str | None = None  # where --metrics serves (supervisor._metrics)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.handover = Handover(
            config,
            self.listeners,
            on_exit=self._on_exit,
            on_level=self._on_level,
            on_baseline_ready=self._on_baseline_ready,
            on_restart_asked=self._on_restart_asked,
            on_change=self.write_status,
        )
        self.restarts = Restarts(
            config,
            self.running,
            self.handover,
            on_change=self.write_status,
            on_give_up=self.fail,
        )
        self.jobs = Jobs(
            config,
            self.running,
            self.restarts,
            on_work=self.schedule,
            on_change=self.write_status,
        )
        self._work: asyncio.Task[None] | None = None
        self._pending: tuple[str, RestartMode, list[asyncio.Future[RestartOutcome]]] | None = None
        self._revert: tuple[CodePoint, str, asyncio.Future[RestartOutcome]] | None = None
        self._stopping = asyncio.Event()
        self._exit_code = 0

    # -- sockets and status

    def open_sockets(self, passed: Mapping[str, socket.socket] | None = None) -> None:
        """Take the sockets systemd ``passed``, bind every other ``--bind`` now, so an
        address in use is reported before anything starts."""
        self.listeners.update(passed or {})
        try:
            open_listeners(self.config.binds, self.listeners)  # a fleet's shared ones are in
        except OSError:
            self.close_sockets()
            raise

    def close_sockets(self) -> None:
        if not self.shared_sockets:  # shared ones are the fleet's to close
            for sock in self.listeners.values():
                sock.close()
        self.listeners.clear()

    @property
    def addresses(self) -> dict[str, str]:
        return {name: format_address(s.getsockname()) for name, s in self.listeners.items()}

    def status(self, *, whole: bool = True) -> dict[str, Any]:
        """What ``hotpatch status`` shows; the status file holds it with the level and the
        drops pending shown by their top (not ``whole``)."""

        def child(c: Child | None) -> dict[str, Any] | None:
            if c is None:
                return None
            return {"pid": c.pid, "generation": c.generation, "ready": c.ready_at is not None}

        handover, restarts, current = self.handover, self.restarts, self.running.current
        return {
            "pid": os.getpid(),
            "state": self.running.state,
            "error": self.error,
            "command": list(self.config.spec.argv),
            "sockets": self.addresses,
            "metrics": self.metrics_url,
            "child": child(current if current and current.alive else None),
            "starting": child(handover.starting),
            "restarts": dict(restarts.counts),
            "last_restart": asdict(restarts.last) if restarts.last else None,
            "pauses_s": list(restarts.pauses),
            "patches": self.jobs.status(
                self.pipeline.pending(whole=whole) if self.pipeline else ([], 0), whole=whole
            ),
            **folder_shown(self.pipeline),
            "snapshot": {
                "count": handover.snapshots,
                "last": handover.snapshot_at,
                "error": handover.snapshot_error,
                "rounds": len(handover.chain),
                "bytes": handover.chain.size,
            },
            "updated": utc_now(),
        }

    @property
    def members(self) -> list[Supervisor]:
        """A single supervisor is its own only worker (a ``Fleet`` has N)."""
        return [self]

    @property
    def baseline(self) -> str | None:
        """The baseline the service runs: ``--baseline``, then each one restarted onto."""
        return self.running.baseline

    @property
    def last_restart(self) -> RestartOutcome | None:
        """How the last start or restart went."""
        return self.restarts.last

    @property
    def applied_patches(self) -> list[tuple[str, str | None]]:
        """``(version, sha256)`` of the current process's level, as it last said (one list
        until the level changes: not to be changed in place)."""
        current = self.running.current
        if current is None:
            return []
        return current.mirror.applied

    @property
    def service_sys_path(self) -> list[str] | None:
        """The ``sys.path`` the service's last process started with (``None``: none yet)."""
        return self.handover.service_sys_path

    @property
    def sys_path_known(self) -> threading.Event:
        """Set once a process said its ``sys.path`` (or the supervisor stops)."""
        return self.handover.sys_path_known

    @property
    def stopping(self) -> bool:
        """Has the supervisor been asked to stop (``run()`` is ending)?"""
        return self._stopping.is_set()

    def observe(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` on every status change (a restart recorded, a level reported),
        before the fleet hears of it and the status file is rewritten (the metrics bridge)."""
        self._observers.append(callback)

    def write_status(self) -> None:
        """Tell the observers and the fleet (``on_status``); rewrite the status file, if any."""
        for observer in self._observers:
            observer()
        if self.on_status is not None:
            self.on_status()
        if self.config.status_file is not None:
            write_status(self.config.status_file, self.status(whole=False))

    # -- running

    async def run(self) -> int:
        """Supervise until SIGTERM/SIGINT (0) or until the restart budget is spent (1)."""
        loop = asyncio.get_running_loop()
        self.loop = loop
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
        self._start_work(self.restarts.recover("start", first=True))
        if self.make_pipeline is not None:
            self.pipeline = self.make_pipeline(self)
            try:
                await asyncio.to_thread(self.pipeline.start)
            except Exception as exc:
                self.pipeline = None
                self.fail(f"cannot watch {self.config.watch}: {exc}")
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

    # -- requests

    async def submit_patch(self, name: str, path: str, data: bytes, who: str) -> dict[str, Any]:
        """Apply verified patch bytes to the serving process (or through a restart)."""
        if self.stopping:
            return not_now("the supervisor is stopping")
        return await self.jobs.submit_patch(name, path, data, who)

    async def submit_baseline(self, name: str, release: Release, who: str) -> dict[str, Any]:
        """Restart onto a new baseline: now (unplanned) or at its moment (planned)."""
        if self.stopping:
            return not_now("the supervisor is stopping")
        return await self.jobs.submit_baseline(name, release, who)

    async def ask(self, body: dict[str, Any], reply: str, timeout: float) -> dict[str, Any]:
        """Ask the serving process (``health``, ``rollback``) and return its reply.

        Raises ``ChildExited`` if no process serves or it ends meanwhile.
        """
        child = self.running.serving
        if child is None:
            msg = f"worker {self.index}: no process is serving"
            raise ChildExited(msg)
        async with child.lock:
            request = Child.request_id()
            child.send({**body, "id": request})
            message = await child.expect(reply, timeout=timeout, request=request)
        answer = dict(message.body)
        if child.update_level(answer):
            self.write_status()
        return answer

    @property
    def serving(self) -> Child | None:
        """The process serving now, if any."""
        return self.running.serving

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
        self.schedule()
        return future

    def request_revert(self, to: CodePoint, reason: str) -> asyncio.Future[RestartOutcome]:
        """Go back to ``to``'s code and journal (a fleet's halted baseline rollout)."""
        future: asyncio.Future[RestartOutcome] = asyncio.get_running_loop().create_future()
        if self._revert is not None and not self._revert[2].done():
            self._revert[2].set_result(
                RestartOutcome("rollback", self._revert[1], ok=False, error="superseded")
            )
        self._revert = (to, reason, future)
        self.schedule()
        return future

    def request_stop(self, reason: str = "request") -> None:
        """Drain and stop the service, then return from ``run()``."""
        if not self._stopping.is_set():
            log.info("stopping (%s)", reason)
            self._stopping.set()

    def fail(self, message: str) -> None:
        """Give up: log ``message``, status ``failed``, and stop with exit code 1."""
        log.error("%s", message)
        self.error = message
        self.running.state = "failed"
        self._exit_code = 1
        self.write_status()
        self._stopping.set()

    # -- scheduling the work

    def _start_work(self, coroutine: Coroutine[Any, Any, None]) -> None:
        self._work = asyncio.create_task(coroutine)
        self._work.add_done_callback(self._work_done)

    def _work_done(self, task: asyncio.Task[None]) -> None:
        self._work = None
        if task.cancelled():
            return
        if (exc := task.exception()) is not None:
            log.critical("supervisor failure", exc_info=exc)
            self.fail(f"internal error in the supervisor: {exc!r}")
            return
        self.schedule()

    def schedule(self) -> None:
        """Start the next work, if none runs: recovery, revert, restart, baseline, patch."""
        if self._stopping.is_set() or self._work is not None:
            return
        current = self.running.current
        if current is None or not current.alive:
            self._start_work(self.restarts.recover(self.restarts.lost()))
        elif self._revert is not None and current.ready_at is not None:
            (to, reason, done), self._revert = self._revert, None
            self._start_work(self.restarts.revert(to, reason, done))
        elif self._pending is not None:
            reason, mode, waiters = self._pending
            self._pending = None
            self._start_work(self.restarts.restart(reason, mode, waiters))
        elif current.ready_at is not None and (work := self.jobs.next_work()) is not None:
            self._start_work(work)

    def _on_level(self, child: Child) -> None:
        """The process changed its level by itself (a plugin's rollback, its own code)."""
        level = child.info.get("level") or []
        shown = level_text(level, str(child.info.get("baseline"))) if level else "none"
        log.info("process %d reports its patch level: %s", child.pid, shown)
        self.write_status()

    def _on_baseline_ready(self, child: Child) -> None:
        """The process called ``hotpatch.ready_for_baseline()`` (the jobs are made after
        the hand-over, which is told of this method)."""
        self.jobs.baseline_ready(child)

    def _on_restart_asked(self, child: Child, reason: str) -> None:
        """The process asks to be replaced (it got SIGTERM from outside and leaves its
        stopping to us): a restart like SIGHUP's, so its state is handed over."""
        if child is self.running.current and child.alive and not child.retiring:
            self.request_restart(reason)
        else:
            log.info(
                "process %d asked to be replaced (%s) while not serving; ignored", child.pid, reason
            )

    def _on_exit(self, child: Child) -> None:
        if child is self.running.current and not child.retiring:
            log.error("service process %d %s", child.pid, describe_exit(child.returncode))
            self.schedule()
        self.write_status()

    # -- between the work, and the end

    async def _snapshot_loop(self) -> None:
        """Keep the chain fresh, so a process killed outright comes back with recent state."""
        while True:
            await asyncio.sleep(self.config.snapshot_interval)
            child = self.running.serving
            if self._work is not None or child is None:
                continue
            try:
                await self.handover.pull(child)
            except ChildExited:
                continue
            except StateError as exc:
                log.warning("state snapshot failed: %s", exc)
                self.handover.snapshot_error = str(exc)
            self.write_status()

    def _drop_jobs(self) -> None:
        self.jobs.drop()
        if self._revert is not None:
            _, reason, done = self._revert
            self._revert = None
            if not done.done():
                done.set_result(RestartOutcome("rollback", reason, ok=False, error="stopped"))

    async def _shutdown(self) -> None:
        running = self.running
        if running.state != "failed":
            running.state = "stopping"
        self.write_status()
        self._drop_jobs()
        self.sys_path_known.set()  # a drop waiting for the first process: on with it
        # The folder's thread may be waiting for this loop: stop it from another thread.
        pipeline = self.pipeline
        stopping = asyncio.create_task(asyncio.to_thread(pipeline.stop)) if pipeline else None
        if self._work is not None:
            self._work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._work
            self._drop_jobs()  # a patch the work kept for the next process
        if running.current is not None:
            await self.handover.stop_child(running.current)
            running.current = None
        await self.handover.end_all()
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
            self._drop_jobs()
            await stopping
            self.pipeline = None
        self.close_sockets()
        self.handover.chain.clear()
        if running.previous is not None:  # no rollback after this: its kept journal goes
            running.previous.discard()
            running.previous = None
        if running.state != "failed":
            running.state = "stopped"
        self.write_status()
        log.info("stopped")
