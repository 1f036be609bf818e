"""One worker of a pre-fork server, running: its socket, its level, and the folder while it owns it.

Under gunicorn or uvicorn every worker process imports the app, so every one
calls ``install(workers=True)``. Each worker serves its own control socket,
``DIR/.workers/<pid>.sock`` (mode 0600, peer uid checked), which is how the
others find it. Exactly one worker at a time *owns* the folder (the flock on
``.hotpatch.lock``, taken without blocking); the others try again every
``OWNER_RETRY_S``, so when the owner exits another one takes over
(``hotpatch.agent.fanout._ownership``).

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
before ``install()`` returns, so it serves patched code from its first request.
Workers start one at a time (the flock on ``.workers/start.lock``), so a peer a
new worker sees has finished starting. A worker that starts with no live peer
(the whole server restarted) replays the group's journal instead
(``hotpatch.agent.fanout._journal``): the level survives a restart of every worker.

The folder deleted and made again, or replaced by another directory renamed
into its place: every worker makes its socket again in the new ``.workers/``;
the owner takes the new folder's lock before any drop in it is taken (or hands
over to a worker that took it first), writes the group's journal there if it
was in the folder, and sends the next patch once every live worker is back
(``hotpatch.agent.fanout._ownership``, ``_peers.Roster``). While the folder is
unsafe, the owner's guard says so once at ERROR and no drop is taken.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from hotpatch._registry import Registry
from hotpatch._results import level_text
from hotpatch.agent._control_server import ControlServer
from hotpatch.agent._guard import check_folder, folder_problem
from hotpatch.agent._lifecycle import FolderWatch
from hotpatch.agent._local import LocalApplier
from hotpatch.agent._names import WORKERS_DIR
from hotpatch.agent._outcome_log import OutcomeLog
from hotpatch.agent._pipeline import DropPipeline
from hotpatch.agent._settings import Settings
from hotpatch.agent._staging import Staging
from hotpatch.agent._verify import library_modules
from hotpatch.agent._vital import VitalCheck
from hotpatch.agent.fanout._applier import FanoutApplier
from hotpatch.agent.fanout._commands import WorkerCommands
from hotpatch.agent.fanout._journal import JOURNAL_NAME, GroupJournal
from hotpatch.agent.fanout._owner import Fanout
from hotpatch.agent.fanout._ownership import Ownership
from hotpatch.agent.fanout._peers import (
    Roster,
    announce,
    other_workers,
    register,
    request_bytes,
    start_lock,
    usable,
    workers_dir,
)
from hotpatch.agent.fanout._worker import Replica

__all__ = ["Worker", "worker_paths"]

log = logging.getLogger("hotpatch")


def worker_paths(folder: Path, journal: Path | None) -> tuple[Path, Path]:
    """The group's journal (``DIR/.workers/journal.json`` by default) and this worker's socket."""
    workers = folder / WORKERS_DIR
    return (
        journal if journal is not None else workers / JOURNAL_NAME,
        workers / f"{os.getpid()}.sock",
    )


class Worker:
    """A running worker: registered, at the group's level, owning the folder or waiting to.

    ``settings`` holds the shared folder, the group's journal and this worker's
    socket (``worker_paths``). What the group shares besides the drops -- the
    lock, the pidfile, ``.workers/``, the outcomes -- is in ``settings.state``
    (the folder itself, or the state directory that keeps it read-only).
    """

    def __init__(self, settings: Settings) -> None:
        folder, journal, socket = settings.state, settings.journal, settings.socket
        if settings.watch is None or folder is None or journal is None or socket is None:
            msg = "a worker needs the shared folder, the group's journal and its own socket"
            raise ValueError(msg)
        self.settings = settings
        self.journal = GroupJournal(journal, settings.baseline)
        self._watch: FolderWatch | None = None
        lock = threading.RLock()  # one patch operation at a time, drops and peers alike
        with contextlib.ExitStack() as stack:
            check_folder(settings.watch, state=settings.state_dir)
            self._plugins = settings.plugins.load(settings.checks)
            with start_lock(workers_dir(folder)):  # one worker at a time, to the end
                peers = other_workers(folder)
                # Alone: the whole server (re)starts, the journal has the level. Else the
                # live workers have it (they finished starting: they held this lock).
                # After each apply: can this worker still file and answer its socket?
                scratch = Path(tempfile.mkdtemp(prefix="hotpatch-vital-"))
                stack.callback(shutil.rmtree, scratch, ignore_errors=True)
                vital = VitalCheck(
                    scratch,
                    socket,
                    timeout=settings.vital_timeout,
                    ask={"cmd": "worker", "brief": True},
                )
                self._vital = vital
                local = LocalApplier(
                    self._registry(None) if peers else self._replayed(), vital=vital
                )
                self.replica = Replica(local, lock)
                self._lock = lock
                self._registering = threading.Lock()
                self.roster = Roster(folder)
                self.ownership = Ownership(
                    folder, take=self._take, guard=lock, keep=self._keep, ready=self._ready
                )
                fanout = Fanout(
                    self.replica,
                    folder,
                    self.journal,
                    self.roster,
                    deliver_timeout=settings.deliver_timeout,
                )
                applier = FanoutApplier(local, fanout, self.ownership, self.journal)
                self.pipeline = DropPipeline(
                    applier,
                    settings.checks,
                    Staging(folder),
                    lock=lock,
                    outcome_log=OutcomeLog(folder),
                )
                self.commands = WorkerCommands(
                    settings,
                    pipeline=self.pipeline,
                    replica=self.replica,
                    journal=self.journal,
                    ownership=self.ownership,
                    pending=self._pending,
                    unsafe=lambda: self._watch.unsafe if self._watch is not None else None,
                    waiting=lambda: self._watch.waiting if self._watch is not None else None,
                    joined=self.roster.look,
                )
                with lock:  # deliveries wait until this worker has caught up
                    self._server = stack.enter_context(
                        ControlServer(
                            socket,
                            self.commands.handle,
                            max_request_bytes=request_bytes(settings.checks.max_bytes),
                        )
                    )
                    vital.served_by(self._server)
                    stack.callback(vital.close)
                    if peers and not self.replica.catch_up(folder, self.journal):
                        log.warning(
                            "worker %d: no live worker gave its level; replaying the journal",
                            os.getpid(),
                        )
                        local.registry = self._replayed()
                stack.enter_context(self.ownership)
                self.ownership.try_to_own()
            self.ownership.start()
            announce(folder)  # the others know of this worker from now on (Roster)
            self.commands.started = True
            self._stack = stack.pop_all()
        log.info(
            "hotpatch worker %d started: baseline %s, level %s, folder %s (%s)",
            os.getpid(),
            settings.baseline,
            level_text(local.level(), settings.baseline) if local.level() else "-",
            settings.watch,
            "owner" if self.ownership.owner else "waiting to own it",
        )

    @property
    def registry(self) -> Registry:
        return self.replica.local.registry

    def close(self) -> None:
        """Stop owning and serving; the patches applied stay applied."""
        self._vital.stopping()  # a check its socket's closing cuts short is not the patch's
        self._stack.close()

    def handle(self, request: dict[str, Any], peer_uid: int) -> dict[str, Any]:
        return self.commands.handle(request, peer_uid)

    def status(self) -> dict[str, Any]:
        return self.commands.status()

    # -- the parts ----------------------------------------------------------------------

    def _registry(self, journal: Path | None) -> Registry:
        return Registry(
            self.settings.baseline,
            journal=journal,
            plugins=self._plugins,
            migration_timeout=self.settings.migration_timeout,
        )

    def _replayed(self) -> Registry:
        """A registry at the journal's level (the baseline when it cannot be replayed)."""
        return self.journal.replay(self._registry)

    def _take(self, stack: contextlib.ExitStack[bool | None]) -> None:
        """Now the owner: record the running level, open staging, start the verifier, watch."""
        folder = self.settings.watch
        assert folder is not None  # a worker has a folder (checked when made)
        self.journal.take_over(self.registry, who=f"worker:{os.getpid()} (took the folder)")
        stack.enter_context(self.pipeline.staging)
        stack.enter_context(self.pipeline.verifying(warm=library_modules()))
        process = functools.partial(self.pipeline.process, who=f"folder:{folder}")
        watch = FolderWatch(
            folder,
            process,
            checks=self.settings.checks,
            pidfile=self._pidfile,
            state=self.settings.state_dir,
            retake=self._retake,
        )
        self._watch = stack.enter_context(watch)

    def _retake(self) -> str | None:
        """The folder was replaced: its lock, this worker's socket and the journal there."""
        refused = self.ownership.retake()
        if refused is None:
            self._register()
            with self._lock:  # what the old folder's journal recorded, in the new one
                self.journal.take_over(self.registry, who=f"worker:{os.getpid()} (new folder)")
        return refused

    def _register(self) -> bool:
        """This worker's socket made again if it went; by one thread at a time (the owner's
        guard and the retries both look)."""
        with self._registering:
            return register(self.ownership.folder, self._server)

    def _ready(self) -> bool:
        """May this worker take the folder over now? As at the first start: the folder
        safe, its outcome folders and staging made (no drop is taken from one that is not)."""
        watch = self.settings.watch
        assert watch is not None  # a worker has a folder (checked when made)
        return usable(self.ownership.folder) and (
            folder_problem(watch, first=True, state=self.settings.state_dir) is None
        )

    def _keep(self) -> None:
        """Every retry, in every worker: register again if the socket went with the folder
        (the owner writes the group's journal again too, if it was in ``.workers/``)."""
        if self._register() and self.ownership.owner:
            with self._lock:
                self.journal.take_over(self.registry, who=f"worker:{os.getpid()} (.workers/)")
        self.roster.look()

    def _pending(self) -> list[str]:
        return self._watch.pending if self._watch is not None else []

    def _pidfile(self) -> dict[str, Any]:
        """``.hotpatch.json``: the owner's socket (``hotpatch status --folder`` talks to it)."""
        state_dir = self.settings.state_dir
        return {
            "pid": os.getpid(),
            "socket": str(self.settings.socket),
            "baseline": self.settings.baseline,
            "folder": str(self.settings.watch),
            "workers": str(self.ownership.folder / WORKERS_DIR),
            "state_dir": str(state_dir) if state_dir else None,
        }
