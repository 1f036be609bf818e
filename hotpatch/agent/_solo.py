"""One agent alone on its folder: lock, registry, staging, socket and watch, opened in order."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from typing import Any

from hotpatch._registry import Registry
from hotpatch._results import LEVEL_SHOWN, level_summary, level_text
from hotpatch.agent._commands import Commands, dispatch
from hotpatch.agent._control_server import ControlServer
from hotpatch.agent._guard import Unsafe, check_folder, folder_status
from hotpatch.agent._lifecycle import FolderLock, FolderWatch
from hotpatch.agent._local import LocalApplier
from hotpatch.agent._outcome_log import OutcomeLog
from hotpatch.agent._pipeline import DropPipeline
from hotpatch.agent._settings import Settings
from hotpatch.agent._staging import Staging
from hotpatch.agent._verify import library_modules
from hotpatch.agent._vital import VitalCheck

__all__ = ["Solo", "agent_status"]

log = logging.getLogger("hotpatch")


class Solo:
    """A running agent that applies in this process and is alone on its folder, if it has one.

    Opening takes the folder's lock, replays the journal into a ``Registry``,
    opens staging, starts the verifier, serves the control socket, then
    watches the folder (files already there first); ``close()`` undoes each in
    reverse, and so does a failure half-way.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._watch: FolderWatch | None = None
        lock: FolderLock | None = None
        server: ControlServer | None = None
        with contextlib.ExitStack() as stack:
            state = settings.state  # where it writes: the folder, or its state directory
            if settings.watch is not None:
                # refuse an unsafe folder (or a read-only one without a state directory)
                check_folder(settings.watch, state=settings.state_dir)
                lock = stack.enter_context(FolderLock(settings.state or settings.watch))
            self.registry = Registry(
                settings.baseline,
                journal=settings.journal,
                plugins=settings.plugins.load(settings.checks),
                migration_timeout=settings.migration_timeout,
            )
            if self.registry.journal_report:
                log.info("%s", self.registry.journal_report)
            staging = stack.enter_context(Staging(state))
            # After each apply: can the agent still file and answer its socket? It asks
            # for a brief status (the top of the level), the same at any level.
            vital = VitalCheck(
                stack.enter_context(staging.directory()),
                settings.socket,
                timeout=settings.vital_timeout,
                ask={"cmd": "status", "brief": True},
            )
            stack.callback(vital.close)  # its thread ends with the agent
            self._vital = vital
            self.pipeline = DropPipeline(
                LocalApplier(self.registry, vital=vital),
                settings.checks,
                staging,
                outcome_log=OutcomeLog(state) if state is not None else None,
            )
            stack.enter_context(self.pipeline.verifying(warm=library_modules()))
            commands = Commands(self.pipeline, self.status, brief=lambda: self.status(brief=True))
            self._handle = dispatch(commands.table())
            if settings.socket is not None:
                server = stack.enter_context(ControlServer(settings.socket, self._handle))
                vital.served_by(server)
            if settings.watch is not None:
                process = functools.partial(self.pipeline.process, who=f"folder:{settings.watch}")
                watch = FolderWatch(
                    settings.watch,
                    process,
                    checks=settings.checks,
                    pidfile=self._pidfile,
                    lock=lock,
                    server=server,
                    state=settings.state_dir,
                )
                self._watch = stack.enter_context(watch)
            self._stack = stack.pop_all()
        log.info(
            "hotpatch agent started: baseline %s, level %s, folder %s%s, socket %s",
            settings.baseline,
            level_text(self.registry.level, settings.baseline) if self.registry.level else "-",
            settings.watch or "-",
            f" (state in {settings.state_dir})" if settings.state_dir else "",
            settings.socket or "-",
        )

    def close(self) -> None:
        """Stop watching and serving, release the folder; the patches applied stay applied.

        A drop being processed is finished first; an apply asked through the socket
        goes on after it closed, and its check after the apply knows why it did.
        """
        self._vital.stopping()
        self._stack.close()

    def handle(self, request: dict[str, Any], peer_uid: int) -> dict[str, Any]:
        return self._handle(request, peer_uid)

    def status(self, *, brief: bool = False) -> dict[str, Any]:
        pending: list[str] = []
        count = 0
        if self._watch is not None:
            # Brief (asked after each drop): the first names, at a cost flat in the queue.
            pending, count = (
                self._watch.pending_head(LEVEL_SHOWN) if brief else (self._watch.pending, 0)
            )
        return agent_status(
            self.settings,
            self.registry,
            pending=pending,
            pending_count=count if brief else None,
            last=self.pipeline.last,
            unsafe=self._watch.unsafe if self._watch is not None else None,
            waiting=self._watch.waiting if self._watch is not None else None,
            brief=brief,
        )

    def _pidfile(self) -> dict[str, Any]:
        settings = self.settings
        return {
            "pid": os.getpid(),
            "socket": str(settings.socket) if settings.socket else None,
            "baseline": settings.baseline,
            "folder": str(settings.watch),
            "state_dir": str(settings.state_dir) if settings.state_dir else None,
        }


def agent_status(
    settings: Settings,
    registry: Registry,
    *,
    pending: list[str],
    pending_count: int | None = None,
    last: dict[str, Any] | None,
    unsafe: Unsafe | None = None,
    waiting: dict[str, object] | None = None,
    brief: bool = False,
) -> dict[str, Any]:
    """What ``hotpatch status`` shows of an agent that applies in this process.

    The last outcome of a patch rolled back since (``hotpatch rollback``, the health
    gate) says so: it is not what runs. ``unsafe``: why the folder takes no drop now;
    ``waiting``: the drop waiting for a resource. ``brief`` (``{"cmd": "status",
    "brief": true}``, what the agent's own check after each apply asks): the top of the
    level and ``level_size``, and (given) the first drops waiting in ``pending`` with
    ``pending_count``: an answer that costs the same at any level and any queue.
    """
    if last is not None and last.get("outcome") in ("applied", "unchanged"):
        last = {**last, "rolled_back": not _in_level(registry, last.get("version"))}
    return {
        "ok": True,
        "baseline": registry.baseline,
        "version": registry.version,
        **(level_summary(registry.level) if brief else {"level": list(registry.level)}),
        "pid": os.getpid(),
        "watch": str(settings.watch) if settings.watch else None,
        **({"state_dir": str(settings.state_dir)} if settings.state_dir else {}),
        "journal": str(settings.journal) if settings.journal else None,
        "socket": str(settings.socket) if settings.socket else None,
        "pending": pending,
        **({"pending_count": pending_count} if pending_count is not None else {}),
        "last": last,
        "folder": folder_status(unsafe),
        "waiting": waiting,
    }


def _in_level(registry: Registry, version: object) -> bool:
    """Is ``version`` applied? The top of the level is asked first (after a drop, the last
    patch is the top, at any level); the level is looked through only when it is not."""
    top = registry.version
    return (version == top and top != registry.baseline) or version in registry.level
