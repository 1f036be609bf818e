"""The watched folder's safety: checked at start, for each drop and every ``GUARD_INTERVAL_S``.

A folder is safe to take drops from when it is a real directory (not a link)
owned by the service's user and writable by no one else, and so are its
outcome folders and staging (``applied/``, ``rejected/``, ``pending/``,
``.staging``), which are made again (mode 0700) when missing -- in the agent's
state directory when it has one (``hotpatch.agent._state_dir``: the folder is
then only read), else in the folder, which must then be writable.

``check_folder`` refuses an unsafe folder at start. ``FolderGuard`` keeps
judging it while the agent runs: the folder deleted, replaced (deleted and
made again, or another renamed into its place), given to another user or made
writable by others is said once at ERROR (the folder, what is wrong, the fix),
shown with since when by ``unsafe`` (``hotpatch status``, told to ``on_change``),
and no drop is taken meanwhile; once it is safe again the guard says so, and a
replaced folder is taken over (``retake``: its lock, the pidfile, a new watch on
the new directory) before any drop in it is.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hotpatch.agent._lateness import TIMERS
from hotpatch.agent._names import STAGING
from hotpatch.agent._outcome import OUTCOME_DIRS, now_iso
from hotpatch.agent._state_dir import check_state_dir, refuse_read_only

__all__ = [
    "GUARD_INTERVAL_S",
    "FolderGuard",
    "Unsafe",
    "check_folder",
    "folder_problem",
    "folder_status",
]

log = logging.getLogger("hotpatch")

GUARD_INTERVAL_S = 0.25  # between two looks at the folder while nothing else asks
SUBFOLDERS = (*sorted(set(OUTCOME_DIRS.values())), STAGING)

Problem = tuple[type[OSError], str]  # the error a start raises, and its message


def check_folder(folder: Path, *, state: Path | None = None) -> Path:
    """Create the folder (mode 0700) if needed; refuse one others could write or do not own.

    Raises ``PermissionError`` or ``NotADirectoryError`` naming the folder, the
    problem and the fix; ``ValueError`` for a state directory inside the
    folder. Without a ``state`` directory, a folder this process cannot write
    to is refused, naming the option. Returns the folder's absolute path.
    """
    folder = Path(folder).absolute()
    if not folder.exists() and not folder.is_symlink():
        folder.mkdir(mode=0o700, parents=True)
    found = _the_folder(folder)
    if found is None:
        if state is None:
            refuse_read_only(folder)
        else:
            check_state_dir(state, folder)
        found = folder_problem(folder, first=True, state=state)
    if found is not None:
        error, msg = found
        raise error(msg)
    return folder


def folder_problem(
    folder: Path, *, first: bool = False, state: Path | None = None
) -> Problem | None:
    """What makes ``folder`` unsafe to take drops from, naming the fix; ``None``: safe.

    An outcome folder (or staging) that is missing is made, mode 0700, once
    the folder itself is found safe (said in a warning, unless ``first``: at
    start); in ``state``, the agent's state directory, when it has one --
    which is judged as the folder is (gone, a link, another user's, writable
    by others: no drop is taken).
    """
    found = _the_folder(folder)
    if found is None and state is not None:
        found = _the_state_dir(state)
    for sub in SUBFOLDERS:
        if found is not None:
            return found
        found = _subfolder(state or folder, sub, first=first)
    return found


def _the_folder(folder: Path) -> Problem | None:
    try:
        st = folder.lstat()
    except FileNotFoundError:
        return FileNotFoundError, (
            f"patch folder {folder} is gone (deleted, or renamed away); make it again "
            f"(`mkdir -m 0700 {folder}` as uid {os.geteuid()}) and the agent watches it "
            "by itself"
        )
    except OSError as exc:
        return PermissionError, f"patch folder {folder} cannot be read: {exc.strerror or exc}"
    if stat.S_ISLNK(st.st_mode):
        return PermissionError, (
            f"patch folder {folder} is a symbolic link; watch the real directory "
            f"({folder.resolve()}) instead"
        )
    if not stat.S_ISDIR(st.st_mode):
        return NotADirectoryError, f"patch folder {folder} is not a directory"
    return _owned_and_closed(folder, st, what="patch folder ")


def _the_state_dir(state: Path) -> Problem | None:
    try:
        st = state.lstat()
    except FileNotFoundError:
        return FileNotFoundError, (
            f"state directory {state} is gone (deleted, or renamed away), and with it the "
            f"agent's lock and outcomes; make it again (`mkdir -m 0700 {state}` as uid "
            f"{os.geteuid()}), or restart the service"
        )
    except OSError as exc:
        return PermissionError, f"state directory {state} cannot be read: {exc.strerror or exc}"
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        return PermissionError, f"state directory {state} is not a directory (a link or a file)"
    return _owned_and_closed(state, st, what="state directory ")


def _subfolder(folder: Path, sub: str, *, first: bool) -> Problem | None:
    path = folder / sub
    try:
        try:
            st = path.lstat()
        except FileNotFoundError:
            path.mkdir(mode=0o700)
            st = path.lstat()
            if not first:
                log.warning("patch folder %s: %s was missing; made it again", folder, sub)
    except OSError as exc:
        return PermissionError, f"{path} cannot be made or read: {exc.strerror or exc}"
    if not stat.S_ISDIR(st.st_mode):
        return PermissionError, (
            f"{path} must be a directory owned by this service's user (uid {os.geteuid()}), "
            "not a link or a file; remove it (the agent makes it again)"
        )
    return _owned_and_closed(path, st, what="")


def _owned_and_closed(path: Path, st: os.stat_result, *, what: str) -> Problem | None:
    euid = os.geteuid()
    if st.st_uid != euid:
        return PermissionError, (
            f"{what}{path} is owned by uid {st.st_uid}, not by this service's user "
            f"(uid {euid}): whoever owns it controls the service's code. Run "
            f"`chown {euid} {path}` (or use a folder the service's user owns)"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return PermissionError, (
            f"{what}{path} is writable by other users (mode "
            f"{stat.S_IMODE(st.st_mode):04o}), so anyone could drop code into this service. "
            f"Run `chmod go-w {path}` (chmod o-w, and g-w too)"
        )
    return None


@dataclass(frozen=True, slots=True)
class Unsafe:
    """Why a folder takes no drop now (what is wrong, and the fix), and since when."""

    problem: str
    since: str  # when it stopped taking drops (ISO 8601, UTC)


def folder_status(unsafe: Unsafe | None) -> dict[str, object]:
    """The ``folder`` of ``hotpatch status``: does it take drops; if not, why and since when."""
    return {
        "safe": unsafe is None,
        "problem": unsafe.problem if unsafe is not None else None,
        "since": unsafe.since if unsafe is not None else None,
    }


class FolderGuard:
    """Judges a watched folder while the agent runs; ``check()`` before each drop.

    ``retake()`` is called when the folder at the path is another directory
    than the one watched (and is safe): it takes the new one over and returns
    ``None``, or says why it cannot. ``upkeep()`` runs on every look at a safe
    folder (the pidfile, the control socket made again if they went missing).
    ``on_change()``, if given, is called (on the guard's thread, or the one
    that asked ``check()``) once the folder is found unsafe, when what is wrong
    changes, and once it is safe again.
    """

    def __init__(
        self,
        folder: Path,
        *,
        retake: Callable[[], str | None],
        upkeep: Callable[[], None],
        interval: float = GUARD_INTERVAL_S,
        state: Path | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.folder = folder
        self.state = state  # where the outcome folders are, if not in the folder
        self.interval = interval
        self._retake = retake
        self._upkeep = upkeep
        self._on_change = on_change
        self._lock = threading.Lock()
        self._unsafe: Unsafe | None = None  # one record: read whole by other threads
        self._identity: tuple[int, int] | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def problem(self) -> str | None:
        """Why no drop is taken now (the folder, what is wrong, the fix); ``None``: safe."""
        unsafe = self._unsafe
        return unsafe.problem if unsafe is not None else None

    @property
    def unsafe(self) -> Unsafe | None:
        """``problem``, and since when no drop is taken; ``None``: safe."""
        return self._unsafe

    def start(self) -> FolderGuard:
        """Remember the directory watched now, then look at it every ``interval``."""
        st = self.folder.lstat()
        self._identity = (st.st_dev, st.st_ino)
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"hotpatch-guard {self.folder.name}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None

    def _run(self) -> None:
        while True:
            started = time.monotonic()
            if self._stopping.wait(self.interval):
                return
            TIMERS.waited(started, self.interval)  # how late it woke: the settle's measure
            try:
                self.check()
            except Exception:
                log.exception("patch folder %s: checking it failed; trying again", self.folder)

    def check(self) -> str | None:
        """Judge the folder now (taking over a replaced one); why it is unsafe, or ``None``."""
        with self._lock:
            found = self._judge()
            before = self._unsafe
            changed = found != (before.problem if before is not None else None)
            if changed:
                if found is not None:
                    log.error("%s; no drop is taken until then", found)
                    # Since it stopped taking drops, whatever is wrong with it now.
                    since = before.since if before is not None else now_iso()
                    self._unsafe = Unsafe(found, since)
                else:
                    log.warning("patch folder %s is safe again: drops are taken again", self.folder)
                    self._unsafe = None
        if changed and self._on_change is not None:
            self._on_change()
        return found

    def _judge(self) -> str | None:
        found = folder_problem(self.folder, state=self.state)
        if found is not None:
            return found[1]
        try:
            st = self.folder.lstat()
        except OSError:
            return None  # gone just now: the next look says so
        identity = (st.st_dev, st.st_ino)
        if identity != self._identity:
            refused = self._retake()
            if refused is not None:
                return refused
            self._identity = identity
            log.warning(
                "patch folder %s was replaced (deleted and made again, or another folder "
                "renamed into its place); watching the new one",
                self.folder,
            )
        self._upkeep()
        return None
