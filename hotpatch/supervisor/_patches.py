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
``Registry`` loads and applies them (``SupervisorApplier``). A patch the
process answers with ``RestartRequired`` goes in through a memory-preserving
restart whose new process applies it before it serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import stat
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from packaging.version import Version

from hotpatch._errors import JournalError, VerificationFailed
from hotpatch._journal import Journal
from hotpatch._journal_format import JournalEntry
from hotpatch._loader import DEFAULT_MAX_BYTES
from hotpatch._results import LEVEL_SHOWN, level_text
from hotpatch.agent._applier import AppliedPatch, PatchText, not_applied, show_answer
from hotpatch.agent._commands import Commands, dispatch
from hotpatch.agent._control_server import ControlServer
from hotpatch.agent._drops import peek_targets, read_patch_file, read_signature
from hotpatch.agent._guard import check_folder, folder_status
from hotpatch.agent._lifecycle import FolderLock, FolderWatch
from hotpatch.agent._names import SOCKET_NAME
from hotpatch.agent._outcome import Outcome
from hotpatch.agent._outcome_log import OutcomeLog
from hotpatch.agent._pipeline import DropPipeline
from hotpatch.agent._resources import Shortage
from hotpatch.agent._settings import Checks
from hotpatch.agent._signing import bundle_digest, verify_signature
from hotpatch.agent._staging import Staging
from hotpatch.service._channel import SHORTAGE
from hotpatch.supervisor._bundle import (
    MAX_BUNDLE_BYTES,
    Release,
    copy_tree,
    read_bundle,
    short_of,
    unpack_bundle,
)
from hotpatch.supervisor._child import Child, ChildExited
from hotpatch.supervisor._handover import memfd
from hotpatch.supervisor._runner import Runner
from hotpatch.supervisor._supervisor import Supervisor

__all__ = ["SupervisedPipeline", "SupervisorApplier"]

log = logging.getLogger("hotpatch.supervisor")

# What the supervisor's answer adds to NAME.result.json: the restart it went through
# (pids, pause), the failed health check and what was rolled back to, the rollout.
RESULT_DETAILS = ("restart", "health", "rolled_back", "rollout")
SYS_PATH_WAIT = 60.0  # for the first process to say its sys.path
ASK_TIMEOUT = 60.0  # for a serving process to roll back, check a patch, list its history
HISTORY_ENTRIES = 200  # per process: a control message holds at most 64 KiB

T = TypeVar("T")


class SupervisedPipeline:
    """The folder and control socket of ``hotpatch run --watch DIR``: ``start()``, ``stop()``.

    The agent's parts, opened in the agent's order: the folder's lock, staging,
    the socket, the folder's watch; the patches go to ``SupervisorApplier``.
    """

    def __init__(self, supervisor: Runner) -> None:
        config = supervisor.config
        if config.watch is None:
            msg = "the supervisor's pipeline needs a watched folder (--watch DIR)"
            raise ValueError(msg)
        self.supervisor = supervisor
        self.watch = config.watch.absolute()
        # Where the pipeline writes: --state-dir (the folder is only read), else the folder.
        self.state_dir = config.state_dir.absolute() if config.state_dir else None
        self.state = self.state_dir or self.watch
        # --control-socket, or STATE/.hotpatch.sock; named in STATE/.hotpatch.json either way
        self.socket = (config.control_socket or self.state / SOCKET_NAME).absolute()
        self.checks = Checks.of(
            require_signature=config.require_signature,
            trusted_keys=config.trusted_keys,
            verify_timeout=config.verify_timeout,
            verify=True,
            max_bytes=DEFAULT_MAX_BYTES,
        )
        self.staging = Staging(self.state)
        releases = config.releases or self.state / ".releases"
        self.applier = SupervisorApplier(supervisor, self.checks, self.staging, releases)
        self.pipeline = DropPipeline(
            self.applier, self.checks, self.staging, outcome_log=OutcomeLog(self.state)
        )
        self._handle = dispatch(Commands(self.pipeline, self.status).table())
        self._watch: FolderWatch | None = None
        self._stack: contextlib.ExitStack[bool | None] | None = None

    def start(self) -> SupervisedPipeline:
        """Take the folder, serve the socket, then watch (the files already there first)."""
        if self._stack is not None:
            return self
        with contextlib.ExitStack() as stack:
            # refuse an unsafe folder (or a read-only one without --state-dir) before anything runs
            check_folder(self.watch, state=self.state_dir)
            lock = stack.enter_context(FolderLock(self.state))
            stack.enter_context(self.staging)
            stack.enter_context(self.pipeline.verifying())  # once the service says its sys.path
            server = stack.enter_context(ControlServer(self.socket, self._handle))
            process = functools.partial(
                self.pipeline.process, who=f"folder:{self.watch} (supervisor)"
            )
            watch = FolderWatch(
                self.watch,
                process,
                checks=self.checks,
                pidfile=self._pidfile,
                lock=lock,
                server=server,
                state=self.state_dir,
                on_change=self._changed,
            )
            self._watch = stack.enter_context(watch)
            self._stack = stack.pop_all()
        log.info(
            "hotpatch agent started: baseline %s, level %s, folder %s, socket %s",
            self.supervisor.config.baseline or "0",
            level_text(level, self.supervisor.config.baseline or "0")
            if (level := self.applier.level())
            else "-",
            self.watch,
            self.socket,
        )
        return self

    def stop(self) -> None:
        """Stop watching and serving, release the folder. Idempotent."""
        if self._stack is not None:
            self._stack.close()

    def pending(self, *, whole: bool = True) -> tuple[list[str], int]:
        """Drops in the folder waiting to be processed (all of them, or the first
        ``LEVEL_SHOWN`` at a cost flat in the queue unless ``whole``) and how many wait."""
        if self._watch is None:
            return [], 0
        if not whole:
            return self._watch.pending_head(LEVEL_SHOWN)
        names = self._watch.pending
        return names, len(names)

    def status(self) -> dict[str, Any]:
        """The supervisor's status (the fleet's, workers included), as its status file holds."""

        async def read() -> dict[str, Any]:
            return self.supervisor.status()

        return {"ok": True, "supervisor": True, **on_loop(self.supervisor, read)}

    def folder(self) -> dict[str, Any]:
        """Is the folder safe (and if not, why and since when), and the drop waiting for a
        resource: what the status (and its file) shows of the folder."""
        watch = self._watch
        return {
            "folder": folder_status(watch.unsafe if watch is not None else None),
            "waiting": watch.waiting if watch is not None else None,
        }

    def _changed(self) -> None:
        """The folder became unsafe or safe again, or a drop began, went on or ended waiting
        for a resource (the folder's threads tell it, holding its lock): the status file
        says so at once, rewritten on the supervisor's loop."""
        loop = self.supervisor.loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed: the supervisor is gone
            loop.call_soon_threadsafe(self.supervisor.write_status)

    def _pidfile(self) -> dict[str, Any]:
        """``.hotpatch.json``: who owns the folder, and where its status is (for the CLI)."""
        status = self.supervisor.config.status_file
        return {
            "pid": os.getpid(),
            "socket": str(self.socket),
            "baseline": self.supervisor.baseline,
            "folder": str(self.watch),
            "state_dir": str(self.state_dir) if self.state_dir else None,
            "supervisor": True,
            "status_file": str(status) if status else None,
        }


class SupervisorApplier:
    """Applies through the serving process of every member of ``runner``; has no registry.

    Baseline bundles are unpacked under ``releases`` and restarted into.
    """

    def __init__(self, runner: Runner, checks: Checks, staging: Staging, releases: Path) -> None:
        self.runner = runner
        self.checks = checks
        self.staging = staging
        self.releases = releases
        self._of: object = None  # the runner's list of applied patches described last
        self._described_now: tuple[tuple[str, ...], list[AppliedPatch]] = ((), [])

    def level(self) -> tuple[str, ...]:
        return self._described()[0]

    def applied(self) -> list[AppliedPatch]:
        return self._described()[1]

    def _described(self) -> tuple[tuple[str, ...], list[AppliedPatch]]:
        """The level and its patches, described again only when the runner's list changed
        (it is one list until the level changes): each drop compares with them."""
        patches = self.runner.applied_patches
        if patches is not self._of:
            level = tuple(v for v, _ in patches)
            self._described_now = (level, [AppliedPatch(v, sha, None) for v, sha in patches])
            self._of = patches
        return self._described_now

    def sys_path(self) -> list[str]:
        """The serving process's ``sys.path`` (it may not have said it yet)."""
        if not self.runner.sys_path_known.wait(SYS_PATH_WAIT):
            msg = (
                f"the service has not started within {SYS_PATH_WAIT:g}s, so its sys.path is "
                "unknown and the patch cannot be verified; drop it again once it serves"
            )
            raise VerificationFailed(msg)
        return list(self.runner.service_sys_path or sys.path)

    def rejected(self, outcome: Outcome, path: Path) -> None:
        pass  # the service's plugins hear of what reached its registry

    def deliver(self, data: bytes, path: Path, outcome: Outcome) -> None:
        """Apply through the serving processes; ``Shortage`` when they ran short of a resource.

        A process that could not take the patch for want of a resource (its
        journal's disk full) answers ``SHORTAGE`` and changed nothing: the
        pipeline keeps the drop, first in line, and tries it again.
        """
        answer = on_loop(
            self.runner, lambda: self.runner.submit_patch(path.name, str(path), data, outcome.who)
        )
        if answer.get("outcome") == SHORTAGE:
            raise Shortage(str(answer.get("resource")), str(answer.get("reason")))
        outcome.notified = True
        self._fill(outcome, answer)

    def deliver_bundle(self, path: Path, outcome: Outcome) -> None:
        """Check and unpack a baseline bundle, then restart the service onto it."""
        release = self._unpack(path, outcome)
        if release is None:
            return
        answer = on_loop(
            self.runner, lambda: self.runner.submit_baseline(path.name, release, outcome.who)
        )
        if answer.get("outcome") == SHORTAGE:
            raise Shortage(str(answer.get("resource")), str(answer.get("reason")))
        self._fill(outcome, answer)

    def _unpack(self, path: Path, outcome: Outcome) -> Release | None:
        """The bundle's release, unpacked; ``None`` when it runs already. Refusals raise."""
        with self.staging.directory() as staged:
            source = staged / path.name
            if not stat.S_ISDIR(path.lstat().st_mode):
                # Read once: the signature, the checks and the unpacking see these bytes.
                read = read_patch_file(path, max_bytes=MAX_BUNDLE_BYTES, owners={os.geteuid()})
                outcome.ino = (read.ino, read.dev)
                outcome.sha256 = origin = hashlib.sha256(read.data).hexdigest()
                if self.checks.require_signature:
                    signature = read_signature(path, owners={os.geteuid()})
                    outcome.key_id = verify_signature(
                        read.data, signature, self.checks.trusted_keys, name=path.name
                    )
                with short_of("staging it to be checked"):
                    source.write_bytes(read.data)
            else:
                read_bundle(path)  # no links, nothing escaping: safe to copy
                # Copied once: the signature, the checks and the unpacking see the copy.
                with short_of("staging it to be checked"):
                    copy_tree(path, source)
                manifest = bundle_digest(source)
                origin = hashlib.sha256(manifest).hexdigest()
                if self.checks.require_signature:
                    signature = read_signature(path, owners={os.geteuid()})
                    outcome.key_id = verify_signature(
                        manifest,
                        signature,
                        self.checks.trusted_keys,
                        name=path.name,
                        kind="bundle",
                    )
            bundle = read_bundle(source)
            outcome.version = bundle.version
            current = self.runner.baseline
            if current is not None and Version(bundle.version) <= Version(current):
                if Version(bundle.version) == Version(current):
                    outcome.outcome = "unchanged"
                    outcome.reason = f"baseline {current} is already running"
                    return None
                msg = (
                    f"baseline {bundle.version} is not newer than the running baseline "
                    f"{current}; publish the new code under a newer version"
                )
                raise VerificationFailed(msg, patch=bundle.version)
            with short_of(f"unpacking it into {self.releases}"):
                return unpack_bundle(source, bundle, self.releases, origin=origin)

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

    # -- the answers of the serving processes

    def check(self, data: bytes, path: Path, outcome: Outcome) -> dict[str, Any]:
        """``Registry.check`` in every serving process: hot if hot in every worker."""
        answers = on_loop(self.runner, lambda: self._check_everywhere(path, data))
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
            result["workers"] = [
                _worker(a, "hot", "reasons", "level", "level_size") for a in answers
            ]
        return result

    def check_bundle(self, path: Path, outcome: Outcome) -> dict[str, Any]:
        """A baseline bundle is never hot; a bad one raises ``VerificationFailed``."""
        version = read_bundle(path).version
        return {
            "ok": True,
            "version": version,
            "hot": False,
            "reasons": [
                f"baseline bundle {version} replaces the code: it goes in through a restart"
            ],
            "targets": [],
            "modes": {},
        }

    def rollback(self, to: str | None, who: str) -> dict[str, Any]:
        answers = self._ask_all({"op": "rollback", "to": to, "who": who}, "rolled-back")
        first = answers[0]
        result: dict[str, Any] = {
            "ok": all(a.get("ok") for a in answers),
            "versions": first.get("versions", []),
            "level": first.get("level", []),  # its top, and how many it holds
            "level_size": first.get("level_size", len(first.get("level") or [])),
        }
        failed = [a for a in answers if not a.get("ok")]
        if failed:
            result["error"] = self._failures(failed, len(answers))
            types = {a.get("error_type") for a in failed}
            result["error_type"] = types.pop() if len(types) == 1 else "Error"
        if self._fleet:
            result["workers"] = [
                _worker(a, "versions", "level", "level_size", "error") for a in answers
            ]
        return result

    def show(self, version: str) -> dict[str, Any]:
        """The applied patch ``version`` from the journal of the first worker that runs it.

        The serving process keeps each patch's text and sha256 in its journal;
        the sha256 it reported to the supervisor must match it. With
        ``--workers N``, ``workers`` lists the workers running that content.
        """
        wanted = Version(version)
        sha = next((s for v, s in self.runner.applied_patches if Version(v) == wanted), None)
        baseline = self.runner.baseline or "0"
        if sha is None:
            raise not_applied(version, self.level(), baseline)
        answer: dict[str, Any] | None = None
        running: list[int] = []
        for member in self.runner.members:
            entry, history = self._journal_entry(member, wanted)
            if entry is None or entry.sha256 != sha:
                continue
            running.append(member.index or 0)
            if answer is None:
                text = PatchText(
                    entry.version,
                    entry.sha256,
                    entry.path,
                    entry.text,
                    entry.summary,
                    peek_targets(entry.text.encode()),
                )
                answer = show_answer(text, baseline, history)
        if answer is None:
            msg = (
                f"patch {version} (sha256 {sha[:16] if sha else '?'}) is applied, but no "
                "worker's journal holds that content; see the service's log for journal errors"
            )
            raise JournalError(msg, patch=version)
        if self._fleet:
            answer["workers"] = running
        return answer

    def _journal_entry(
        self, member: Supervisor, wanted: Version
    ) -> tuple[JournalEntry | None, list[dict[str, Any]]]:
        """The journal entry of version ``wanted`` in ``member``'s journal, and its history."""
        path = member.config.journal
        state = Journal(path).read() if path is not None else None
        if state is None:
            return None, []
        entry = next((e for e in state.level if Version(e.version) == wanted), None)
        return entry, state.history

    def history(self) -> dict[str, Any]:
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

    @property
    def _fleet(self) -> bool:
        """Answers name each worker: the runner is a fleet of several."""
        return len(self.runner.members) > 1

    def _ask_all(self, body: dict[str, Any], reply: str) -> list[dict[str, Any]]:
        """``body`` asked of every serving process at once; an answer per worker, in order."""

        async def one(member: Supervisor) -> dict[str, Any]:
            try:
                answer = await member.ask(dict(body), reply, ASK_TIMEOUT)
            except (ChildExited, TimeoutError) as exc:
                answer = {"ok": False, "error": f"no answer: {exc}", "error_type": "Error"}
            return {"index": member.index, **answer}

        async def everyone() -> list[dict[str, Any]]:
            return list(await asyncio.gather(*(one(m) for m in self.runner.members)))

        return on_loop(self.runner, everyone)

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

        return list(await asyncio.gather(*(one(m) for m in self.runner.members)))

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


def on_loop(runner: Runner, work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work()`` on the runner's event loop and wait for its result (from another thread)."""
    loop = runner.loop
    if loop is None:
        msg = "the supervisor is not running (no event loop yet)"
        raise RuntimeError(msg)

    async def run() -> T:
        return await work()

    return asyncio.run_coroutine_threadsafe(run(), loop).result()


def _worker(answer: dict[str, Any], *keys: str) -> dict[str, Any]:
    """One worker's part of an answer: its index, ``ok`` and ``keys``."""
    return {
        "index": answer.get("index"),
        "ok": bool(answer.get("ok")),
        **{k: answer.get(k) for k in keys if k in answer},
    }
