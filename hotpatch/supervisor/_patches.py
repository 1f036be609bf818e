"""The supervisor's watched folder: the agent's drop pipeline, applying in the service process.

The supervisor owns the folder for the service's whole life (the service
processes never watch it), so one owner files every outcome across restarts.
It also serves the folder's control socket (``DIR/.hotpatch.sock``), so
``hotpatch apply|rollback|history|verify|status`` work as with an embedded
agent: an apply goes through the same pipeline as a drop; rollback, history
and the ``check`` of ``verify`` are asked of every worker's serving process.
Each drop goes through the agent's pipeline -- read once, signature, the
verification child with the *service's* ``sys.path`` -- and the verified
bytes then go to the serving process over its control channel, where its
``Registry`` loads and applies them. A patch the process answers with
``RestartRequired`` goes in through a memory-preserving restart whose new
process applies it before it serves.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import stat
import sys
import tempfile
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from packaging.version import Version

from hotpatch._errors import VerificationFailed
from hotpatch._registry import Registry
from hotpatch.agent._agent import Agent
from hotpatch.agent._drops import Vanished, is_bundle_name, read_patch_file, read_signature
from hotpatch.agent._names import PIDFILE_NAME
from hotpatch.agent._outcome import Outcome, write_result
from hotpatch.agent._signing import bundle_digest, verify_signature
from hotpatch.supervisor._bundle import MAX_BUNDLE_BYTES, read_bundle, unpack_bundle
from hotpatch.supervisor._child import Child, ChildExited
from hotpatch.supervisor._handover import memfd
from hotpatch.supervisor._runner import Runner
from hotpatch.supervisor._supervisor import Supervisor

__all__ = ["SupervisedPipeline"]

log = logging.getLogger("hotpatch.supervisor")

# What the supervisor's answer adds to NAME.result.json: the restart it went through
# (pids, pause), the failed health check and what was rolled back to, the rollout.
RESULT_DETAILS = ("restart", "health", "rolled_back", "rollout")
SYS_PATH_WAIT = 60.0  # for the first process to say its sys.path
ASK_TIMEOUT = 60.0  # for a serving process to roll back, check a patch, list its history
HISTORY_ENTRIES = 200  # per process: a control message holds at most 64 KiB

T = TypeVar("T")


class SupervisedPipeline(Agent):
    """An ``Agent`` without a registry of its own: the serving process applies."""

    def __init__(self, supervisor: Runner) -> None:
        config = supervisor.config
        assert config.watch is not None
        super().__init__(
            config.baseline or "0",
            watch=config.watch,
            journal=None,
            require_signature=config.require_signature,
            trusted_keys=config.trusted_keys,
            # --control-socket, or DIR/.hotpatch.sock; named in DIR/.hotpatch.json either way
            control_socket=config.control_socket or True,
            verify_timeout=config.verify_timeout,
            entry_points=False,
        )
        self.supervisor = supervisor
        self._who_folder = f"folder:{self.watch} (supervisor)"
        self._local = threading.local()  # the rollout of the apply this thread runs

    def pending(self) -> list[str]:
        """Drops in the folder waiting to be processed."""
        return self._folder.pending if self._folder is not None else []

    # -- the parts of the agent's pipeline that happen elsewhere

    def _make_registry(self) -> Registry | None:
        return None

    def _level(self) -> tuple[str, ...]:
        return tuple(v for v, _ in self.supervisor.applied_patches)

    def _notify_rejected(self, outcome: Outcome, path: Path, who: str) -> None:
        pass  # the service's plugins hear of what reached its registry

    def _verify_sys_path(self) -> list[str]:
        if not self.supervisor.sys_path_known.wait(SYS_PATH_WAIT):
            msg = (
                f"the service has not started within {SYS_PATH_WAIT:g}s, so its sys.path is "
                "unknown and the patch cannot be verified; drop it again once it serves"
            )
            raise VerificationFailed(msg)
        return list(self.supervisor.service_sys_path or sys.path)

    def _applied(self) -> list[tuple[str, str | None, tuple[str, ...] | None]]:
        return [(v, sha, None) for v, sha in self.supervisor.applied_patches]

    # -- baseline bundles

    def _read(self, path: Path, outcome: Outcome) -> bytes | None:
        try:
            st = path.lstat()
        except FileNotFoundError:
            raise Vanished(str(path)) from None
        if not (
            stat.S_ISDIR(st.st_mode) or (stat.S_ISREG(st.st_mode) and is_bundle_name(path.name))
        ):
            return super()._read(path, outcome)
        outcome.ino = (st.st_ino, st.st_dev)
        if st.st_uid != os.geteuid():
            msg = (
                f"{path.name} is owned by uid {st.st_uid}, not by this service's user "
                f"(uid {os.geteuid()}); hotpatch refuses files owned by another user"
            )
            raise VerificationFailed(msg)
        self._baseline(path, outcome, is_dir=stat.S_ISDIR(st.st_mode))
        return None

    def _write_pidfile(self, folder: Path) -> None:
        """``.hotpatch.json``: who owns the folder, and where its status is (for the CLI)."""
        status = self.supervisor.config.status_file
        write_result(
            folder / PIDFILE_NAME,
            {
                "pid": os.getpid(),
                "socket": str(self.socket) if self.socket else None,
                "baseline": self.supervisor.baseline,
                "folder": str(folder),
                "supervisor": True,
                "status_file": str(status) if status else None,
            },
        )
        self._pidfile_written = True

    def _baseline(self, path: Path, outcome: Outcome, *, is_dir: bool) -> None:
        """Check, unpack and hand a bundle to the supervisor; fills ``outcome``."""
        config = self.supervisor.config
        assert self.watch is not None
        staged: Path | None = None
        try:
            source = path
            if not is_dir:
                # Read once: the signature, the checks and the unpacking see these bytes.
                read = read_patch_file(path, max_bytes=MAX_BUNDLE_BYTES, owners={os.geteuid()})
                outcome.ino, outcome.sha256 = (
                    (read.ino, read.dev),
                    hashlib.sha256(read.data).hexdigest(),
                )
                if self.require_signature:
                    signature = read_signature(path, owners={os.geteuid()})
                    outcome.key_id = verify_signature(
                        read.data, signature, self.trusted_keys, name=path.name
                    )
                assert self._staging is not None
                staged = Path(tempfile.mkdtemp(dir=self._staging))
                source = staged / path.name
                source.write_bytes(read.data)
            else:
                bundle = read_bundle(path)  # no links, nothing escaping: safe to copy
                # Copied once: the signature, the checks and the unpacking see the copy.
                assert self._staging is not None
                staged = Path(tempfile.mkdtemp(dir=self._staging))
                source = staged / path.name
                shutil.copytree(path, source, symlinks=True)
                if self.require_signature:
                    signature = read_signature(path, owners={os.geteuid()})
                    outcome.key_id = verify_signature(
                        bundle_digest(source),
                        signature,
                        self.trusted_keys,
                        name=path.name,
                        kind="bundle",
                    )
            bundle = read_bundle(source)
            outcome.version = bundle.version
            current = self.supervisor.baseline
            if current is not None and Version(bundle.version) <= Version(current):
                if Version(bundle.version) == Version(current):
                    outcome.outcome = "unchanged"
                    outcome.reason = f"baseline {current} is already running"
                    return
                msg = (
                    f"baseline {bundle.version} is not newer than the running baseline "
                    f"{current}; publish the new code under a newer version"
                )
                raise VerificationFailed(msg, patch=bundle.version)
            releases = config.releases or self.watch / ".releases"
            release = unpack_bundle(source, bundle, releases)
        finally:
            if staged is not None:
                shutil.rmtree(staged, ignore_errors=True)
        loop = self.supervisor.loop
        assert loop is not None
        answer: dict[str, Any] = asyncio.run_coroutine_threadsafe(
            self.supervisor.submit_baseline(path.name, release, outcome.who), loop
        ).result()
        self._fill(outcome, answer)

    def _fill(self, outcome: Outcome, answer: dict[str, Any]) -> None:
        outcome.outcome = answer.get("outcome", "rejected")
        outcome.reason = answer.get("reason")
        outcome.error_type = answer.get("error_type")
        outcome.via = answer.get("via")
        outcome.version = answer.get("version") or outcome.version
        outcome.targets = tuple(answer.get("targets") or outcome.targets)
        for name, seconds in (answer.get("timings") or {}).items():
            outcome.timings[f"service_{name}"] = float(seconds)
        outcome.details = {k: answer[k] for k in RESULT_DETAILS if answer.get(k) is not None}
        self._local.rollout = answer.get("rollout")

    def _deliver(self, data: bytes, path: Path, outcome: Outcome) -> None:
        loop = self.supervisor.loop
        assert loop is not None
        submitted = asyncio.run_coroutine_threadsafe(
            self.supervisor.submit_patch(path.name, str(path), data, outcome.who), loop
        )
        answer: dict[str, Any] = submitted.result()
        outcome.notified = True
        self._fill(outcome, answer)

    # -- the control socket: what `hotpatch status|apply|rollback|history|verify` ask

    def _members(self) -> list[Supervisor]:
        """The supervisors whose processes serve: the fleet's workers, or the one supervisor."""
        return list(self.supervisor.members)

    @property
    def _fleet(self) -> bool:
        """Answers name each worker: the runner is a fleet of several."""
        return len(self.supervisor.members) > 1

    def _on_loop(self, work: Callable[[], Awaitable[T]]) -> T:
        """Run ``work()`` on the supervisor's event loop and wait for its result."""
        loop = self.supervisor.loop
        assert loop is not None

        async def run() -> T:
            return await work()

        return asyncio.run_coroutine_threadsafe(run(), loop).result()

    def _ask_all(self, body: dict[str, Any], reply: str) -> list[dict[str, Any]]:
        """``body`` asked of every serving process at once; an answer per worker, in order."""

        async def one(member: Supervisor) -> dict[str, Any]:
            try:
                answer = await member.ask(dict(body), reply, ASK_TIMEOUT)
            except (ChildExited, TimeoutError) as exc:
                answer = {"ok": False, "error": f"no answer: {exc}", "error_type": "Error"}
            return {"index": member.index, **answer}

        async def everyone() -> list[dict[str, Any]]:
            return list(await asyncio.gather(*(one(m) for m in self._members())))

        return self._on_loop(everyone)

    def status(self) -> dict[str, Any]:
        """The supervisor's status (the fleet's, workers included), as its status file holds."""

        async def read() -> dict[str, Any]:
            return self.supervisor.status()

        return {"ok": True, "supervisor": True, **self._on_loop(read)}

    def _handle_apply(self, request: dict[str, Any], who: str) -> dict[str, Any]:
        self._local.rollout = None
        answer = super()._handle_apply(request, who)
        if self._local.rollout is not None:
            answer["rollout"] = self._local.rollout
        return answer

    def _handle_rollback(self, request: dict[str, Any], who: str) -> dict[str, Any]:
        to = request.get("to")
        if to is not None and not isinstance(to, str):
            return _bad("'to' is a version string, or null for the last patch")
        with self._lock:
            answers = self._ask_all({"op": "rollback", "to": to, "who": who}, "rolled-back")
        first = answers[0]
        result: dict[str, Any] = {
            "ok": all(a.get("ok") for a in answers),
            "versions": first.get("versions", []),
            "level": first.get("level", []),
        }
        failed = [a for a in answers if not a.get("ok")]
        if failed:
            result["error"] = self._failures(failed, len(answers))
            types = {a.get("error_type") for a in failed}
            result["error_type"] = types.pop() if len(types) == 1 else "Error"
        if self._fleet:
            result["workers"] = [_worker(a, "versions", "level", "error") for a in answers]
        return result

    def _handle_history(self) -> dict[str, Any]:
        answers = self._ask_all({"op": "history", "entries": HISTORY_ENTRIES}, "history")
        failed = [a for a in answers if not a.get("ok")]
        if failed:
            error = self._failures(failed, len(answers))
            return {"ok": False, "error": error, "error_type": "Error"}
        if not self._fleet:
            return {"ok": True, "history": answers[0].get("history", [])}
        merged = [{**entry, "worker": a["index"]} for a in answers for entry in a["history"]]
        merged.sort(key=lambda e: (e.get("time") or 0, e["worker"]))
        return {"ok": True, "history": merged}

    def _handle_verify(self, request: dict[str, Any], who: str) -> dict[str, Any]:
        """The verification child here, then ``Registry.check`` in every serving process."""
        path = self._request_path(request)
        if isinstance(path, dict):
            return path
        if (bundle := _verify_bundle(path)) is not None:
            return bundle
        outcome = Outcome(name=path.name, who=who)
        with self._lock:
            try:
                data = self._checked(path, outcome)
            except Vanished:
                return _bad(f"no such file: {path}")
            if data is None:  # the same version with the same content: already in
                return {
                    "ok": True,
                    "version": outcome.version,
                    "hot": True,
                    "reasons": [],
                    "targets": list(outcome.targets),
                    "modes": {},
                    "note": outcome.reason,
                }
            answers = self._on_loop(lambda: self._check_everywhere(path, data))
        return self._combine_checks(answers)

    def _combine_checks(self, answers: list[dict[str, Any]]) -> dict[str, Any]:
        """Hot if hot in every worker; the reasons of all of them."""
        failed = [a for a in answers if not a.get("ok")]
        if failed:
            types = {a.get("error_type") for a in failed}
            return {
                "ok": False,
                "error": self._failures(failed, len(answers)),
                "error_type": types.pop() if len(types) == 1 else "Error",
            }
        first = answers[0]
        reasons = list(dict.fromkeys(r for a in answers for r in a.get("reasons") or []))
        result: dict[str, Any] = {
            "ok": True,
            "version": first.get("version"),
            "hot": all(a.get("hot") for a in answers),
            "reasons": reasons,
            "targets": first.get("targets", []),
            "modes": first.get("modes", {}),
        }
        if self._fleet:
            result["workers"] = [_worker(a, "hot", "reasons", "level") for a in answers]
        return result

    async def _check_everywhere(self, path: Path, data: bytes) -> list[dict[str, Any]]:
        async def one(member: Supervisor) -> dict[str, Any]:
            child = member.serving
            try:
                if child is None:
                    msg = "no process is serving"
                    raise ChildExited(msg)
                async with child.lock:
                    request = Child.request_id()
                    fd = memfd(data, "hotpatch-check")
                    try:
                        child.send({"op": "check", "id": request, "path": str(path)}, [fd])
                    finally:
                        os.close(fd)
                    message = await child.expect("checked", timeout=ASK_TIMEOUT, request=request)
                answer = dict(message.body)
            except (ChildExited, TimeoutError) as exc:
                answer = {"ok": False, "error": f"no answer: {exc}", "error_type": "Error"}
            return {"index": member.index, **answer}

        return list(await asyncio.gather(*(one(m) for m in self._members())))

    def _failures(self, failed: list[dict[str, Any]], asked: int) -> str:
        """The errors of ``failed`` answers, each said once with the workers that gave it."""
        if not self._fleet:
            return str(failed[0].get("error"))
        workers: dict[str, list[int]] = {}
        for answer in failed:
            workers.setdefault(str(answer.get("error")), []).append(answer.get("index") or 0)
        if len(workers) == 1 and len(failed) == asked:
            return f"every worker: {next(iter(workers))}"
        return "; ".join(
            f"worker{'s' if len(w) > 1 else ''} {', '.join(map(str, w))}: {error}"
            for error, w in workers.items()
        )


def _verify_bundle(path: Path) -> dict[str, Any] | None:
    """``verify`` of a baseline bundle: never hot; ``None`` for anything else."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return _bad(f"no such file: {path}")
    if not (stat.S_ISDIR(st.st_mode) or (stat.S_ISREG(st.st_mode) and is_bundle_name(path.name))):
        return None
    version = read_bundle(path).version  # a bad bundle raises VerificationFailed: refused
    return {
        "ok": True,
        "version": version,
        "hot": False,
        "reasons": [f"baseline bundle {version} replaces the code: it goes in through a restart"],
        "targets": [],
        "modes": {},
    }


def _worker(answer: dict[str, Any], *keys: str) -> dict[str, Any]:
    """One worker's part of an answer: its index, ``ok`` and ``keys``."""
    return {
        "index": answer.get("index"),
        "ok": bool(answer.get("ok")),
        **{k: answer.get(k) for k in keys if k in answer},
    }


def _bad(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message, "error_type": "BadRequest"}
