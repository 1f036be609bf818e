"""``install()`` and ``Agent``'s life cycle: the folder's lock, the pidfile, the socket, plugins.

The agent runs beside the service, in background threads: the service's own
main loop does not change. It replays the journal, then serves the control
socket (``hotpatch.agent._commands``) and watches the folder (``hotpatch.agent._folder``).
Every patch -- dropped into the folder or sent with ``hotpatch apply`` -- goes
through one pipeline (``hotpatch.agent._pipeline``): read once, signature,
verification child, load, apply. The outcome (applied, unchanged, rejected,
pending) is logged in one line and, for a folder drop, filed with its
``NAME.result.json``.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TypedDict

from hotpatch._loader import DEFAULT_MAX_BYTES
from hotpatch._plugins import PluginHost
from hotpatch._registry import Registry
from hotpatch.agent._commands import AgentCommands
from hotpatch.agent._control import ControlServer
from hotpatch.agent._folder import SIGNATURE_WAIT_S, Folder
from hotpatch.agent._names import LOCKFILE_NAME, PIDFILE_NAME, SOCKET_NAME, STAGING
from hotpatch.agent._outcome import check_folder, write_result
from hotpatch.agent._pipeline import PathLike, TrustedKeys

__all__ = ["Agent", "install"]

log = logging.getLogger("hotpatch")


class _Options(TypedDict):
    """What ``install()`` passes on alike to an ``Agent`` and a ``WorkerAgent``."""

    journal: PathLike | None
    plugins: list[object]
    require_signature: bool
    trusted_keys: TrustedKeys | None
    verify_timeout: float
    verify: bool
    max_bytes: int
    audit_log: PathLike | None
    entry_points: bool


def install(
    baseline: str,
    *,
    watch: PathLike | None = None,
    journal: PathLike | None = None,
    plugins: Iterable[object] = (),
    require_signature: bool = False,
    trusted_keys: TrustedKeys | None = None,
    control_socket: PathLike | bool | None = None,
    verify_timeout: float = 10.0,
    verify: bool = True,
    max_bytes: int = DEFAULT_MAX_BYTES,
    audit_log: PathLike | None = None,
    entry_points: bool = True,
    workers: bool = False,
) -> Agent:
    """Start a hotpatch agent in the background of this process and return it.

    It replays ``journal`` (the level survives restarts), files away what is
    already in ``watch`` (catch-up, in version order), then watches the folder
    and serves the control socket. ``control_socket``: a path; ``None`` means
    ``<watch>/.hotpatch.sock`` when watching (none otherwise); ``False``, none.
    Stop it with ``agent.stop()``, or use it as a context manager.

    ``workers=True``: this process is one of several worker processes sharing
    ``watch`` (gunicorn, uvicorn --workers): each drop is verified once and
    applied in every worker, with one result file (see ``hotpatch.agent.fanout._agent``); the
    folder's owner records the level in ``journal`` (default
    ``<watch>/.workers/journal.json``), which a worker that starts alone replays.
    """
    options = _Options(
        journal=journal,
        plugins=list(plugins),
        require_signature=require_signature,
        trusted_keys=trusted_keys,
        verify_timeout=verify_timeout,
        verify=verify,
        max_bytes=max_bytes,
        audit_log=audit_log,
        entry_points=entry_points,
    )
    if workers:
        # Imported here: _fanout builds on this module.
        from hotpatch.agent.fanout._agent import WorkerAgent  # noqa: PLC0415

        if watch is None or control_socket not in (None, True):
            msg = (
                "install(workers=True) needs watch=DIR and takes no control_socket: each "
                "worker serves DIR/.workers/<pid>.sock (the journal defaults to "
                "DIR/.workers/journal.json)"
            )
            raise ValueError(msg)
        return WorkerAgent(baseline, watch=watch, **options).start()
    return Agent(baseline, watch=watch, control_socket=control_socket, **options).start()


class Agent(AgentCommands):
    """A running hotpatch agent: a ``Registry``, maybe a watched folder and a control socket."""

    def __init__(
        self,
        baseline: str,
        *,
        watch: PathLike | None = None,
        journal: PathLike | None = None,
        plugins: Iterable[object] = (),
        require_signature: bool = False,
        trusted_keys: TrustedKeys | None = None,
        control_socket: PathLike | bool | None = None,
        verify_timeout: float = 10.0,
        verify: bool = True,
        max_bytes: int = DEFAULT_MAX_BYTES,
        audit_log: PathLike | None = None,
        entry_points: bool = True,
    ):
        super().__init__(
            baseline,
            require_signature=require_signature,
            trusted_keys=trusted_keys,
            verify_timeout=verify_timeout,
            verify=verify,
            max_bytes=max_bytes,
        )
        self.watch = Path(watch).absolute() if watch is not None else None
        self.journal = Path(journal).absolute() if journal is not None else None
        self.socket = self._socket_path(control_socket)
        self._plugins = list(plugins)
        self._audit_log = Path(audit_log) if audit_log is not None else None
        self._entry_points = entry_points
        self._folder = None
        self._server: ControlServer | None = None
        self._own_staging = False
        self._started = False
        self._running = False
        self._pidfile_written = False
        self._lock_fd: int | None = None
        self._who_folder = f"folder:{self.watch}" if self.watch else "folder"

    # -- life cycle -----------------------------------------------------------------

    def start(self) -> Agent:
        """Replay the journal, open the folder and the socket, catch up, then watch."""
        if not self._first_start():
            return self
        try:
            if self.watch is not None:
                check_folder(self.watch)  # refuse an unsafe folder before anything runs
                self._lock_folder(self.watch)
            self.registry = self._make_registry()
            if self.registry is not None and self.registry.journal_report:
                log.info("%s", self.registry.journal_report)
            self._open_staging()
            if self.socket is not None:
                self._server = ControlServer(self.socket, self.handle)
                self._server.start()
            if self.watch is not None:
                self._watch_folder(self.watch)
        except BaseException:
            self.stop()
            raise
        self._running = True
        log.info(
            "hotpatch agent started: baseline %s, level %s, folder %s, socket %s",
            self.baseline,
            ", ".join(self._level()) or "-",
            self.watch or "-",
            self.socket or "-",
        )
        return self

    def _first_start(self) -> bool:
        """Mark this agent started: ``False`` when it runs already (``start()`` is idempotent)."""
        if self._started:
            if self.running:
                return False
            msg = "this agent was stopped; start a new one (hotpatch.install(...))"
            raise RuntimeError(msg)
        self._started = True
        return True

    def _watch_folder(self, folder: Path) -> None:
        """Write the pidfile, then watch ``folder`` for drops."""
        self._write_pidfile(folder)
        self._folder = Folder(
            folder,
            self._process_drop,
            signature_wait=SIGNATURE_WAIT_S if self.require_signature else 0.0,
            max_bytes=self.max_bytes,
        )
        self._folder.start()

    def stop(self) -> None:
        """Stop watching and serving; the patches applied stay applied. Idempotent.

        A drop being processed is finished first (its verification child can take
        up to ``verify_timeout``); drops still queued wait in the folder for the
        next start.
        """
        self._running = False
        if self._folder is not None:
            self._folder.stop()
            self._folder = None
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self.watch is not None and self._pidfile_written:
            with contextlib.suppress(OSError):
                (self.watch / PIDFILE_NAME).unlink()
            self._pidfile_written = False
        if self._staging is not None and self._own_staging:
            shutil.rmtree(self._staging, ignore_errors=True)
        self._staging = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the folder for the next agent
            self._lock_fd = None

    def __enter__(self) -> Agent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        level = list(self.registry.level) if self.registry else []
        return f"<Agent baseline={self.baseline} level={level} watch={self.watch}>"

    @property
    def running(self) -> bool:
        """Started and not stopped."""
        return self._running

    # -- what a subclass (the supervisor's pipeline) replaces --------------------------

    def _make_registry(self) -> Registry | None:
        """The registry patches are applied to; ``None`` when they are applied elsewhere."""
        return Registry(self.baseline, journal=self.journal, plugins=self._all_plugins())

    def _socket_path(self, option: PathLike | bool | None) -> Path | None:
        """``None``: the default when watching; ``True``: the default; ``False``: none."""
        if option is False or (option is None and self.watch is None):
            return None
        if option is True or option is None:
            if self.watch is None:
                msg = "control_socket=True needs watch=DIR (the socket goes there); give a path"
                raise ValueError(msg)
            return self.watch / SOCKET_NAME
        return Path(option).absolute()

    def _all_plugins(self) -> list[object]:
        explicit = list(self._plugins)
        # The built-in plugins are imported when asked for, by name: they import
        # hotpatch (a cycle at import time), and type checkers see them under
        # their source directory, plugins/, rather than their installed name.
        if self._audit_log is not None:
            audit = importlib.import_module("hotpatch_plugins.audit")
            explicit.append(audit.AuditLog(self._audit_log))
        if self.require_signature:
            signature = importlib.import_module("hotpatch_plugins.signature")
            explicit.append(signature.SignatureCheck(self.trusted_keys))
        if not self._entry_points:
            return explicit
        try:
            host = PluginHost(explicit, entry_points=True)
        except Exception:
            log.exception("loading plugins from the 'hotpatch' entry points failed; skipping them")
            return explicit
        # In pluggy's registration order (entry points, then explicit ones).
        return [plugin for _, plugin in host.manager.list_name_plugin() if plugin is not None]

    def _open_staging(self) -> None:
        if self.watch is not None:
            self._staging = self.watch / STAGING
            for leftover in self._staging.iterdir():  # from a crash: never reused
                if leftover.is_dir() and not leftover.is_symlink():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)
        else:
            self._staging = Path(tempfile.mkdtemp(prefix="hotpatch-staging-"))
            self._own_staging = True

    def _lock_folder(self, folder: Path) -> None:
        """Hold ``.hotpatch.lock`` (flock) while running: one agent per folder."""
        fd = os.open(
            folder / LOCKFILE_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            owner = "another agent"
            with contextlib.suppress(OSError, ValueError, AttributeError):
                pid = json.loads((folder / PIDFILE_NAME).read_bytes()).get("pid")
                owner = f"another agent (pid {pid})"
            msg = (
                f"patch folder {folder} is already watched by {owner}; stop it first, "
                "or give this service a folder of its own"
            )
            raise FileExistsError(msg) from None
        self._lock_fd = fd

    def _write_pidfile(self, folder: Path) -> None:
        write_result(
            folder / PIDFILE_NAME,
            {
                "pid": os.getpid(),
                "socket": str(self.socket) if self.socket else None,
                "baseline": self.baseline,
                "folder": str(folder),
            },
        )
        self._pidfile_written = True
