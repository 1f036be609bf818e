"""``install()`` and ``Agent``: journal replay, the watched folder, the control socket, plugins.

The agent runs beside the service, in background threads: the service's own
main loop does not change. Every patch -- dropped into the folder or sent
with ``hotpatch apply`` -- goes through one pipeline:

1. read the file's bytes once (no symlink, owned by the service's user, under
   the size limit);
2. check its detached signature on those bytes (``require_signature``);
3. write those bytes to a private staging file and load it in a short-lived
   child process (``verify_in_child``): it must import, resolve its targets,
   and neither exit nor hang;
4. load the same bytes in the service (``load_patch_source``) and apply them
   through the ``Registry``.

The outcome (applied, unchanged, rejected, pending) is logged in one line
and, for a folder drop, filed with its ``NAME.result.json``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import json
import logging
import os
import shutil
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from packaging.version import Version

from hotpatch._control import ControlServer
from hotpatch._errors import PatchError, RestartRequired, VerificationFailed
from hotpatch._folder import (
    SIGNATURE_WAIT_S,
    STAGING,
    Folder,
    Outcome,
    Vanished,
    bundle_version,
    check_folder,
    is_bundle_name,
    now_iso,
    peek_targets,
    peek_version,
    read_patch_file,
    read_signature,
    write_result,
)
from hotpatch._loader import DEFAULT_MAX_BYTES, load_patch_source
from hotpatch._patch import Patch
from hotpatch._plugins import PluginHost
from hotpatch._registry import Registry
from hotpatch._signing import verify_signature
from hotpatch._verify import verify_in_child

__all__ = ["Agent", "install"]

log = logging.getLogger("hotpatch")

PathLike = str | os.PathLike[str]
TrustedKeys = PathLike | Sequence[PathLike]

SOCKET_NAME = ".hotpatch.sock"
PIDFILE_NAME = ".hotpatch.json"
LOCKFILE_NAME = ".hotpatch.lock"
BUNDLE_REASON = "baseline bundles need the supervisor (hotpatch run)"


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
    applied in every worker, with one result file (see ``hotpatch._fanout``); the
    folder's owner records the level in ``journal`` (default
    ``<watch>/.workers/journal.json``), which a worker that starts alone replays.
    """
    if workers:
        # Imported here: _fanout builds on this module.
        from hotpatch._fanout import WorkerAgent  # noqa: PLC0415

        if watch is None or control_socket not in (None, True):
            msg = (
                "install(workers=True) needs watch=DIR and takes no control_socket: each "
                "worker serves DIR/.workers/<pid>.sock (the journal defaults to "
                "DIR/.workers/journal.json)"
            )
            raise ValueError(msg)
        return WorkerAgent(
            baseline,
            watch=watch,
            journal=journal,
            plugins=list(plugins),
            require_signature=require_signature,
            trusted_keys=trusted_keys,
            verify_timeout=verify_timeout,
            verify=verify,
            max_bytes=max_bytes,
            audit_log=audit_log,
            entry_points=entry_points,
        ).start()
    agent = Agent(
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
    )
    agent.start()
    return agent


class Agent:
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
        if require_signature and trusted_keys is None:
            msg = (
                "require_signature=True needs trusted_keys: a directory of .pub files "
                "(made with `hotpatch keygen`), or a list of them"
            )
            raise ValueError(msg)
        if verify_timeout <= 0:
            msg = f"verify_timeout must be positive, not {verify_timeout!r}"
            raise ValueError(msg)
        if max_bytes <= 0:
            msg = f"max_bytes must be positive, not {max_bytes!r}"
            raise ValueError(msg)
        self.baseline = str(baseline)
        self.watch = Path(watch).absolute() if watch is not None else None
        self.journal = Path(journal).absolute() if journal is not None else None
        self.require_signature = require_signature
        self.trusted_keys: Path | list[Path] | None = (
            None
            if trusted_keys is None
            else Path(trusted_keys)
            if isinstance(trusted_keys, str | os.PathLike)
            else [Path(p) for p in trusted_keys]
        )
        self.verify_timeout = verify_timeout
        self.verify = verify
        self.max_bytes = max_bytes
        self.socket = self._socket_path(control_socket)
        self.registry: Registry | None = None
        self._plugins = list(plugins)
        self._audit_log = Path(audit_log) if audit_log is not None else None
        self._entry_points = entry_points
        self._lock = threading.RLock()  # one patch operation at a time
        self._folder: Folder | None = None
        self._server: ControlServer | None = None
        self._staging: Path | None = None
        self._own_staging = False
        self._last: dict[str, Any] | None = None
        self._started = False
        self._running = False
        self._pidfile_written = False
        self._lock_fd: int | None = None
        self._who_folder = f"folder:{self.watch}" if self.watch else "folder"

    # -- life cycle -----------------------------------------------------------------

    def start(self) -> Agent:
        """Replay the journal, open the folder and the socket, catch up, then watch."""
        if self._started:
            if self.running:
                return self
            msg = "this agent was stopped; start a new one (hotpatch.install(...))"
            raise RuntimeError(msg)
        self._started = True
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
                self._write_pidfile(self.watch)
                self._folder = Folder(
                    self.watch,
                    self._process_drop,
                    signature_wait=SIGNATURE_WAIT_S if self.require_signature else 0.0,
                    max_bytes=self.max_bytes,
                )
                self._folder.start()
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

    def _level(self) -> tuple[str, ...]:
        assert self.registry is not None
        return self.registry.level

    def _verify_sys_path(self) -> list[str]:
        """The ``sys.path`` the verification child gets: the service's."""
        return list(sys.path)

    def _notify_rejected(self, outcome: Outcome, path: Path, who: str) -> None:
        assert self.registry is not None
        self.registry.plugins.notify(
            "hotpatch_rejected",
            version=outcome.version,
            source=str(path),
            reason=outcome.reason or "",
            who=who,
        )

    def _deliver(self, data: bytes, path: Path, outcome: Outcome) -> None:
        """Step 4: load the verified bytes and apply them.

        Sets ``outcome.notified`` once the registry has the patch: from then on
        it reports a rejection to the plugins itself.
        """
        patch = self._load_source(data, path, outcome)
        if patch is None:
            return
        outcome.notified = True
        self._apply(patch, outcome)

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

    # -- the pipeline -----------------------------------------------------------------

    def _process_drop(self, path: Path) -> Outcome:
        return self._process(path, who=self._who_folder)

    def _process(self, path: Path, *, who: str) -> Outcome:
        """Verify and apply the patch at ``path``; the outcome, never an exception.

        Raises only ``Vanished`` (the file is gone before it could be read).
        """
        start = time.perf_counter()
        outcome = Outcome(name=path.name, who=who)
        try:
            with self._lock:
                data = self._checked(path, outcome)
                if data is not None:
                    self._deliver(data, path, outcome)
        except Vanished:
            raise
        except PatchError as exc:
            outcome.outcome, outcome.reason = "rejected", str(exc)
            outcome.error_type = type(exc).__name__
        except Exception as exc:
            log.exception("processing %s failed unexpectedly", path)
            outcome.outcome, outcome.error_type = "rejected", "Error"
            outcome.reason = (
                f"internal error while processing {path.name}: {type(exc).__name__}: {exc}; "
                "the service is unchanged (please report this)"
            )
        outcome.timings["total_s"] = time.perf_counter() - start
        outcome.time = now_iso()
        outcome.level = self._level()
        if outcome.outcome == "rejected" and not outcome.notified:
            self._notify_rejected(outcome, path, who)
        self._log(outcome)
        self._last = outcome.record()
        return outcome

    def _load(self, path: Path, outcome: Outcome) -> Patch | None:
        """Steps 1-3 and the in-process load; ``None`` when the outcome is already decided."""
        data = self._checked(path, outcome)
        if data is None:
            return None
        return self._load_source(data, path, outcome)

    def _checked(self, path: Path, outcome: Outcome) -> bytes | None:
        """Steps 1-3: the verified bytes; ``None`` when the outcome is already decided."""
        data = self._read(path, outcome)
        if data is None:
            return None
        name, timings = path.name, outcome.timings
        if self.require_signature:
            t = time.perf_counter()
            signature = read_signature(path, owners={os.geteuid()})
            outcome.key_id = verify_signature(data, signature, self.trusted_keys, name=name)
            timings["signature_s"] = time.perf_counter() - t

        if outcome.version is not None and self._same_version(outcome.version, outcome):
            return None

        t = time.perf_counter()
        if self.verify:
            staged = self._stage(name, data)
            try:
                verify_in_child(
                    staged,
                    sys_path=self._verify_sys_path(),
                    timeout=self.verify_timeout,
                    max_bytes=self.max_bytes,
                )
            finally:
                shutil.rmtree(staged.parent, ignore_errors=True)
        timings["verify_s"] = time.perf_counter() - t
        return data

    def _load_source(self, data: bytes, path: Path, outcome: Outcome) -> Patch | None:
        """Load verified bytes in this process; ``None`` when the version is applied already."""
        name = path.name
        t = time.perf_counter()
        try:
            patch = load_patch_source(data, path=str(path))
        except Exception:
            raise
        except BaseException as exc:
            # KeyboardInterrupt and the like, raised by the patch itself: in this
            # thread they would end the agent, not the service. A rejection.
            msg = f"patch file {name} raised {type(exc).__name__} while importing; remove it"
            raise VerificationFailed(msg) from exc
        outcome.timings["load_s"] = time.perf_counter() - t
        outcome.version, outcome.targets = patch.version, patch.targets
        if self._same_version(patch.version, outcome):
            return None
        return patch

    def _read(self, path: Path, outcome: Outcome) -> bytes | None:
        """The file's bytes, read once; ``None`` for a bundle (pending). Refusals raise."""
        name = path.name
        t = time.perf_counter()
        try:
            st = path.lstat()
        except FileNotFoundError:
            raise Vanished(str(path)) from None
        outcome.ino = (st.st_ino, st.st_dev)
        if stat.S_ISLNK(st.st_mode):
            msg = (
                f"{name} is a symbolic link; hotpatch refuses symlinks in the patch folder "
                "(copy or rename the file itself into it)"
            )
            raise VerificationFailed(msg)
        if stat.S_ISDIR(st.st_mode) or is_bundle_name(name):
            if st.st_uid != os.geteuid():
                msg = (
                    f"{name} is owned by uid {st.st_uid}, not by this service's user "
                    f"(uid {os.geteuid()}); hotpatch refuses files owned by another user"
                )
                raise VerificationFailed(msg)
            outcome.version = bundle_version(path)
            outcome.outcome, outcome.reason = "pending", BUNDLE_REASON
            outcome.error_type = "RestartRequired"
            return None
        if stat.S_ISREG(st.st_mode) and not name.endswith(".py"):
            msg = (
                f"{name} is not a patch: a hot patch is one Python file (NAME.py) and a "
                "baseline bundle a directory or .zip; signatures are NAME.sig"
            )
            raise VerificationFailed(msg)
        read = read_patch_file(path, max_bytes=self.max_bytes, owners={os.geteuid()})
        outcome.ino, outcome.data = (read.ino, read.dev), read.data
        outcome.sha256 = hashlib.sha256(read.data).hexdigest()
        outcome.version = peek_version(read.data)
        outcome.targets = peek_targets(read.data)  # until the patch itself says
        outcome.timings["read_s"] = time.perf_counter() - t
        return read.data

    def _stage(self, name: str, data: bytes) -> Path:
        """A private copy of exactly ``data`` (folder 0700, file 0600) for the child to load."""
        assert self._staging is not None
        folder = Path(tempfile.mkdtemp(dir=self._staging))
        staged = folder / name
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        return staged

    def _same_version(self, version: str, outcome: Outcome) -> bool:
        """Is ``version`` applied already? Same content: unchanged; other content: refused."""
        assert self.registry is not None
        wanted = Version(version)
        for applied in self.registry.patches:
            if applied.parsed_version != wanted:
                continue
            sha = applied.sha256
            if sha == outcome.sha256:
                outcome.outcome = "unchanged"
                outcome.reason = f"patch {applied.version} is already applied with this content"
                outcome.targets = applied.targets
                return True
            msg = (
                f"patch {version} is already applied with other content (applied sha256 "
                f"{(sha or '?')[:16]}, this file {(outcome.sha256 or '?')[:16]}); publish the "
                "change under a newer version"
            )
            raise VerificationFailed(msg, patch=version)
        return False

    def _apply(self, patch: Patch, outcome: Outcome) -> None:
        assert self.registry is not None
        t = time.perf_counter()
        try:
            result = self.registry.apply(patch, who=outcome.who)
        except RestartRequired as exc:
            outcome.outcome, outcome.reason = "pending", str(exc)
            outcome.error_type = type(exc).__name__
            return
        finally:
            outcome.timings["apply_s"] = time.perf_counter() - t
        outcome.outcome, outcome.reason = "applied", None
        outcome.targets = result.targets

    def _log(self, outcome: Outcome) -> None:
        level = logging.INFO if outcome.outcome in ("applied", "unchanged") else logging.WARNING
        log.log(
            level,
            "%s %s: %s patch %s, targets %s, in %.1f ms%s",
            outcome.who,
            outcome.name,
            outcome.outcome,
            outcome.version or "?",
            ", ".join(outcome.targets) or "-",
            outcome.timings.get("total_s", 0.0) * 1e3,
            f": {outcome.reason}" if outcome.reason and outcome.outcome != "unchanged" else "",
        )

    # -- status and the control protocol ---------------------------------------------

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
        return {
            "ok": True,
            "version": report.version,
            "hot": report.hot,
            "reasons": list(report.reasons),
            "targets": list(report.targets),
            "modes": dict(report.modes),
        }

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
