"""A worker's control socket: the agent's commands, the owner's where only it can answer, its own.

The workers' own commands (``deliver``, ``undo``, ``patches``, ``worker``,
``joined``: a worker that started) are taken from the workers' uid only.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any

from hotpatch._results import level_summary
from hotpatch.agent._commands import Command, Commands, dispatch, rollback_answer
from hotpatch.agent._control import request as ask
from hotpatch.agent._guard import Unsafe
from hotpatch.agent._names import WORKERS_DIR
from hotpatch.agent._pipeline import DropPipeline
from hotpatch.agent._settings import Settings
from hotpatch.agent._solo import agent_status
from hotpatch.agent.fanout._journal import GroupJournal
from hotpatch.agent.fanout._ownership import Ownership
from hotpatch.agent.fanout._peers import PEER_TIMEOUT_S, ask_owner, other_workers, take_claim
from hotpatch.agent.fanout._worker import Replica

__all__ = ["WorkerCommands"]

log = logging.getLogger("hotpatch")


class WorkerCommands:
    """``handle()`` for one worker's socket, ``DIR/.workers/<pid>.sock``."""

    def __init__(
        self,
        settings: Settings,
        *,
        pipeline: DropPipeline,
        replica: Replica,
        journal: GroupJournal,
        ownership: Ownership,
        pending: Callable[[], list[str]],
        unsafe: Callable[[], Unsafe | None],
        waiting: Callable[[], dict[str, object] | None],
        joined: Callable[[], object] = lambda: None,
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.replica = replica
        self.journal = journal
        self.ownership = ownership
        self.pending = pending
        self.unsafe = unsafe  # why the folder takes no drop now, if this worker owns it
        self.waiting = waiting  # the drop waiting for a resource, if this worker owns it
        self.joined = joined  # another worker started: look at who is registered
        self.started = False  # until its install() returns: its level may not be the group's
        self.commands = Commands(pipeline, self.status)
        self._public = dispatch(
            {**self.commands.table(), "apply": self.apply, "rollback": self.rollback}
        )
        self._private: dict[str, Command] = {
            "deliver": self._deliver,
            "undo": self._undo,
            "patches": lambda _request, _who: self.replica.texts(self.journal),
            "worker": lambda request, _who: self.state(brief=bool(request.get("brief"))),
            "joined": self._joined,
        }

    def handle(self, request: dict[str, Any], peer_uid: int) -> dict[str, Any]:
        cmd = request.get("cmd") if isinstance(request, dict) else None
        command = self._private.get(cmd) if isinstance(cmd, str) else None
        if command is None:
            return self._public(request, peer_uid)
        if peer_uid != os.getuid():  # code only from the workers' own user, not even root
            return {
                "ok": False,
                "error": f"uid {peer_uid} may not send {cmd!r}; only the workers' uid may",
                "error_type": "PermissionDenied",
            }
        try:
            return command(request, f"uid:{peer_uid}")
        except Exception as exc:
            log.exception("worker control request %r failed", cmd)
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "error_type": "Error"}

    # -- what every worker answers ----------------------------------------------------------

    def state(self, *, brief: bool = False) -> dict[str, Any]:
        """This worker's part of ``status``: pid, level, ownership. ``brief``: the top of
        the level and ``level_size`` (the check after each apply asks so: it costs the same
        at any level)."""
        owner = self.ownership.owner
        level = self.replica.local.level()
        return {
            "ok": True,
            "pid": os.getpid(),
            "baseline": self.settings.baseline,
            **(level_summary(level) if brief else {"level": list(level)}),
            "owner": owner,
            "state": "owner" if owner else "serving" if self.started else "starting",
        }

    def status(self) -> dict[str, Any]:
        """The agent's status, plus ``workers``: each live worker's pid, level and ownership."""
        answer = agent_status(
            self.settings,
            self.replica.local.registry,
            pending=self.pending(),
            last=self.pipeline.last,
            unsafe=self.unsafe(),
            waiting=self.waiting(),
        )
        answer["journal_report"] = self.journal.report
        answer["journal_error"] = self.journal.problem
        workers = [self.state()]
        for _pid, sock in sorted(other_workers(self.ownership.folder).items()):
            try:
                state = ask(sock, {"cmd": "worker"}, timeout=PEER_TIMEOUT_S)
            except OSError:
                continue
            workers.append(state)
        # The keys `hotpatch status` shows for the workers of `hotpatch run --workers N` too.
        answer["workers"] = [
            {"index": i, **{k: w.get(k) for k in ("pid", "state", "baseline", "level", "owner")}}
            for i, w in enumerate(workers)
        ]
        return answer

    def apply(self, request: dict[str, Any], who: str) -> dict[str, Any]:
        """``hotpatch apply`` sent to a worker that does not own the folder: to the owner."""
        if not self.ownership.owner:
            forwarded = ask_owner(
                self.ownership.folder, request, timeout=self.settings.deliver_timeout
            )
            if forwarded is not None:
                return forwarded
        return self.commands.apply(request, who)

    def rollback(self, request: dict[str, Any], who: str) -> dict[str, Any]:
        """The group's rollback, by the owner (another worker passes the request on); with
        ``local``, the owner bringing this worker to its level."""
        local = self.replica.local
        if request.get("local"):
            level_now = local.level()
            if request.get("to") == (level_now[-1:] or (self.settings.baseline,))[0]:
                return {"ok": True, "versions": [], **level_summary(level_now)}  # there already
            return rollback_answer(self.pipeline, local, request, who)
        if not self.ownership.owner:
            forwarded = ask_owner(
                self.ownership.folder, request, timeout=self.settings.deliver_timeout
            )
            if forwarded is not None:
                return forwarded
        return self.commands.rollback(request, who)

    def _joined(self, _request: dict[str, Any], _who: str) -> dict[str, Any]:
        self.joined()
        return {"ok": True}

    def _deliver(self, request: dict[str, Any], who: str) -> dict[str, Any]:
        record = self.replica.accept(
            request, who=str(request.get("who") or who), claim=self._claim(request)
        )
        record["ok"] = record["outcome"] in ("applied", "unchanged")
        return record

    def _undo(self, request: dict[str, Any], who: str) -> dict[str, Any]:
        return self.replica.undo(
            request.get("version"),
            who,
            sha256=request.get("sha256"),
            claim=self._claim(request),
        )

    def _claim(self, request: dict[str, Any]) -> Callable[[], str | None] | None:
        """Taking the request's claim (``take_claim``), if its sender made one."""
        if "claim" not in request:
            return None
        workers = self.ownership.folder / WORKERS_DIR
        return functools.partial(take_claim, workers, request["claim"])
