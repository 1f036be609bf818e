"""Watching the patch folder: complete-file detection (inotify), version order, one drop at a time.

Protocol of the folder, as an operator sees it:

* A file is taken once complete: when it is closed after writing (inotify's
  ``IN_CLOSE_WRITE``), when it is renamed into the folder, or when a link to it
  is made there (a hard link is taken; a symlink other than a ConfigMap's is
  refused). Dotfiles and temporary names (``*.tmp``, ``*.part``, ``*~``) are
  ignored until renamed.
* ``NAME.sig`` is the detached signature of ``NAME``. When signatures are
  required and ``NAME.sig`` is not there yet, the folder waits up to
  ``SIGNATURE_WAIT_S`` (2 s) for it; drop the ``.sig`` first to never wait.
* Drops are processed one at a time, lowest version first, a burst once it
  has settled (``hotpatch.agent._queue`` says how the order is found); a lower
  version that comes while a drop is checked goes in first, and one that comes
  just after a higher one went in is refused saying so (``hotpatch.agent._turn``).
* Each drop moves to ``applied/``, ``rejected/`` or ``pending/`` with
  ``NAME.result.json`` beside it, written completely (temporary file, fsync,
  rename) before the file moves. A name already taken there gets a suffix
  (``fix.1.py``, ``fix.2.py``, ...); the ``.sig`` moves along.
* With a state directory (``state``: a folder that is only read, such as a
  ConfigMap volume), the outcome folders are there and nothing is moved: the
  bytes processed are filed as a copy, and a file is taken once while it
  stays the same file (inode, size, modification time, and its ``.sig``'s);
  rewritten, replaced, or given a signature, it is taken again.

The folder only finds drops and files their outcomes; deciding the outcome is
the ``process`` callable's job (the agent's pipeline). Their order is
``hotpatch.agent._queue``'s; reading a drop safely is ``hotpatch.agent._drops``;
filing its outcome, ``hotpatch.agent._outcome``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

from hotpatch._errors import VerificationFailed
from hotpatch.agent._configmap import DATA, KEPT, Taken, identity, is_configmap_link, resolve
from hotpatch.agent._drops import (
    MAX_SIGNATURE_BYTES,
    Interrupted,
    Vanished,
    is_bundle_name,
    is_ignored,
)
from hotpatch.agent._guard import GUARD_INTERVAL_S
from hotpatch.agent._names import shown
from hotpatch.agent._outcome import OUTCOME_DIRS, Outcome, file_outcome
from hotpatch.agent._queue import DropQueue
from hotpatch.agent._resources import Retry, Shortage, shortage_of
from hotpatch.agent._signing import SIGNATURE_SUFFIX
from hotpatch.agent._turn import Applied, FolderTurn, Overtaken, Turn
from hotpatch.agent._watch import Watch

__all__ = ["SIGNATURE_WAIT_S", "Folder"]

log = logging.getLogger("hotpatch")

SIGNATURE_WAIT_S = 2.0

# -- watching ---------------------------------------------------------------------------

T = TypeVar("T")


class Process(Protocol):
    """What decides a drop's outcome (the agent's ``DropPipeline.process``, its ``who`` given)."""

    def __call__(self, path: Path, *, turn: Turn | None = None) -> Outcome: ...


class Folder:
    """Watches one folder and feeds its complete drops, in version order, to ``process``.

    ``process(path, turn=...)`` returns the ``Outcome`` (or raises ``Vanished``; or
    ``Shortage``, ``Interrupted``: the drop waits in the queue, first; or
    ``Overtaken``: it waits behind a lower version that came meanwhile); the
    folder writes ``NAME.result.json`` and moves the drop -- or, with ``state``
    (the agent's state directory), files the result and a copy there and
    leaves the drop where it is. One worker thread processes drops one at a
    time; a failure never stops it. ``on_change`` is called when a drop begins or ends
    waiting for a resource, and on each of its attempts (``Retry``).
    """

    def __init__(
        self,
        path: Path,
        process: Process,
        *,
        signature_wait: float = 0.0,
        max_bytes: int,
        ready: Callable[[], bool] = lambda: True,
        state: Path | None = None,
        on_change: Callable[[], None] | None = None,
    ):
        self.path = Path(path)
        self._keep = state is not None  # the folder is only read
        self._outcomes = Path(state) if state is not None else self.path
        self._process = process
        self._ready = ready  # is the folder safe to take a drop from (and file it in) now?
        self._signature_wait = signature_wait
        self._max_bytes = max_bytes
        self._cond = threading.Condition()
        self._taken = Taken(self._outcomes)  # files taken, by name and content or identity
        self._drops = DropQueue(
            self.path, self._cond, max_bytes=max_bytes, keep=self._keep, taken=self._taken
        )
        self._signatures: set[str] = set()  # .sig names announced complete
        self._stopping = False
        self._watch: Watch | None = None
        self._worker: threading.Thread | None = None
        # the drop waiting for a resource (disk, descriptors)
        self._retry = Retry(self.path, on_change)
        self._applied: Applied | None = None  # the last drop applied (the worker's)

    # -- life cycle -----------------------------------------------------------------

    def start(self) -> None:
        """Watch, queue what is already there (catch-up), then start the worker."""
        self._watch = self._watched()
        self._taken.load()
        self._catch_up()
        self._worker = threading.Thread(target=self._run, name="hotpatch-folder", daemon=True)
        self._worker.start()

    def rewatch(self) -> None:
        """The directory at the path was replaced: watch the new one and take what it holds.

        Raises ``OSError`` when the new one cannot be watched (the old watch is kept).
        """
        watch = self._watched()
        old, self._watch = self._watch, watch
        if old is not None:
            old.stop()
        with self._cond:
            self._drops.rewatch()
        self._catch_up()

    def rescan(self) -> None:
        """Events were lost (the inotify queue overflowed): take what the folder holds now."""
        if self._stopping:
            return
        log.warning(
            "patch folder %s: the kernel dropped file events (inotify queue overflow, "
            "fs.inotify.max_queued_events); looking at the whole folder again",
            self.path,
        )
        with contextlib.suppress(OSError):  # gone: its guard says so
            self._catch_up()

    def _watched(self) -> Watch:
        return Watch(
            self.path,
            closed=self.announce,  # a writer closed it: what it wrote is complete
            moved_in=self._moved_in,
            created=self._created,
            lost=self.rescan,
        )

    def _catch_up(self) -> None:
        # Watching first, listing second: a file that arrives in between is seen
        # twice (harmless) rather than never.
        for name in sorted(os.listdir(self.path)):
            self.announce(name)

    def stop(self) -> None:
        """Stop watching; the drop being processed finishes, queued ones wait for the next start."""
        with self._cond:
            self._stopping = True
            self._drops.close()
            self._cond.notify_all()
        if self._watch is not None:
            self._watch.stop()
            self._watch = None
        if self._worker is not None:
            self._worker.join()
            self._worker = None
        self._drops.stopped()

    @property
    def waiting(self) -> dict[str, object] | None:
        """The drop waiting for a resource to be tried again, and why; ``None``: none."""
        with self._cond:
            return self._retry.report()

    @property
    def pending(self) -> list[str]:
        """Drops waiting to be processed (the current one first)."""
        with self._cond:
            return self._drops.names()

    def pending_head(self, limit: int) -> tuple[list[str], int]:
        """The first ``limit`` of ``pending`` and how many there are, at a cost that does
        not grow with the number waiting (what a status after each drop shows)."""
        with self._cond:
            current = 1 if self._drops.current else 0
            return self._drops.names(limit), len(self._drops) + current

    # -- announcements (the watch's thread, and catch-up) -------------------------------

    def _moved_in(self, name: str) -> None:
        """A rename into the folder (from elsewhere, or from another name here): complete."""
        if name == DATA:
            self.configmap_swapped()  # the kubelet's new version
        else:
            self.announce(name)

    def _created(self, name: str) -> None:
        """A link is complete once made. A symlink: the kubelet's link of a new key
        (``NAME -> ..data/NAME``) is taken, any other refused. A hard link (``ln``, a
        regular file with more than one name): taken. A regular file created here is
        announced when it is closed after writing, not before."""
        try:
            st = os.lstat(self.path / name)
        except OSError:
            return  # gone already
        if stat.S_ISLNK(st.st_mode) or (stat.S_ISREG(st.st_mode) and st.st_nlink > 1):
            self.announce(name)

    def announce(self, name: str) -> None:
        """``name`` in the folder is complete: queue it (or note its signature)."""
        if is_ignored(name) or name in OUTCOME_DIRS.values() or not name:
            return
        with self._cond:
            if name.endswith(SIGNATURE_SUFFIX):
                self._signatures.add(name)
                base = name.removesuffix(SIGNATURE_SUFFIX)
                if self._keep and base and not is_ignored(base) and self._lexists(base):
                    # A drop that stays: a new signature may make it go in now.
                    self._drops.add_again(base)
            else:
                self._drops.add(name)
            self._cond.notify_all()

    def configmap_swapped(self) -> None:
        """``..data`` names a new version of a ConfigMap: any visible link may show new content."""
        try:
            names = sorted(os.listdir(self.path))
        except OSError:
            return
        for name in names:
            if is_configmap_link(self.path, name):
                self.announce(name)

    # -- the worker -----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                # A drop waiting for a resource holds up the others: versions go in order.
                while not self._stopping and (not self._drops or self._retry.remaining() > 0):
                    self._cond.wait(self._retry.remaining() or None)
                if self._stopping:
                    return
            try:
                name = self._drops.take()
                if name is None:
                    continue
                if not self._ready():  # unsafe now: the drop waits in the folder, first in line
                    with self._cond:
                        self._drops.requeue(name)
                        self._cond.wait(GUARD_INTERVAL_S)
                    continue
                self._handle(name)
            except Exception:
                log.exception("patch folder %s: unexpected error; carrying on", self.path)
            finally:
                with self._cond:
                    self._drops.current = None
                    self._cond.notify_all()

    def _lexists(self, name: str) -> bool:
        return os.path.lexists(self.path / name)

    def _kept_mark(self, name: str) -> tuple[str, str]:
        """What notes a drop that stays in the folder: it, and its signature, as they are now."""
        sig = identity(self.path / (name + SIGNATURE_SUFFIX)) or "-"
        return name, f"{KEPT}{identity(self.path / name)}/{sig}"

    def _handle(self, name: str) -> None:
        path = self.path / name
        if not os.path.lexists(path):
            with self._cond:
                self._retry.forget(name)  # a drop that waited, removed: given up
            return  # processed already (a second event), or deleted by its writer
        configmap = is_configmap_link(self.path, name)
        if self._keep and not configmap and self._kept_mark(name) in self._taken:
            return  # taken already, and still the same file: its result tells the outcome
        if self._signature_wait > 0 and (name.endswith(".py") or is_bundle_name(name)):
            self._wait_for_signature(name + SIGNATURE_SUFFIX)
            if self._stopping:
                return  # left in the folder for the next start
        if configmap:
            self._guarded(name, lambda: self._handle_configmap(name))
            return
        mark = self._kept_mark(name)  # before reading: a change meanwhile is taken again
        outcome = self._guarded(
            name, lambda: self._process(path, turn=FolderTurn(self._drops, name, self._applied))
        )
        if outcome is None:
            return
        if outcome.outcome == "applied" and outcome.version is not None:
            self._applied = Applied(name, outcome.version, time.monotonic())
        with self._cond:
            self._retry.succeeded()
        self._drops.forget(name)
        if self._keep:
            self._file_kept(path, outcome, mark)
        else:
            self._file(path, outcome)

    def _guarded(self, name: str, work: Callable[[], T]) -> T | None:
        """``work()``; ``None`` when the drop vanished or must wait (a resource, the folder)."""
        try:
            return work()
        except Vanished:
            log.debug("patch folder %s: %s vanished before it was read", self.path, name)
        except Overtaken as exc:  # a lower version came meanwhile: it goes first
            log.info("patch folder %s: %s", self.path, exc)
            with self._cond:
                self._drops.requeue(name)
        except Interrupted as exc:  # the folder went away: not a rejection
            with self._cond:
                self._drops.requeue(name)
                self._retry.cut_short(name, str(exc))
        except Shortage as exc:
            self._wait_for_resource(name, str(exc))
        except OSError as exc:
            resource = shortage_of(exc)
            if resource is None:
                raise
            self._wait_for_resource(name, f"{resource}: {exc}")
        return None

    def _wait_for_resource(self, name: str, reason: str) -> None:
        """``name`` failed for want of a resource: it waits in the queue, first, for a retry."""
        with self._cond:
            self._drops.requeue(name)
            self._retry.failed(name, reason)

    def _handle_configmap(self, name: str) -> None:
        """A file the kubelet delivered: processed once per content, from a private copy."""
        try:
            drop = resolve(self.path, name, max_bytes=self._max_bytes)
        except (FileNotFoundError, Vanished):
            return  # swapped meanwhile: the next swap's event brings the name back
        except VerificationFailed as exc:
            # Not the layout as the service's user made it: a symlink like any other.
            link = self.path / name
            if self._keep and self._kept_mark(name) in self._taken:
                return  # refused already, and still the same link
            try:
                outcome = self._process(link)
            except Vanished:
                return
            if outcome.outcome == "rejected":
                outcome.reason = str(exc)
            if self._keep:
                self._file_kept(link, outcome, self._kept_mark(name))
            else:
                self._file(link, outcome)
            return
        if (name, drop.sha256) in self._taken:
            return  # this content was taken already: its result file tells the outcome
        sig_name = name + SIGNATURE_SUFFIX
        signature = None
        if is_configmap_link(self.path, sig_name):
            with contextlib.suppress(OSError, Vanished, VerificationFailed):
                signature = resolve(self.path, sig_name, max_bytes=MAX_SIGNATURE_BYTES).data
        copy = self._taken.stage(drop, signature)
        try:
            outcome = self._process(copy)
        except Vanished:
            return
        outcome.details["configmap"] = {
            "file": name,
            "sha256": drop.sha256,
            "data": drop.version_dir,
        }
        file_outcome(copy, outcome, into=self._outcomes)
        self._taken.add(name, drop.sha256)
        with self._cond:
            self._signatures.discard(sig_name)

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

    def _file_kept(self, path: Path, outcome: Outcome, mark: tuple[str, str]) -> None:
        """File the result and the bytes read in the state directory; the drop stays."""
        name, token = mark
        outcome.details["kept"] = {"file": name, "identity": token.removeprefix(KEPT)}
        filed = self._filed(
            path, outcome, lambda: file_outcome(path, outcome, into=self._outcomes, move=False)
        )
        if filed is not None:
            self._taken.add(name, token)  # its .sig stays too: still announced

    def _filed(self, path: Path, outcome: Outcome, file: Callable[[], bool]) -> bool | None:
        """``file()``'s answer, once the folder is safe to file in; ``None``: the agent stopped.

        A failure (``OSError``: the disk full, an outcome folder gone) is tried
        again after a back-off: the outcome stands, its filing waits. Once the
        agent stops, it is tried once more (the drop processed as the stop began
        is finished: SPEC 7), then left in the folder.
        """
        tried = False
        while True:
            with self._cond:
                stopping = self._stopping
            if stopping and (tried or not self._ready()):
                log.warning(
                    "patch folder %s: stopped before %s %s could be filed; it stays in "
                    "the folder (the next start finds it %s)",
                    self.path,
                    shown(path.name),
                    outcome.outcome,
                    "unchanged" if outcome.outcome == "applied" else "again",
                )
                return None
            if not self._ready():
                with self._cond:
                    self._cond.wait(GUARD_INTERVAL_S)
                continue
            tried = stopping
            try:
                newcomer = file()
            except OSError as exc:
                resource = shortage_of(exc) or "the outcome folder cannot be written"
                with self._cond:
                    delay = self._retry.failed(
                        path.name,
                        f"{resource}: its outcome ({outcome.outcome}) cannot be filed "
                        f"({exc.strerror or exc})",
                        fix="free the resource: the outcome is filed by itself then",
                    )
                    if not self._stopping:
                        self._cond.wait(delay)
                continue
            with self._cond:
                self._retry.succeeded()
            if stopping:
                log.info(
                    "patch folder %s: the agent stopped during the processing of %s; it was "
                    "finished first and is filed %s",
                    self.path,
                    shown(path.name),
                    outcome.outcome,
                )
            return newcomer

    def _file(self, path: Path, outcome: Outcome) -> None:
        """File the drop with its result (``_outcome``); a newcomer in its place waits.

        Filed once the folder is safe (its outcome folders there): an unsafe
        folder, or a full disk, holds the outcome back, never loses it, unless
        the agent stops.
        """
        newcomer = self._filed(path, outcome, lambda: file_outcome(path, outcome))
        if newcomer is None:
            return
        if newcomer:
            self.announce(path.name)
        with self._cond:
            self._signatures.discard(path.name + SIGNATURE_SUFFIX)
