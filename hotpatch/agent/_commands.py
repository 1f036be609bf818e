"""The agent's answers to control requests: status, apply, verify, rollback, history."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hotpatch._errors import PatchError
from hotpatch.agent._drops import Vanished
from hotpatch.agent._folder import Folder
from hotpatch.agent._outcome import Outcome
from hotpatch.agent._pipeline import DropPipeline

__all__ = ["AgentCommands"]

log = logging.getLogger("hotpatch")


class AgentCommands(DropPipeline):
    """``handle()`` for the control socket (``hotpatch.agent._control``), over the drop pipeline."""

    # Set by the agent (``hotpatch.agent._agent.Agent``), which owns the folder and the socket.
    watch: Path | None
    journal: Path | None
    socket: Path | None
    _folder: Folder | None

    def status(self) -> dict[str, Any]:
        """What ``hotpatch status`` shows."""
        assert self.registry is not None, "the agent is not started"
        return {
            "ok": True,
            "baseline": self.registry.baseline,
            "version": self.registry.version,
            "level": list(self.registry.level),
            "pid": os.getpid(),
            "watch": str(self.watch) if self.watch else None,
            "journal": str(self.journal) if self.journal else None,
            "socket": str(self.socket) if self.socket else None,
            "pending": self._folder.pending if self._folder else [],
            "last": self._last,
        }

    def handle(self, request: dict[str, Any], peer_uid: int) -> dict[str, Any]:
        """Answer one control request (see the control protocol); never raises."""
        commands: dict[str, Callable[[dict[str, Any], str], dict[str, Any]]] = {
            "status": lambda _request, _who: self.status(),
            "apply": self._handle_apply,
            "verify": self._handle_verify,
            "rollback": self._handle_rollback,
            "history": lambda _request, _who: self._handle_history(),
        }
        try:
            cmd = request.get("cmd") if isinstance(request, dict) else None
            command = commands.get(cmd) if isinstance(cmd, str) else None
            if command is None:
                return _bad(
                    f"unknown request {request!r}; expected a JSON object whose cmd is one of "
                    f"{', '.join(commands)}"
                )
            return command(request, f"uid:{peer_uid}")
        except PatchError as exc:
            return _refused(exc)
        except Exception as exc:
            log.exception("control request %r failed", request)
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "error_type": "Error"}

    def _request_path(self, request: dict[str, Any]) -> Path | dict[str, Any]:
        raw = request.get("path")
        if not isinstance(raw, str) or not raw:
            return _bad("this command needs 'path': the absolute path of the patch file")
        path = Path(raw)
        if not path.is_absolute():
            return _bad(f"path {raw!r} is relative; send an absolute path")
        return path

    def _handle_apply(self, request: dict[str, Any], who: str) -> dict[str, Any]:
        path = self._request_path(request)
        if isinstance(path, dict):
            return path
        try:
            outcome = self._process(path, who=who)
        except Vanished:
            return _bad(f"no such file: {path}")
        record = outcome.record()
        record["ok"] = outcome.outcome in ("applied", "unchanged")
        if not record["ok"]:
            record["error"] = outcome.reason
            record["error_type"] = outcome.error_type or "VerificationFailed"
        return record

    def _handle_verify(self, request: dict[str, Any], who: str) -> dict[str, Any]:
        path = self._request_path(request)
        if isinstance(path, dict):
            return path
        assert self.registry is not None
        outcome = Outcome(name=path.name, who=who)
        try:
            with self._lock:
                patch = self._load(path, outcome)
                if patch is None:  # decided without importing: a bundle, or already applied
                    hot = outcome.outcome == "unchanged"
                    return {
                        "ok": True,
                        "version": outcome.version,
                        "hot": hot,
                        "reasons": [] if hot else [outcome.reason],
                        "targets": list(outcome.targets),
                        "modes": {},
                        "note": outcome.reason,
                    }
                report = self.registry.check(patch)
        except Vanished:
            return _bad(f"no such file: {path}")
        return {"ok": True, **report.record()}

    def _handle_rollback(self, request: dict[str, Any], who: str) -> dict[str, Any]:
        to = request.get("to")
        if to is not None and not isinstance(to, str):
            return _bad("'to' is a version string, or null for the last patch")
        assert self.registry is not None
        try:
            with self._lock:
                result = self.registry.rollback(to=to, who=who)
        except ValueError as exc:  # not a version at all
            return _bad(str(exc))
        return {"ok": True, "versions": list(result.versions), "level": list(result.level)}

    def _handle_history(self) -> dict[str, Any]:
        assert self.registry is not None
        return {"ok": True, "history": [h.record() for h in self.registry.history]}


def _bad(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message, "error_type": "BadRequest"}


def _refused(exc: PatchError) -> dict[str, Any]:
    return {"ok": False, "error": str(exc), "error_type": type(exc).__name__}
