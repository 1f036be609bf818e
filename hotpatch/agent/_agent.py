"""``install()`` and ``Agent``: the public face of an agent; it picks the parts it runs with.

The agent runs beside the service, in background threads: the service's own
main loop does not change. Started, it is a ``Solo`` (``hotpatch.agent._solo``:
alone on its folder) or, with ``workers=True``, a ``Worker``
(``hotpatch.agent.fanout._agent``: one of the processes of a pre-fork server).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from hotpatch._loader import DEFAULT_MAX_BYTES
from hotpatch._logging import show_log_lines
from hotpatch._registry import MIGRATION_TIMEOUT_S, Registry
from hotpatch.agent._names import SOCKET_NAME
from hotpatch.agent._settings import (
    Checks,
    PathLike,
    PluginChoice,
    Settings,
    deliver_timeout_of,
    vital_timeout_of,
)
from hotpatch.agent._signing import TrustedKeys
from hotpatch.agent._solo import Solo
from hotpatch.agent.fanout._agent import Worker, worker_paths

__all__ = ["Agent", "install"]

log = logging.getLogger("hotpatch")


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
    migration_timeout: float = MIGRATION_TIMEOUT_S,
    state_dir: PathLike | None = None,
    deliver_timeout: float | None = None,
    vital_timeout: float | None = None,
) -> Agent:
    """Start a hotpatch agent in the background of this process and return it.

    It replays ``journal`` (the level survives restarts), files away what is
    already in ``watch`` (catch-up, in version order), then watches the folder
    and serves the control socket. ``control_socket``: a path; ``None`` means
    ``<watch>/.hotpatch.sock`` when watching (none otherwise); ``False``, none.
    Stop it with ``agent.stop()``, or use it as a context manager.

    ``workers=True``: this process is one of several worker processes sharing
    ``watch`` (gunicorn, uvicorn --workers): each drop is verified once and
    applied in every worker, with one result file (see ``hotpatch.agent.fanout``); the
    folder's owner records the level in ``journal`` (default
    ``<watch>/.workers/journal.json``), which a worker that starts alone replays.

    ``deliver_timeout`` (with ``workers=True``; default 60): seconds a worker waits
    for another worker's answer to a delivery, an undo or a rollback, or for the
    owner's to a request passed on to it; a worker that took a delivery and gave
    no answer by then has the patch undone, and the drop is rejected.

    ``vital_timeout`` (default 10): seconds the check after every apply may take --
    can the agent still file an outcome and answer its control socket with the
    patch in? -- before the patch is rolled back and its drop rejected, naming
    the wait. A slow machine may need longer; a service that wants a patch that
    hangs the agent rolled back sooner gives less.

    ``migration_timeout``: seconds each migration of a patch has to return
    (default 30); past it the patch is refused and undone, and the agent goes
    on (the migration's thread cannot be stopped: see README, Limits).

    ``state_dir``: where the agent writes (outcome folders and result files, the
    outcome log, its lock and pidfile, staging, the default control socket and
    workers' directory), so that ``watch`` is only read -- a read-only folder
    such as a Kubernetes ConfigMap volume needs one. Drops then stay in
    ``watch``: each is taken once, and again when it changes.
    """
    show_log_lines()  # a service's agent: its lines in the service's log (HOTPATCH_LOG)
    return Agent(
        baseline,
        watch=watch,
        journal=journal,
        plugins=plugins,
        require_signature=require_signature,
        trusted_keys=trusted_keys,
        control_socket=control_socket,
        verify_timeout=verify_timeout,
        verify=verify,
        max_bytes=max_bytes,
        audit_log=audit_log,
        entry_points=entry_points,
        workers=workers,
        migration_timeout=migration_timeout,
        state_dir=state_dir,
        deliver_timeout=deliver_timeout,
        vital_timeout=vital_timeout,
    ).start()


class Running(Protocol):
    """What a started agent runs: a ``Solo``, or a ``Worker`` of a pre-fork server."""

    @property
    def registry(self) -> Registry: ...

    def handle(self, request: dict[str, Any], peer_uid: int) -> dict[str, Any]: ...

    def status(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class Agent:
    """A hotpatch agent: a ``Registry``, maybe a watched folder and a control socket.

    The options are ``install()``'s; ``start()`` (or ``with``) starts it.
    """

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
        workers: bool = False,
        migration_timeout: float = MIGRATION_TIMEOUT_S,
        state_dir: PathLike | None = None,
        deliver_timeout: float | None = None,
        vital_timeout: float | None = None,
    ) -> None:
        if not 0 < migration_timeout < math.inf:
            msg = (
                f"migration_timeout must be a positive number of seconds, not {migration_timeout!r}"
            )
            raise ValueError(msg)
        wait = deliver_timeout_of(deliver_timeout, workers=workers)
        check_wait = vital_timeout_of(vital_timeout)
        folder = Path(watch).absolute() if watch is not None else None
        state = Path(state_dir).absolute() if state_dir is not None else None
        if state is not None and folder is None:
            msg = (
                "state_dir=DIR keeps what the agent writes about its watched folder: give "
                "watch=FOLDER too (without a folder, give journal= and control_socket= paths)"
            )
            raise ValueError(msg)
        journal_path = Path(journal).absolute() if journal is not None else None
        socket: Path | None
        if workers:
            if folder is None or control_socket not in (None, True):
                msg = (
                    "install(workers=True) needs watch=DIR and takes no control_socket: each "
                    "worker serves DIR/.workers/<pid>.sock (the journal defaults to "
                    "DIR/.workers/journal.json; DIR is state_dir when given)"
                )
                raise ValueError(msg)
            journal_path, socket = worker_paths(state or folder, journal_path)
        else:
            socket = _socket_path(control_socket, state or folder)
        self._settings = Settings(
            baseline=str(baseline),
            watch=folder,
            journal=journal_path,
            socket=socket,
            checks=Checks.of(
                require_signature=require_signature,
                trusted_keys=trusted_keys,
                verify_timeout=verify_timeout,
                verify=verify,
                max_bytes=max_bytes,
            ),
            plugins=PluginChoice(
                explicit=tuple(plugins),
                audit_log=Path(audit_log) if audit_log is not None else None,
                entry_points=entry_points,
            ),
            migration_timeout=migration_timeout,
            state_dir=state,
            deliver_timeout=wait,
            vital_timeout=check_wait,
        )
        self._workers = workers
        self._run: Running | None = None  # kept once stopped: its registry stays readable
        self._started = False
        self._running = False

    # -- life cycle -----------------------------------------------------------------

    def start(self) -> Agent:
        """Replay the journal, open the folder and the socket, catch up, then watch.

        Idempotent while running; a stopped agent does not start again.
        """
        if self._started:
            if self.running:
                return self
            msg = "this agent was stopped; start a new one (hotpatch.install(...))"
            raise RuntimeError(msg)
        self._started = True
        self._run = Worker(self._settings) if self._workers else Solo(self._settings)
        self._running = True
        return self

    def stop(self) -> None:
        """Stop watching and serving; the patches applied stay applied. Idempotent.

        A drop being processed is finished first (its verification child can take
        up to ``verify_timeout``); drops still queued wait in the folder for the
        next start.
        """
        if self.running and self._run is not None:
            self._running = False
            self._run.close()

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

    # -- what it is, what it answers --------------------------------------------------

    @property
    def registry(self) -> Registry | None:
        """The registry patches are applied to; ``None`` until started."""
        return self._run.registry if self._run is not None else None

    @property
    def baseline(self) -> str:
        return self._settings.baseline

    @property
    def watch(self) -> Path | None:
        return self._settings.watch

    @property
    def journal(self) -> Path | None:
        return self._settings.journal

    @property
    def socket(self) -> Path | None:
        return self._settings.socket

    @property
    def state_dir(self) -> Path | None:
        """Where the agent writes, when not in ``watch`` (``install(state_dir=...)``)."""
        return self._settings.state_dir

    def status(self) -> dict[str, Any]:
        """What ``hotpatch status`` shows."""
        return self._started_run().status()

    def handle(self, request: dict[str, Any], peer_uid: int) -> dict[str, Any]:
        """Answer one control request (see the control protocol); never raises."""
        if self._run is None:
            return {"ok": False, "error": "the agent is not started", "error_type": "Error"}
        return self._run.handle(request, peer_uid)

    def _started_run(self) -> Running:
        if self._run is None:
            msg = "the agent is not started; call start() first"
            raise RuntimeError(msg)
        return self._run


def _socket_path(option: PathLike | bool | None, watch: Path | None) -> Path | None:
    """``None``: the default when watching; ``True``: the default; ``False``: none."""
    if option is False or (option is None and watch is None):
        return None
    if option is True or option is None:
        if watch is None:
            msg = "control_socket=True needs watch=DIR (the socket goes there); give a path"
            raise ValueError(msg)
        return watch / SOCKET_NAME
    return Path(option).absolute()
