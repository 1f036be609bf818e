"""The control socket's commands: status, apply, verify, rollback, history, show."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hotpatch._errors import PatchError
from hotpatch.agent._applier import Applier
from hotpatch.agent._control_server import Handler
from hotpatch.agent._drops import Interrupted, Vanished
from hotpatch.agent._pipeline import DropPipeline
from hotpatch.agent._resources import Shortage

__all__ = ["Command", "Commands", "bad_request", "dispatch", "rollback_answer"]

log = logging.getLogger("hotpatch")

Command = Callable[[dict[str, Any], str], dict[str, Any]]  # (request, who) -> answer


class Commands:
    """The answers of an agent's control socket: the pipeline's, its applier's, and ``status``."""

    def __init__(
        self,
        pipeline: DropPipeline,
        status: Callable[[], dict[str, Any]],
        *,
        brief: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.status = status
        self.brief = brief  # ``{"cmd": "status", "brief": true}``: the top of the level only

    def table(self) -> dict[str, Command]:
        """Each command by name, for ``dispatch``."""
        return {
            "status": lambda request, _who: (
                self.brief() if self.brief is not None and request.get("brief") else self.status()
            ),
            "apply": self.apply,
            "verify": self.verify,
            "rollback": self.rollback,
            "history": lambda _request, _who: self.pipeline.applier.history(),
            "show": self.show,
        }

    def apply(self, request: dict[str, Any], who: str) -> dict[str, Any]:
        """The patch file at ``path`` through the pipeline, as if dropped; its outcome."""
        path = request_path(request)
        if isinstance(path, dict):
            return path
        try:
            outcome = self.pipeline.process(path, who=who, source=f"{who} via hotpatch apply")
        except Vanished:
            return bad_request(f"no such file: {path}")
        except Shortage as exc:
            error = f"{exc}; nothing changed: send it again once the resource is free"
            return {"ok": False, "error": error, "error_type": "Shortage"}
        except Interrupted as exc:
            return interrupted(path, exc)
        record = outcome.record()
        record["ok"] = outcome.outcome in ("applied", "unchanged")
        if not record["ok"]:
            record["error"] = outcome.reason
            record["error_type"] = outcome.error_type or "VerificationFailed"
        return record

    def verify(self, request: dict[str, Any], who: str) -> dict[str, Any]:
        """Would the patch file at ``path`` apply, and hot? Nothing changes."""
        path = request_path(request)
        if isinstance(path, dict):
            return path
        try:
            return self.pipeline.check(path, who=who)
        except Vanished:
            return bad_request(f"no such file: {path}")
        except Interrupted as exc:
            return interrupted(path, exc)

    def show(self, request: dict[str, Any], _who: str) -> dict[str, Any]:
        """The applied patch ``version``: its source, sha256, targets, and when it was applied."""
        version = request.get("version")
        if not isinstance(version, str) or not version:
            return bad_request("show needs 'version': the version of an applied patch")
        try:  # no lock: a read, answered while an apply runs
            return self.pipeline.applier.show(version)
        except ValueError as exc:  # not a version at all
            return bad_request(f"{version!r} is not a version: {exc}")

    def rollback(self, request: dict[str, Any], who: str) -> dict[str, Any]:
        """Roll back the last patch, or to the request's ``to``; logged in the outcome log."""
        answer = rollback_answer(self.pipeline, self.pipeline.applier, request, who)
        self.pipeline.rolled_back(answer, who=who, source=f"{who} via hotpatch rollback")
        return answer


def dispatch(table: Mapping[str, Command]) -> Handler:
    """A control-socket handler answering with ``table``; it never raises."""

    def handle(request: dict[str, Any], peer_uid: int) -> dict[str, Any]:
        try:
            cmd = request.get("cmd") if isinstance(request, dict) else None
            command = table.get(cmd) if isinstance(cmd, str) else None
            if command is None:
                return bad_request(
                    f"unknown request {request!r}; expected a JSON object whose cmd is one of "
                    f"{', '.join(table)}"
                )
            return command(request, f"uid:{peer_uid}")
        except PatchError as exc:
            return {"ok": False, "error": str(exc), "error_type": type(exc).__name__}
        except Exception as exc:
            log.exception("control request %r failed", request)
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "error_type": "Error"}

    return handle


def rollback_answer(
    pipeline: DropPipeline, applier: Applier, request: dict[str, Any], who: str
) -> dict[str, Any]:
    """``applier``'s rollback to the request's ``to``, between the pipeline's patches."""
    to = request.get("to")
    if to is not None and not isinstance(to, str):
        return bad_request("'to' is a version string, or null for the last patch")
    try:
        with pipeline.lock:
            return applier.rollback(to, who)
    except ValueError as exc:  # not a version at all
        return bad_request(str(exc))


def request_path(request: dict[str, Any]) -> Path | dict[str, Any]:
    """The request's absolute ``path``, or the answer refusing it."""
    raw = request.get("path")
    if not isinstance(raw, str) or not raw:
        return bad_request("this command needs 'path': the absolute path of the patch file")
    path = Path(raw)
    if not path.is_absolute():
        return bad_request(f"path {raw!r} is relative; send an absolute path")
    return path


def bad_request(message: str) -> dict[str, Any]:
    """The answer to a request that cannot be understood as sent."""
    return {"ok": False, "error": message, "error_type": "BadRequest"}


def interrupted(path: Path, exc: Interrupted) -> dict[str, Any]:
    """The answer when the checks of ``path`` were cut short by a folder going away."""
    error = f"{path}: {exc}; nothing changed: send it again once the folder is back"
    return {"ok": False, "error": error, "error_type": "Interrupted"}
