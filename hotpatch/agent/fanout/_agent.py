"""``install(..., workers=True)``: one watched folder shared by the processes of a pre-fork server.

Under gunicorn or uvicorn every worker process imports the app, so every one
calls ``install()``. Each worker serves its own control socket,
``DIR/.workers/<pid>.sock`` (mode 0600, peer uid checked), which is how the
others find it. Exactly one worker at a time *owns* the folder (the flock on
``.hotpatch.lock``, taken without blocking); the others try again every
``OWNER_RETRY_S``, so when the owner exits another one takes over.

The owner does the once-per-drop work (read once, signature, verification
child), applies the verified bytes itself, then sends them with their sha256
to every other live worker (the ``deliver`` command, accepted only from this
uid): ``hotpatch.agent.fanout._owner``. When every worker applied the patch, the
drop is ``applied``; when one refused, the workers that applied it roll it
back and the drop is ``rejected``. The single ``NAME.result.json`` lists each
worker's result. A socket whose process is gone is removed, never waited on
(``hotpatch.agent.fanout._peers``).

A worker that starts later (a replaced worker) copies the level of a live
worker (``hotpatch.agent.fanout._worker``) -- the owner's when there is one --
before ``install()`` returns, so
it serves patched code from its first request. Workers start one at a time
(the flock on ``.workers/start.lock``), so a peer a new worker sees has
finished starting. A worker that starts with no live peer (the whole server
restarted) replays the group's journal instead (``hotpatch.agent.fanout._journal``):
the level survives a restart of every worker.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hotpatch._errors import JournalError
from hotpatch._journal import Journal
from hotpatch._loader import DEFAULT_MAX_BYTES
from hotpatch._registry import Registry
from hotpatch.agent._agent import Agent
from hotpatch.agent._control import ControlServer, request
from hotpatch.agent._names import LOCKFILE_NAME, PIDFILE_NAME, WORKERS_DIR
from hotpatch.agent._outcome import Outcome, check_folder, write_result
from hotpatch.agent._pipeline import PathLike, TrustedKeys
from hotpatch.agent.fanout._journal import JOURNAL_NAME, GroupJournal
from hotpatch.agent.fanout._owner import Fanout
from hotpatch.agent.fanout._peers import (
    PEER_TIMEOUT_S,
    ask_owner,
    call,
    other_workers,
    start_lock,
    workers_dir,
)
from hotpatch.agent.fanout._worker import accept, catch_up, level_with_texts, undo

__all__ = ["WorkerAgent"]

log = logging.getLogger("hotpatch")

OWNER_RETRY_S = 0.5


class WorkerAgent(Agent):
    """One worker of a pre-fork server: its own socket; the folder while it owns the lock."""

    def __init__(
        self,
        baseline: str,
        *,
        watch: PathLike,
        journal: PathLike | None = None,
        plugins: tuple[object, ...] | list[object] = (),
        require_signature: bool = False,
        trusted_keys: TrustedKeys | None = None,
        verify_timeout: float = 10.0,
        verify: bool = True,
        max_bytes: int = DEFAULT_MAX_BYTES,
        audit_log: PathLike | None = None,
        entry_points: bool = True,
        owner_retry: float = OWNER_RETRY_S,
    ):
        folder = Path(watch).absolute()
        super().__init__(
            baseline,
            watch=folder,
            journal=None,
            plugins=plugins,
            require_signature=require_signature,
            trusted_keys=trusted_keys,
            control_socket=folder / WORKERS_DIR / f"{os.getpid()}.sock",
            verify_timeout=verify_timeout,
            verify=verify,
            max_bytes=max_bytes,
            audit_log=audit_log,
            entry_points=entry_points,
        )
        self.owner_retry = owner_retry
        self.journal = (
            Path(journal).absolute() if journal is not None else folder / WORKERS_DIR / JOURNAL_NAME
        )
        self._journal = GroupJournal(self.journal, self.baseline)
        self._plugin_objects: list[object] | None = None
        self._stopping = threading.Event()
        self._retry: threading.Thread | None = None
        self._fanout = Fanout(self, folder, self._journal)

    # -- life cycle ---------------------------------------------------------------------

    @property
    def owner(self) -> bool:
        """Does this worker own the folder (process the drops) right now?"""
        return self._lock_fd is not None

    def start(self) -> WorkerAgent:
        """Register this worker, copy the level of a live one, then own the folder or wait."""
        if not self._first_start():
            return self
        assert self.watch is not None
        assert self.socket is not None
        try:
            check_folder(self.watch)
            workers = workers_dir(self.watch)
            with start_lock(workers):  # one worker at a time, to the end
                peers = self._peers()
                # Alone: the whole server (re)starts, the journal has the level. Else the
                # live workers have it (they finished starting: they held this lock).
                self.registry = self._make_registry() if peers else self._replayed()
                self._server = ControlServer(self.socket, self.handle)
                with self._lock:  # deliveries wait until this worker has caught up
                    self._server.start()
                    if peers and not catch_up(self, self.watch, self._journal):
                        log.warning(
                            "worker %d: no live worker gave its level; replaying the journal",
                            os.getpid(),
                        )
                        self.registry = self._replayed()
                self._try_to_own()
            self._retry = threading.Thread(
                target=self._retry_loop, name="hotpatch-workers owner", daemon=True
            )
            self._retry.start()
        except BaseException:
            self.stop()
            raise
        self._running = True
        log.info(
            "hotpatch worker %d started: baseline %s, level %s, folder %s (%s)",
            os.getpid(),
            self.baseline,
            ", ".join(self._level()) or "-",
            self.watch,
            "owner" if self.owner else "waiting to own it",
        )
        return self

    def _make_registry(self) -> Registry:
        """A registry at the baseline (this worker copies its level from a live one)."""
        return self._registry_with(None)

    def _registry_with(self, journal: Path | None) -> Registry:
        if self._plugin_objects is None:
            self._plugin_objects = self._all_plugins()
        return Registry(self.baseline, journal=journal, plugins=self._plugin_objects)

    def _replayed(self) -> Registry:
        """A registry at the journal's level (the baseline when it cannot be replayed)."""
        return self._journal.replay(self._registry_with)

    def stop(self) -> None:
        """Stop owning and serving; the patches applied stay applied. Idempotent."""
        self._stopping.set()
        if self._retry is not None and self._retry is not threading.current_thread():
            self._retry.join()
        self._retry = None
        super().stop()

    def _retry_loop(self) -> None:
        while not self._stopping.wait(self.owner_retry):
            try:
                self._try_to_own()
            except Exception:
                log.exception("worker %d: taking over the patch folder failed", os.getpid())

    def _try_to_own(self) -> None:
        """Take the folder's lock if it is free, and start watching it."""
        if self.owner or self._stopping.is_set():
            return
        assert self.watch is not None
        fd = os.open(
            self.watch / LOCKFILE_NAME,
            os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return
        with self._lock:
            if self._stopping.is_set():
                os.close(fd)
                return
            self._lock_fd = fd
            assert self.registry is not None
            self._journal.take_over(self.registry, who=f"worker:{os.getpid()} (took the folder)")
            self._open_staging()
            self._watch_folder(self.watch)
        log.info("worker %d now owns the patch folder %s", os.getpid(), self.watch)

    def _write_pidfile(self, folder: Path) -> None:
        """``.hotpatch.json``: the owner's socket (``hotpatch status --folder`` talks to it)."""
        write_result(
            folder / PIDFILE_NAME,
            {
                "pid": os.getpid(),
                "socket": str(self.socket),
                "baseline": self.baseline,
                "folder": str(folder),
                "workers": str(folder / WORKERS_DIR),
            },
        )
        self._pidfile_written = True

    def _peers(self) -> dict[int, Path]:
        assert self.watch is not None
        return other_workers(self.watch)

    # -- the owner fans a verified patch out (hotpatch.agent.fanout._owner) ------------------------

    def _deliver(self, data: bytes, path: Path, outcome: Outcome) -> None:
        """Apply the verified bytes in every live worker (``Fanout.deliver``): the owner only."""
        if not self.owner:  # `hotpatch apply` sent to another worker's socket
            msg = (
                f"worker {os.getpid()} does not own the patch folder {self.watch}, so it cannot "
                "record the patch in the workers' journal; send it to the owner "
                f"(hotpatch apply --folder {self.watch} ...)"
            )
            raise JournalError(msg)
        self._fanout.deliver(data, path, outcome)

    # -- what every worker answers ----------------------------------------------------------

    def handle(self, request: dict[str, Any], peer_uid: int) -> dict[str, Any]:
        cmd = request.get("cmd") if isinstance(request, dict) else None
        local: dict[str, Callable[[dict[str, Any], str], dict[str, Any]]] = {
            "deliver": self._handle_deliver,
            "undo": self._handle_undo,
            "patches": lambda _r, _w: level_with_texts(self, self._journal),
            "worker": lambda _r, _w: self._worker_state(),
        }
        command = local.get(cmd) if isinstance(cmd, str) else None
        if command is None:
            return super().handle(request, peer_uid)
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

    def _handle_deliver(self, request: dict[str, Any], who: str) -> dict[str, Any]:
        record = accept(self, request, who=str(request.get("who") or who))
        record["ok"] = record["outcome"] in ("applied", "unchanged")
        return record

    def _handle_undo(self, request: dict[str, Any], who: str) -> dict[str, Any]:
        return undo(self, request.get("version"), who)

    def _handle_apply(self, request: dict[str, Any], who: str) -> dict[str, Any]:
        """``hotpatch apply`` sent to a worker that does not own the folder: to the owner."""
        if not self.owner:
            forwarded = self._to_owner(request)
            if forwarded is not None:
                return forwarded
        return super()._handle_apply(request, who)

    def _handle_history(self) -> dict[str, Any]:
        """The group's history, as the journal records it across owners and restarts."""
        with contextlib.suppress(JournalError):
            state = Journal(self.journal).read() if self.journal is not None else None
            if state is not None and state.baseline == self.baseline:
                return {"ok": True, "history": state.history}
        return super()._handle_history()

    def _worker_state(self) -> dict[str, Any]:
        return {
            "ok": True,
            "pid": os.getpid(),
            "baseline": self.baseline,
            "level": list(self._level()),
            "owner": self.owner,
            "state": "owner" if self.owner else "serving",
        }

    # -- status and rollback across the workers -----------------------------------------

    def status(self) -> dict[str, Any]:
        """The agent's status, plus ``workers``: each live worker's pid, level and ownership."""
        answer = super().status()
        answer["journal_report"] = self._journal.report
        answer["journal_error"] = self._journal.problem
        workers = [self._worker_state()]
        for _pid, sock in sorted(self._peers().items()):
            try:
                state = request(sock, {"cmd": "worker"}, timeout=PEER_TIMEOUT_S)
            except OSError:
                continue
            workers.append(state)
        # The keys `hotpatch status` shows for the workers of `hotpatch run --workers N` too.
        answer["workers"] = [
            {"index": i, **{k: w.get(k) for k in ("pid", "state", "baseline", "level", "owner")}}
            for i, w in enumerate(workers)
        ]
        return answer

    def _handle_rollback(self, request: dict[str, Any], who: str) -> dict[str, Any]:
        """Roll back here, then bring every other worker to the same level; the owner
        records it in the journal (another worker passes the request to the owner)."""
        assert self.registry is not None
        level_now = self.registry.level
        if request.get("local") and request.get("to") == (level_now[-1:] or (self.baseline,))[0]:
            return {"ok": True, "versions": [], "level": list(level_now)}  # there already
        if not request.get("local") and not self.owner:
            forwarded = self._to_owner(request)
            if forwarded is not None:
                return forwarded
        with self._lock:  # no drop is delivered meanwhile
            return self._group_rollback(request, who)

    def _to_owner(self, request: dict[str, Any]) -> dict[str, Any] | None:
        """The owner's answer to ``request``; ``None`` when there is no owner to ask."""
        assert self.watch is not None
        return ask_owner(self.watch, request)

    def _group_rollback(self, request: dict[str, Any], who: str) -> dict[str, Any]:
        answer = super()._handle_rollback(request, who)
        if not answer.get("ok") or request.get("local"):
            return answer
        level = answer["level"]
        to = level[-1] if level else self.baseline
        # The keys `hotpatch rollback` shows for the workers of `hotpatch run --workers N` too.
        results = [
            {"index": os.getpid(), "ok": True, "versions": answer["versions"], "level": level}
        ]
        for pid, sock in sorted(self._peers().items()):
            result = call(pid, sock, {"cmd": "rollback", "to": to, "local": True})
            if result is None:
                continue
            fields = ("ok", "versions", "level", "error")
            results.append({"index": pid, **{k: result.get(k) for k in fields}})
        answer["workers"] = results
        if answer["versions"] and self.owner:
            error = self._fanout.record("rollback", ", ".join(answer["versions"]), who)
            if error is not None:
                answer["journal_error"] = error
        return answer
