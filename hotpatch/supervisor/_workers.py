"""``hotpatch run --workers N``: N worker processes on shared sockets, changed in update domains.

Each worker is a ``Supervisor`` of its own (its process, its state chain,
its journal, its restarts) sharing the fleet's listening sockets; the kernel
spreads the connections. Preserved state is per worker: each process hands
its own state to its own successor. The fleet owns the signals, the watched
folder and the status file, and rolls every change -- a hot patch, a
memory-preserving restart (SIGHUP), a baseline -- through the workers in
update domains (``_rollout``): at most 20% of them (at least one) at a time. After each
batch the changed workers are asked for their health (the
``hotpatch_health_check`` hooks, run inside each worker, and the HTTP probe
of ``--health-url``); if more than 20% of the workers are unhealthy the
rollout halts and the workers it already patched are rolled back.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hotpatch._results import LEVEL_SHOWN
from hotpatch.service._channel import SHORTAGE, format_address, open_listeners
from hotpatch.supervisor._bundle import Release
from hotpatch.supervisor._child import ChildExited, LevelMirror
from hotpatch.supervisor._records import FolderPipeline, SupervisorConfig
from hotpatch.supervisor._rollout import Rollouts, domains
from hotpatch.supervisor._status import folder_shown, pending_shown, utc_now, write_status
from hotpatch.supervisor._supervisor import Supervisor
from hotpatch.supervisor._takeover import HEALTH_TIMEOUT, describe_level

__all__ = ["Fleet", "worker_journal"]

log = logging.getLogger("hotpatch.supervisor")

OK = ("applied", "unchanged")


def _union(levels: Iterable[list[str]]) -> list[str]:
    """Every version some worker runs, each where the first worker that runs it has it."""
    where: dict[str, int] = {}
    for level in levels:
        for i, version in enumerate(level):
            where.setdefault(version, i)
    return sorted(where, key=where.__getitem__)


def fleet_level(mirrors: Sequence[LevelMirror], *, whole: bool) -> dict[str, Any]:
    """The workers' level as the status shows it (``LevelMirror.shown``): every version some
    worker runs (``_union``), its size and digest.

    When every other level is the bottom of the longest one (all at one level, or a
    rollout part way through), that is the longest level, and it costs what the top
    costs. Levels that part under their top (``_union`` of all of them) have no
    digest (``None``): no one level stands for them.
    """
    if not mirrors:
        return LevelMirror().shown(whole=whole)
    longest = max(mirrors, key=lambda m: len(m.patches))
    if all(m.digest_at(len(m.patches)) == longest.digest_at(len(m.patches)) for m in mirrors):
        return longest.shown(whole=whole)
    union = _union(m.level for m in mirrors)
    return {
        "level": union if whole else union[-LEVEL_SHOWN:],
        "level_size": len(union),
        "level_digest": None,
    }


def worker_journal(journal: Path | None, index: int) -> Path | None:
    """Each worker keeps its own journal: ``.journal.json`` -> ``.journal.worker2.json``."""
    if journal is None:
        return None
    return journal.with_name(f"{journal.stem}.worker{index}{journal.suffix}")


class Fleet:
    """N ``Supervisor`` workers on one event loop, sharing sockets, changed domain by domain.

    Like a single ``Supervisor``, it is a ``Runner`` (``_runner``): what the
    watched folder's pipeline, the metrics bridge and ``hotpatch run`` use.
    """

    def __init__(
        self,
        config: SupervisorConfig,
        workers: int,
        *,
        pipeline: Callable[[Fleet], FolderPipeline] | None = None,
    ) -> None:
        if workers < 1:
            msg = f"--workers must be at least 1, not {workers}"
            raise ValueError(msg)
        self.config = config
        self.listeners: dict[str, socket.socket] = {}
        self.members: list[Supervisor] = []
        self.count = workers
        self.loop: asyncio.AbstractEventLoop | None = None
        self.make_pipeline = pipeline
        self.pipeline: FolderPipeline | None = None  # the watched folder's, while it runs
        self.metrics_url: str | None = None  # where --metrics serves (supervisor._metrics)
        self.sys_path_known = threading.Event()
        self.rollouts = Rollouts(
            self.members,
            health_url=config.health_url,
            settle=config.settle,
            on_change=self.write_status,
        )
        self.state = "starting"
        self._stopping = asyncio.Event()
        self._exit_code = 0

    # -- what the pipeline reads

    @property
    def baseline(self) -> str | None:
        return self.members[0].baseline if self.members else self.config.baseline

    @property
    def service_sys_path(self) -> list[str] | None:
        for member in self.members:
            if member.service_sys_path is not None:
                return member.service_sys_path
        return None

    @property
    def applied_patches(self) -> list[tuple[str, str | None]]:
        """Patches every worker has with one content; a content differing anywhere shows that.

        A version some workers lack is left out, so it is delivered again (the
        workers that have it answer ``unchanged``).
        """
        each = [m.applied_patches for m in self.members]
        if not each:
            return []
        if all(other == each[0] for other in each[1:]):  # the usual: one level everywhere
            return each[0]
        levels = [dict(patches) for patches in each]
        result: list[tuple[str, str | None]] = []
        for version in _union(list(level) for level in levels):  # in the level's order
            shas = {level[version] for level in levels if version in level}
            if len(shas) > 1 or (len(shas) == 1 and all(version in lv for lv in levels)):
                result.append((version, sorted(shas, key=str)[-1]))
        return result

    # -- sockets, status

    def open_sockets(self, passed: Mapping[str, socket.socket] | None = None) -> None:
        self.listeners.update(passed or {})  # systemd's, shared by every worker
        try:
            open_listeners(self.config.binds, self.listeners)
        except OSError:
            self.close_sockets()
            raise

    def close_sockets(self) -> None:
        for sock in self.listeners.values():
            sock.close()
        self.listeners.clear()

    def status(self, *, whole: bool = True) -> dict[str, Any]:
        """The fleet's status: every worker's process, baseline and level, and the rollouts;
        the status file holds it with each level and the drops pending shown by their top
        (not ``whole``)."""
        workers = []
        mirrors = []
        for member in self.members:
            own = member.status(whole=False)
            child = member.serving
            info = child.info if child is not None else {}
            mirror = child.mirror if child is not None else LevelMirror()
            mirrors.append(mirror)
            workers.append(
                {
                    "index": member.index,
                    "state": own["state"],
                    "pid": child.pid if child is not None else None,
                    "baseline": info.get("baseline", member.baseline),
                    **mirror.shown(whole=whole),
                    "restarts": own["restarts"],
                    "last_restart": own["last_restart"],
                    "journal": str(member.config.journal) if member.config.journal else None,
                }
            )
        first = self.members[0].status(whole=False) if self.members else {}
        patches = None
        if self.config.watch is not None or self.config.baseline is not None:
            pending = self.pipeline.pending(whole=whole) if self.pipeline is not None else ([], 0)
            patches = {
                "watch": str(self.config.watch) if self.config.watch else None,
                **({"state_dir": str(self.config.state_dir)} if self.config.state_dir else {}),
                "baseline": self.baseline,
                **fleet_level(mirrors, whole=whole),
                **pending_shown(pending),
            }
        return {
            "pid": os.getpid(),
            "state": self.state,
            "command": list(self.config.spec.argv),
            "sockets": {n: format_address(s.getsockname()) for n, s in self.listeners.items()},
            "metrics": self.metrics_url,
            "workers": workers,
            "domains": domains(self.count),
            "child": first.get("child"),
            "restarts": {
                k: sum(w["restarts"].get(k, 0) for w in workers)
                for k in {k for w in workers for k in w["restarts"]}
            },
            "last_restart": first.get("last_restart"),
            "pauses_s": [p for m in self.members for p in m.restarts.pauses],
            "error": next((m.error for m in self.members if m.error), None),
            "patches": patches,
            **folder_shown(self.pipeline),
            "rollout": self.rollouts.current,
            "rollouts": self.rollouts.history,
            "updated": utc_now(),
        }

    def write_status(self) -> None:
        if self.config.status_file is not None and self.members:
            write_status(self.config.status_file, self.status(whole=False))

    # -- running

    async def run(self) -> int:
        """Run the workers until SIGTERM/SIGINT (0) or until one of them fails for good (1)."""
        loop = asyncio.get_running_loop()
        self.loop = loop
        if not self.listeners:
            self.open_sockets()
        for index in range(self.count):
            config = dataclasses.replace(
                self.config,
                status_file=None,
                watch=None,
                journal=worker_journal(self.config.journal, index),
                check_takeover=False,  # the fleet checks each batch, and undoes it
            )
            self.members.append(
                Supervisor(
                    config, listeners=self.listeners, index=index, on_status=self.write_status
                )
            )
        handlers: dict[int, Callable[[], object]] = {
            signal.SIGHUP: lambda: self._spawn(self.restart("SIGHUP")),
            signal.SIGTERM: lambda: self.request_stop("SIGTERM"),
            signal.SIGINT: lambda: self.request_stop("SIGINT"),
        }
        for signum, handler in handlers.items():
            loop.add_signal_handler(signum, handler)
        log.info(
            "running %d workers of %s on %s, update domains %s",
            self.count,
            " ".join(self.config.spec.argv),
            ", ".join(f"{n}={format_address(s.getsockname())}" for n, s in self.listeners.items()),
            domains(self.count),
        )
        tasks = [asyncio.create_task(member.run()) for member in self.members]
        watcher = asyncio.create_task(self._watch_members(tasks))
        started = asyncio.create_task(self._when_serving())
        try:
            await self._stopping.wait()
        finally:
            for signum in handlers:
                loop.remove_signal_handler(signum)
            started.cancel()
            self.state = "stopping"
            self.write_status()
            if self.pipeline is not None:
                await asyncio.to_thread(self.pipeline.stop)
                self.pipeline = None
            for member in self.members:
                member.request_stop("the fleet stops")
            codes = await asyncio.gather(*tasks, return_exceptions=True)
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            self.close_sockets()
            self.state = "stopped" if self._exit_code == 0 else "failed"
            self.write_status()
        if any(code != 0 for code in codes):
            self._exit_code = 1
        return self._exit_code

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _when_serving(self) -> None:
        """Once the first worker serves, its ``sys.path`` is known: watch the folder."""
        while self.service_sys_path is None:
            await asyncio.sleep(0.05)
        self.sys_path_known.set()
        self.state = "running"
        if self.make_pipeline is not None:
            self.pipeline = self.make_pipeline(self)
            try:
                await asyncio.to_thread(self.pipeline.start)
            except Exception as exc:
                self.pipeline = None
                log.error("cannot watch %s: %s", self.config.watch, exc)  # noqa: TRY400
                self._exit_code = 1
                self.request_stop("the folder cannot be watched")
        self.write_status()

    async def _watch_members(self, tasks: list[asyncio.Task[int]]) -> None:
        """A worker that gives up (its restart budget spent) stops the fleet."""
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if not task.cancelled() and task.exception() is None and task.result() != 0:
                self._exit_code = 1
        self.request_stop("a worker stopped")

    def request_stop(self, reason: str = "request") -> None:
        if not self._stopping.is_set():
            log.info("stopping %d workers (%s)", self.count, reason)
            self._stopping.set()

    # -- what is rolled through the workers

    async def submit_patch(self, name: str, path: str, data: bytes, who: str) -> dict[str, Any]:
        """Roll a verified patch through the workers; the outcome the folder files."""
        before: dict[int, str] = {}
        answers: dict[int, dict[str, Any]] = {}

        async def change(member: Supervisor) -> tuple[bool, str]:
            assert member.index is not None
            level = [v for v, _ in member.applied_patches]
            before[member.index] = level[-1] if level else (member.baseline or "0")
            answer = await member.submit_patch(name, path, data, who)
            answers[member.index] = answer
            outcome = str(answer.get("outcome"))
            return outcome in OK, f"{outcome} ({answer.get('via')})"

        async def undo(member: Supervisor) -> str:
            assert member.index is not None
            body = {"op": "rollback", "to": before[member.index], "who": "rollout"}
            try:
                answer = await member.ask(body, "rolled-back", HEALTH_TIMEOUT)
            except (ChildExited, TimeoutError) as exc:
                return f"not rolled back: {exc}"
            return "rolled back" if answer.get("ok") else f"not rolled back: {answer.get('error')}"

        def still(member: Supervisor) -> str | None:
            version = answers.get(member.index or 0, {}).get("version")
            if version is None or version in [v for v, _ in member.applied_patches]:
                return None
            return f"patch {version} is no longer applied (rolled back in the worker)"

        rollout = await self.rollouts.run(f"patch {name}", change, undo, still)
        first = answers.get(0) or next(iter(answers.values()), {})
        result = dict(first)
        result["rollout"] = {k: rollout[k] for k in ("state", "batches", "changed", "unhealthy")}
        if rollout["state"] != "done":
            bad = ", ".join(
                f"worker {i}: {rollout['batches'][-1]['results'].get(str(i), 'unhealthy')}"
                for i in rollout["unhealthy"]
            )
            reason = (
                f"the rollout halted after batch {len(rollout['batches'])} "
                f"({bad}); the changed workers were rolled back"
            )
            short = [a for a in answers.values() if a.get("outcome") == SHORTAGE]
            if short:  # a worker ran short of a resource: not the patch's fault, kept
                resource = short[0].get("resource")
                result.update(outcome=SHORTAGE, resource=resource, error_type="Shortage")
            else:
                result.update(outcome="rejected", error_type="VerificationFailed")
            result["reason"] = reason
        return result

    async def submit_baseline(self, name: str, release: Release, who: str) -> dict[str, Any]:
        """Restart the workers onto a new baseline, domain by domain."""
        answers: dict[int, dict[str, Any]] = {}

        async def change(member: Supervisor) -> tuple[bool, str]:
            assert member.index is not None
            answer = await member.submit_baseline(name, release, who)
            answers[member.index] = answer
            outcome = str(answer.get("outcome"))
            return outcome in OK, outcome

        async def undo(member: Supervisor) -> str:
            previous = member.running.previous
            if member.running.release is not release or previous is None:
                return "not changed"
            reason = f"baseline {release.version}: the rollout halted"
            outcome = await member.request_revert(previous, reason)
            if outcome.ok:
                serving = member.serving
                where = describe_level(serving.info) if serving else outcome.rolled_back
                return f"rolled back to {where}"
            return f"not rolled back: {outcome.error}"

        rollout = await self.rollouts.run(f"baseline {release.version}", change, undo)
        result = dict(answers.get(0) or {})
        keys = ("state", "batches", "changed", "unhealthy", "rolled_back")
        result["rollout"] = {k: rollout[k] for k in keys if k in rollout}
        if rollout["state"] != "done":
            bad = ", ".join(
                f"worker {i}: {rollout['batches'][-1]['results'].get(str(i), 'unhealthy')}"
                for i in rollout["unhealthy"]
            )
            undone = ", ".join(
                f"worker {i}: {t}" for i, t in rollout.get("rolled_back", {}).items()
            )
            result.update(
                outcome="rejected",
                error_type="VerificationFailed",
                reason=f"the baseline {release.version} rollout halted after batch "
                f"{len(rollout['batches'])} ({bad}); {undone or 'no worker was changed'}",
            )
        return result

    async def restart(self, reason: str) -> dict[str, Any]:
        """A memory-preserving restart of every worker, domain by domain (SIGHUP)."""

        async def change(member: Supervisor) -> tuple[bool, str]:
            outcome = await member.request_restart(reason)
            return outcome.ok, f"{outcome.kind} pid {outcome.old_pid} -> {outcome.new_pid}"

        return await self.rollouts.run(f"restart ({reason})", change, None)
