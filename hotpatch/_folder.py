"""The watched folder: complete-file detection (watchdog), version order, outcomes and result files.

Protocol of the folder, as an operator sees it:

* A file is taken once complete: when it is closed after writing (inotify's
  ``IN_CLOSE_WRITE``), or when it is renamed into the folder. Dotfiles and
  temporary names (``*.tmp``, ``*.part``, ``*~``) are ignored until renamed.
* ``NAME.sig`` is the detached signature of ``NAME``. When signatures are
  required and ``NAME.sig`` is not there yet, the folder waits up to
  ``SIGNATURE_WAIT_S`` (2 s) for it; drop the ``.sig`` first to never wait.
* Drops are processed one at a time, lowest version first. The version is
  read without importing anything (the ``Patch(version="...")`` literal, or
  ``patch.toml`` of a bundle); a file whose version cannot be read goes last.
  Drops announced within ``SETTLE_S`` (5 ms) of each other are one burst:
  processing starts once the folder has been quiet that long. A file with a
  lower version that is visible in the folder but not complete yet (still
  open, or its event in flight) is waited for, up to ``HOLD_BACK_S`` (1 s).
* Each drop moves to ``applied/``, ``rejected/`` or ``pending/`` with
  ``NAME.result.json`` beside it, written completely (temporary file, fsync,
  rename) before the file moves. A name already taken there gets a suffix
  (``fix.1.py``, ``fix.2.py``, ...); the ``.sig`` moves along.

The folder only finds drops and files their outcomes; deciding the outcome is
the ``process`` callable's job (the agent's pipeline).
"""

from __future__ import annotations

import ast
import contextlib
import datetime
import errno
import itertools
import json
import logging
import os
import stat
import threading
import time
import tomllib
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from packaging.version import InvalidVersion, Version
from watchdog.events import (
    DirMovedEvent,
    FileClosedEvent,
    FileMovedEvent,
    FileSystemEventHandler,
)
from watchdog.observers.inotify import InotifyObserver

from hotpatch._errors import VerificationFailed

__all__ = [
    "HOLD_BACK_S",
    "OUTCOME_DIRS",
    "RESULT_SUFFIX",
    "SETTLE_S",
    "SIGNATURE_WAIT_S",
    "STAGING",
    "Folder",
    "Outcome",
    "OutcomeKind",
    "PatchBytes",
    "Vanished",
    "check_folder",
    "is_bundle_name",
    "is_ignored",
    "now_iso",
    "peek_targets",
    "peek_version",
    "read_patch_file",
    "read_signature",
]

log = logging.getLogger("hotpatch")

OutcomeKind = Literal["applied", "unchanged", "rejected", "pending"]
# Where each outcome files the drop.
OUTCOME_DIRS: dict[str, str] = {
    "applied": "applied",
    "unchanged": "applied",
    "rejected": "rejected",
    "pending": "pending",
}
STAGING = ".staging"
SIGNATURE_SUFFIX = ".sig"
RESULT_SUFFIX = ".result.json"
TEMPORARY_SUFFIXES = (".tmp", ".part", "~")
SIGNATURE_WAIT_S = 2.0
SETTLE_S = 0.005
HOLD_BACK_S = 1.0
MAX_SIGNATURE_BYTES = 64 * 1024
_MAX_TOML_BYTES = 64 * 1024


class Vanished(Exception):
    """The drop disappeared before it was read (deleted or replaced by its writer)."""


# -- names ------------------------------------------------------------------------------


def is_ignored(name: str) -> bool:
    """Dotfiles and temporary names, which wait for a rename to a real name."""
    return name.startswith(".") or name.endswith(TEMPORARY_SUFFIXES)


def is_bundle_name(name: str) -> bool:
    return name.endswith(".zip")


# -- reading a drop safely --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PatchBytes:
    """A file's bytes read once, and the identity of the inode they came from."""

    data: bytes
    ino: int
    dev: int


def read_patch_file(path: Path, *, max_bytes: int, owners: Iterable[int]) -> PatchBytes:
    """Read ``path`` once, refusing symlinks, special files, strangers' files and huge files.

    The size is checked on the open file before reading, so an oversized file
    is never read into memory. Raises ``VerificationFailed`` with the reason,
    or ``Vanished`` when the file is gone.
    """
    name = path.name
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise Vanished(str(path)) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            msg = (
                f"{name} is a symbolic link; hotpatch refuses symlinks in the patch "
                "folder (copy or rename the file itself into it)"
            )
            raise VerificationFailed(msg) from None
        msg = f"{name} cannot be opened: {exc.strerror or exc}"
        raise VerificationFailed(msg) from exc
    try:
        st = os.fstat(fd)
        _check_file(name, st, max_bytes=max_bytes, owners=owners)
        chunks = []
        remaining = max_bytes + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        msg = f"{name} grew past the size limit of {max_bytes} bytes while being read"
        raise VerificationFailed(msg)
    return PatchBytes(data, st.st_ino, st.st_dev)


def _check_file(name: str, st: os.stat_result, *, max_bytes: int, owners: Iterable[int]) -> None:
    if not stat.S_ISREG(st.st_mode):
        msg = f"{name} is not a regular file; a patch is a plain Python file"
        raise VerificationFailed(msg)
    allowed = set(owners)
    if st.st_uid not in allowed:
        msg = (
            f"{name} is owned by uid {st.st_uid}, not by this service's user "
            f"(uid {', '.join(map(str, sorted(allowed)))}); hotpatch refuses files owned by "
            f"another user. Copy it as the service's user (or `chown {os.geteuid()} {name}`) "
            "and drop it again"
        )
        raise VerificationFailed(msg)
    if st.st_size > max_bytes:
        msg = (
            f"{name} is {st.st_size} bytes, over the size limit of {max_bytes} bytes; "
            "a patch is source code, so this is almost certainly not one (raise max_bytes "
            "if it really is)"
        )
        raise VerificationFailed(msg)


def read_signature(path: Path, *, owners: Iterable[int]) -> bytes | None:
    """The content of ``PATH.sig`` (read like a patch file), or ``None`` when there is none."""
    sig = path.with_name(path.name + SIGNATURE_SUFFIX)
    try:
        return read_patch_file(sig, max_bytes=MAX_SIGNATURE_BYTES, owners=owners).data
    except Vanished:
        return None


# -- versions without importing ---------------------------------------------------------


def peek_version(data: bytes) -> str | None:
    """The version literal of the one ``Patch(...)`` call in a patch file, without running it.

    ``None`` when the file does not parse, has no such literal, or more than one.
    """
    try:
        tree = ast.parse(data)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    found: list[str] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not _names_patch(node.func):
            continue
        values = [kw.value for kw in node.keywords if kw.arg == "version"]
        values += node.args[:1]
        literal = [v.value for v in values if isinstance(v, ast.Constant)]
        if len(literal) == 1 and isinstance(literal[0], str):
            found.append(literal[0])
    if len(found) != 1:
        return None
    return found[0] if _valid_version(found[0]) else None


def peek_targets(data: bytes) -> tuple[str, ...]:
    """The ``@patch.replace("m:q")`` target literals of a patch file, without running it.

    For messages about a file that is refused before it is loaded; best effort.
    """
    try:
        tree = ast.parse(data)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return ()
    targets = [
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("replace", "replace_class")
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
        and ":" in node.args[0].value
    ]
    return tuple(dict.fromkeys(targets))


def _names_patch(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id == "Patch"
    return isinstance(func, ast.Attribute) and func.attr == "Patch"


def _valid_version(text: str) -> bool:
    try:
        Version(text)
    except InvalidVersion:
        return False
    return True


def bundle_version(path: Path) -> str | None:
    """``[patch] version`` of a bundle's ``patch.toml`` (directory or zip), best effort."""
    try:
        if path.is_dir() and not path.is_symlink():
            toml = path / "patch.toml"
            if toml.is_symlink() or toml.stat().st_size > _MAX_TOML_BYTES:
                return None
            raw = toml.read_bytes()
        else:
            with zipfile.ZipFile(path) as archive:
                info = archive.getinfo("patch.toml")
                if info.file_size > _MAX_TOML_BYTES:
                    return None
                raw = archive.read(info)
        version = tomllib.loads(raw.decode("utf-8"))["patch"]["version"]
    except (OSError, KeyError, TypeError, ValueError, zipfile.BadZipFile):
        return None
    return version if isinstance(version, str) and _valid_version(version) else None


# -- the folder itself ------------------------------------------------------------------


def check_folder(folder: Path) -> Path:
    """Create the folder (mode 0700) if needed; refuse one others could write or do not own."""
    folder = Path(folder).absolute()
    if not folder.exists() and not folder.is_symlink():
        folder.mkdir(mode=0o700, parents=True)
    try:
        st = folder.lstat()
    except OSError as exc:
        msg = f"patch folder {folder} cannot be read: {exc.strerror or exc}"
        raise PermissionError(msg) from exc
    if stat.S_ISLNK(st.st_mode):
        msg = (
            f"patch folder {folder} is a symbolic link; watch the real directory "
            f"({folder.resolve()}) instead"
        )
        raise PermissionError(msg)
    if not stat.S_ISDIR(st.st_mode):
        msg = f"patch folder {folder} is not a directory"
        raise NotADirectoryError(msg)
    if st.st_uid != os.geteuid():
        msg = (
            f"patch folder {folder} is owned by uid {st.st_uid}, not by this service's user "
            f"(uid {os.geteuid()}): whoever owns it controls the service's code. Run "
            f"`chown {os.geteuid()} {folder}` (or use a folder the service's user owns)"
        )
        raise PermissionError(msg)
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        msg = (
            f"patch folder {folder} is writable by other users (mode "
            f"{stat.S_IMODE(st.st_mode):04o}), so anyone could drop code into this service. "
            f"Run `chmod go-w {folder}` (chmod o-w, and g-w too) and start again"
        )
        raise PermissionError(msg)
    for sub in (*sorted(set(OUTCOME_DIRS.values())), STAGING):
        path = folder / sub
        if not path.exists() and not path.is_symlink():
            path.mkdir(mode=0o700)
        sub_st = path.lstat()
        if not stat.S_ISDIR(sub_st.st_mode) or sub_st.st_uid != os.geteuid():
            msg = (
                f"{path} must be a directory owned by this service's user (uid {os.geteuid()}), "
                "not a link or a file; remove it and start again"
            )
            raise PermissionError(msg)
    return folder


# -- outcomes ---------------------------------------------------------------------------


def now_iso() -> str:
    """The current time, ISO 8601 in UTC, to the millisecond."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


@dataclass(slots=True)
class Outcome:
    """What became of one patch: the content of ``NAME.result.json``."""

    name: str
    who: str
    version: str | None = None
    outcome: OutcomeKind = "rejected"
    reason: str | None = None
    sha256: str | None = None
    targets: tuple[str, ...] = ()
    level: tuple[str, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)
    time: str = field(default_factory=now_iso)
    key_id: str | None = None
    # What was examined, so the folder moves that inode and no other (not in the record).
    ino: tuple[int, int] | None = None
    data: bytes | None = None
    error_type: str | None = None  # the PatchError subclass behind a refusal
    notified: bool = False  # the registry had it: it told the plugins of a refusal itself
    via: str | None = None  # under the supervisor: "hot" or "restart"
    workers: list[dict[str, Any]] | None = None  # install(workers=True): each worker's result
    # Under the supervisor: how it went in (``restart``, ``health``, ``rolled_back``, ``rollout``).
    details: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        return {
            "file": self.name,
            "version": self.version,
            "outcome": self.outcome,
            "reason": self.reason,
            "sha256": self.sha256,
            "targets": list(self.targets),
            "level": list(self.level),
            "timings": {k: round(v, 6) for k, v in self.timings.items()},
            "time": self.time,
            "who": self.who,
            "key_id": self.key_id,
            **({"via": self.via} if self.via is not None else {}),
            **({"workers": self.workers} if self.workers is not None else {}),
            **self.details,
        }


def write_result(path: Path, record: dict[str, Any]) -> None:
    """Write ``record`` as JSON at ``path`` completely: temporary file, fsync, rename."""
    payload = (json.dumps(record, indent=2) + "\n").encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        try:
            os.write(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _free_name(directory: Path, name: str, *, is_dir: bool) -> str:
    """``name``, or ``stem.N.suffix`` when it (or its result or signature) is taken."""

    def taken(candidate: str) -> bool:
        return any(
            os.path.lexists(directory / f"{candidate}{extra}")
            for extra in ("", RESULT_SUFFIX, SIGNATURE_SUFFIX)
        )

    if not taken(name):
        return name
    stem, dot, suffix = name.rpartition(".")
    if is_dir or not dot or not stem:
        stem, suffix = name, ""
    for n in itertools.count(1):
        candidate = f"{stem}.{n}.{suffix}" if suffix else f"{stem}.{n}"
        if not taken(candidate):
            return candidate
    raise AssertionError("unreachable")  # pragma: no cover


def _move(source: Path, target: Path) -> None:
    """Move ``source`` to ``target`` without overwriting anything.

    Regular files move by hard link then unlink, not by rename: inotify reports
    a rename out of the watched folder as ``IN_MOVED_FROM``, which watchdog
    holds back 0.5 s to pair it with an ``IN_MOVED_TO`` -- and every event
    behind it waits too, so the next drop would be seen half a second late.
    A link and an unlink are reported at once. Directories, symlinks, and
    filesystems without hard links fall back to a rename.
    """
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            raise
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, "exists", str(target)) from exc
        os.rename(source, target)
        return
    os.unlink(source)


# -- watching ---------------------------------------------------------------------------

SortKey = tuple[int, Version, str]
_UNKNOWN = Version("0")


class _Handler(FileSystemEventHandler):
    """Turns watchdog events into announcements of complete files."""

    def __init__(self, folder: Folder):
        self.folder = folder

    def on_closed(self, event: FileClosedEvent) -> None:
        # IN_CLOSE_WRITE: a writer closed the file, so what it wrote is complete.
        self.folder.announce(os.path.basename(os.fsdecode(event.src_path)))

    def on_moved(self, event: DirMovedEvent | FileMovedEvent) -> None:
        # A rename: from another folder (no source) or from a name in this one.
        if event.dest_path:
            dest = os.fsdecode(event.dest_path)
            if os.path.dirname(dest) == str(self.folder.path):
                self.folder.announce(os.path.basename(dest))


class Folder:
    """Watches one folder and feeds its complete drops, in version order, to ``process``.

    ``process(path)`` returns the ``Outcome`` (or raises ``Vanished``); the
    folder writes ``NAME.result.json`` and moves the drop. One worker thread
    processes drops one at a time; a failure never stops it.
    """

    def __init__(
        self,
        path: Path,
        process: Callable[[Path], Outcome],
        *,
        signature_wait: float = 0.0,
        max_bytes: int,
    ):
        self.path = Path(path)
        self._process = process
        self._signature_wait = signature_wait
        self._max_bytes = max_bytes
        self._cond = threading.Condition()
        self._queue: dict[str, int] = {}  # name -> arrival number
        self._arrivals = itertools.count()
        self._signatures: set[str] = set()  # .sig names announced complete
        self._given_up: set[str] = set()  # unannounced names no longer waited for
        self._keys: dict[str, tuple[tuple[int, int, int], SortKey]] = {}
        self._current: str | None = None
        self._last_announced = 0.0
        self._stopping = False
        self._observer: InotifyObserver | None = None
        self._worker: threading.Thread | None = None

    # -- life cycle -----------------------------------------------------------------

    def start(self) -> None:
        """Watch, queue what is already there (catch-up), then start the worker."""
        observer = InotifyObserver(generate_full_events=True)
        observer.schedule(
            _Handler(self),
            str(self.path),
            recursive=False,
            event_filter=[FileClosedEvent, FileMovedEvent, DirMovedEvent],
        )
        observer.daemon = True
        observer.start()
        self._observer = observer
        # Watching first, listing second: a file that arrives in between is seen
        # twice (harmless) rather than never.
        for name in sorted(os.listdir(self.path)):
            self.announce(name)
        self._worker = threading.Thread(target=self._run, name="hotpatch-folder", daemon=True)
        self._worker.start()

    def stop(self) -> None:
        """Stop watching; the drop being processed finishes, queued ones wait for the next start."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join()
            self._observer = None
        if self._worker is not None:
            self._worker.join()
            self._worker = None

    @property
    def pending(self) -> list[str]:
        """Drops waiting to be processed (the current one first)."""
        with self._cond:
            names = sorted(self._queue, key=self._queue.__getitem__)
            return [self._current, *names] if self._current else names

    # -- announcements (watchdog thread, and catch-up) ----------------------------------

    def announce(self, name: str) -> None:
        """``name`` in the folder is complete: queue it (or note its signature)."""
        if is_ignored(name) or name in OUTCOME_DIRS.values() or not name:
            return
        with self._cond:
            if name.endswith(SIGNATURE_SUFFIX):
                self._signatures.add(name)
            else:
                self._queue.setdefault(name, next(self._arrivals))
                self._given_up.discard(name)
                self._last_announced = time.monotonic()
            self._cond.notify_all()

    # -- the worker -----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
            try:
                name = self._next()
                if name is None:
                    continue
                self._handle(name)
            except Exception:
                log.exception("patch folder %s: unexpected error; carrying on", self.path)
            finally:
                with self._cond:
                    self._current = None
                    self._cond.notify_all()

    def _next(self) -> str | None:
        """Take the queued drop with the lowest version, once its burst has settled.

        A burst (``mv *.py patches/`` renames one file at a time) is over when
        nothing new was announced for ``SETTLE_S``; a lower version visible in
        the folder but not announced yet is waited for, up to ``HOLD_BACK_S``.
        """
        deadline = time.monotonic() + HOLD_BACK_S
        while True:
            with self._cond:
                if self._stopping or not self._queue:
                    return None
                queued = dict(self._queue)
                quiet = time.monotonic() - self._last_announced
            now = time.monotonic()
            if quiet < SETTLE_S and now < deadline:
                with self._cond:
                    self._cond.wait(SETTLE_S - quiet)
                continue
            keys = {name: self._key(name) for name in queued}
            best = min(queued, key=lambda n: (keys[n], queued[n]))
            lower = [
                name
                for name in self._unannounced(queued)
                if name not in self._given_up and self._key(name) < keys[best]
            ]
            if lower and now < deadline:
                with self._cond:
                    self._cond.wait(min(deadline - now, 0.05))
                continue
            self._given_up.update(lower)
            with self._cond:
                if best not in self._queue:
                    continue
                del self._queue[best]
                self._current = best
            return best

    def _unannounced(self, queued: dict[str, int]) -> list[str]:
        """Names in the folder that could be drops but have not been announced yet."""
        try:
            names = os.listdir(self.path)
        except OSError:
            return []
        return [
            n
            for n in names
            if n not in queued
            and not is_ignored(n)
            and not n.endswith(SIGNATURE_SUFFIX)
            and n not in OUTCOME_DIRS.values()
        ]

    def _key(self, name: str) -> SortKey:
        """Sort key of a drop: its version when it can be read without importing, else last."""
        path = self.path / name
        try:
            st = path.lstat()
        except OSError:
            return (1, _UNKNOWN, name)
        identity = (st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self._keys.get(name)
        if cached is not None and cached[0] == identity:
            return cached[1]
        version: str | None = None
        if stat.S_ISDIR(st.st_mode) or (stat.S_ISREG(st.st_mode) and is_bundle_name(name)):
            version = bundle_version(path)
        elif stat.S_ISREG(st.st_mode) and name.endswith(".py") and st.st_size <= self._max_bytes:
            with contextlib.suppress(OSError, Vanished, VerificationFailed):
                owners = (os.geteuid(), st.st_uid)  # ordering only: ownership is checked later
                version = peek_version(
                    read_patch_file(path, max_bytes=self._max_bytes, owners=owners).data
                )
        key: SortKey = (0, Version(version), name) if version else (1, _UNKNOWN, name)
        self._keys[name] = (identity, key)
        return key

    def _handle(self, name: str) -> None:
        path = self.path / name
        if not os.path.lexists(path):
            return  # processed already (a second event), or deleted by its writer
        if self._signature_wait > 0 and (name.endswith(".py") or is_bundle_name(name)):
            self._wait_for_signature(name + SIGNATURE_SUFFIX)
            if self._stopping:
                return  # left in the folder for the next start
        try:
            outcome = self._process(path)
        except Vanished:
            log.debug("patch folder %s: %s vanished before it was read", self.path, name)
            return
        self._keys.pop(name, None)
        self._file(path, outcome)

    def _wait_for_signature(self, sig: str) -> None:
        deadline = time.monotonic() + self._signature_wait
        with self._cond:
            while sig not in self._signatures and not self._stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.info(
                        "patch folder %s: waited %.1f s for %s; going on without it",
                        self.path,
                        self._signature_wait,
                        sig,
                    )
                    return
                self._cond.wait(remaining)

    def _file(self, path: Path, outcome: Outcome) -> None:
        """Write the result file, then move the drop (and its signature) beside it."""
        directory = self.path / OUTCOME_DIRS[outcome.outcome]
        try:
            st = path.lstat()
        except FileNotFoundError:
            st = None
        if st is None:
            same = False
        elif outcome.ino is None:
            same = True  # nothing was read (refused as it stood): file what is there
        else:
            same = (st.st_ino, st.st_dev) == outcome.ino
        is_dir = st is not None and stat.S_ISDIR(st.st_mode)
        final = _free_name(directory, path.name, is_dir=is_dir)
        write_result(directory / (final + RESULT_SUFFIX), outcome.record())
        if same:
            _move(path, directory / final)
        elif outcome.data is not None:
            # The name now holds another file (replaced while we worked): file the
            # bytes we processed, and leave the newcomer to its own event.
            fd = os.open(directory / final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(outcome.data)
            if st is not None:
                self.announce(path.name)
        sig = path.with_name(path.name + SIGNATURE_SUFFIX)
        if os.path.lexists(sig):
            _move(sig, directory / (final + SIGNATURE_SUFFIX))
        with self._cond:
            self._signatures.discard(sig.name)
