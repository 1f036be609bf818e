"""The durable patch level: one file, appended to record by record, rewritten atomically.

An apply or a rollback appends one record (``_journal_format``: a line of JSON
and its CRC) and syncs it (``fdatasync``): what it costs does not depend on the
level. A record is whole or ignored: a crash in the middle of an append leaves
a torn last line, which reading skips and the next append cuts off. When the
records have grown past twice what the file held after its last rewrite, the
next append first rewrites the file whole -- header and one record with the
level and the kept history -- into a temporary file, synced and renamed over
the journal (then the folder is synced): a crash leaves the old file or the
new one. A journal of format 1 (one JSON document, rewritten on each change)
is read as before, and ``upgrade()`` rewrites it in this format the same
atomic way. A newer format is refused with ``JournalError``, never guessed at.

An undo point held across a restart (``hold()``, the supervisor's) keeps the
file itself, as a hard link beside it: whatever the new process does to the
journal -- appends, a compaction, setting it aside for a new baseline --
putting it back is a cut and a rename, which need no new space on the disk.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hotpatch._errors import JournalError
from hotpatch._journal_format import (
    FORMAT,
    JournalEntry,
    JournalState,
    UnsupportedFormat,
    Written,
    decode,
    encode,
    encode_change,
)
from hotpatch._process import alive

__all__ = ["Journal", "UndoPoint"]

# Records are compacted once they have grown past the larger of this and what
# the file held after its last rewrite (so each byte is rewritten O(1) times on average).
COMPACT_MIN = 256 * 1024
COMPACT_GROWTH = 1.0  # ... and past this times that size


def _sync(fd: int) -> None:
    """Data and size on disk (``fdatasync`` where there is one: no need for the times)."""
    getattr(os, "fdatasync", os.fsync)(fd)


_Stamp = tuple[int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns


def _stamp(st: os.stat_result) -> _Stamp:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class _Unknown:
    __slots__ = ()


_UNKNOWN = _Unknown()


class Journal:
    """One journal file: read whole, appended to record by record, rewritten atomically."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.format_found: int | None = None  # the format of the file as last read
        # The file as this object last read or wrote it: an append goes on only if
        # it is still that file (else another writer changed it: it is rewritten).
        self._seen: _Stamp | None = None
        self._end = 0  # where the next record goes (after the last whole record)
        self._base = 0  # the file's size after its last rewrite
        # The bytes on disk as this process last read or wrote them (None: no file),
        # kept only for ``undo_point`` of a whole file; appends do not keep them.
        self._on_disk: bytes | _Unknown | None = _UNKNOWN
        # The state of the file this object knows (``_seen``), followed record by record:
        # what a compaction writes, without reading the file back. None: not known.
        self._written: Written | None = None

    # -- reading ------------------------------------------------------------------------

    def read(self) -> JournalState | None:
        """The recorded state, ``None`` if there is no journal yet."""
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
                st = os.fstat(f.fileno())
        except FileNotFoundError:
            self._forget()
            self._on_disk = None
            return None
        except OSError as exc:
            msg = f"journal {self.path} cannot be read: {exc.strerror or exc}"
            raise JournalError(msg) from exc
        self._forget()
        self._on_disk = _UNKNOWN
        try:
            state, number, end = decode(raw)
        except UnsupportedFormat as exc:
            msg = (
                f"journal {self.path} was written in format {exc}, and this hotpatch reads "
                f"formats 1 to {FORMAT}; nothing was applied. Upgrade hotpatch to replay it, "
                "or move it aside to start at the baseline"
            )
            raise JournalError(msg) from None
        except (ValueError, TypeError) as exc:
            msg = (
                f"journal {self.path} is corrupt ({exc}); nothing was applied. Move it aside "
                "to start at the baseline, or restore it from a backup"
            )
            raise JournalError(msg) from exc
        for entry in state.level:
            if hashlib.sha256(entry.text.encode()).hexdigest() != entry.sha256:
                msg = (
                    f"journal {self.path}: the content of patch {entry.version} does not match "
                    "its sha256; nothing was applied. Move the journal aside to start at the "
                    "baseline, or restore it from a backup"
                )
                raise JournalError(msg, patch=entry.version)
        self.format_found = number
        if number == FORMAT and len(raw) == st.st_size:
            self._seen, self._end = _stamp(st), end
            self._base = min(self._base, end) if self._base else end
            self._written = Written(state)
        return state

    def _forget(self) -> None:
        self._seen, self._end, self.format_found = None, 0, None
        self._written = None

    # -- writing ------------------------------------------------------------------------

    def write(self, state: JournalState) -> None:
        """Replace the journal with ``state``; a crash leaves the old one or the new one."""
        payload = encode(state)
        self._write_bytes(payload, remember=True)
        self.format_found = FORMAT
        self._written = Written(state)

    def upgrade(self, state: JournalState) -> bool:
        """Rewrite a journal read in an older format in this one (atomically); ``True`` if done."""
        if self.format_found is None or self.format_found == FORMAT:
            return False
        self.write(state)
        return True

    def append(
        self,
        pop: int,
        push: list[JournalEntry],
        rows: list[dict[str, Any]],
        whole: Callable[[], JournalState],
    ) -> Callable[[], None]:
        """Record one level change (``pop`` entries off, ``push`` on) and history rows.

        The last row is at the level the change leaves; rows before it carry
        their level (``level``, or ``delta`` from the row before).

        ``whole()`` is the state after the change, written in full when the file
        is not the one this object knows (none yet, an older format, or changed
        by another writer). Returns what puts the journal back as it was.
        """
        if self._seen is not None and self._compaction_due():
            self.compact()
        record = encode_change(pop, push, rows)
        try:
            fd = os.open(self.path, os.O_WRONLY)
        except FileNotFoundError:
            fd = -1
        except OSError as exc:
            raise self._cannot_write(exc) from exc
        try:
            if fd < 0 or self._seen is None or _stamp(os.fstat(fd)) != self._seen:
                return self._replace(whole())
            start = self._end
            try:
                if os.fstat(fd).st_size > start:
                    os.ftruncate(fd, start)  # a torn record a crash left: never followed
                _pwrite_all(fd, record, start)
                _sync(fd)
                self._seen = _stamp(os.fstat(fd))
            except OSError as exc:
                with contextlib.suppress(OSError):  # take the record back out if we can
                    os.ftruncate(fd, start)
                self._seen = None  # the record may or may not be there: read again first
                self._written = None
                raise self._cannot_write(exc) from exc
            self._end = start + len(record)
            if self._written is not None:
                self._written.change(pop, push, rows)
            self._on_disk = _UNKNOWN
            return lambda: self._cut(start)
        finally:
            if fd >= 0:
                os.close(fd)

    def _compaction_due(self) -> bool:
        grown = self._end - self._base
        return grown > max(COMPACT_MIN, COMPACT_GROWTH * self._base)

    def compact(self) -> None:
        """Rewrite the journal as its state alone (atomically), dropping what is superseded.

        The state is the one this object followed as it wrote the file, when the
        file is still the one it wrote; else the file is read back first.
        """
        written = self._written
        if written is not None and self._seen is not None and self._stamp_now() == self._seen:
            self._write_bytes(written.encode(), remember=True)
            self._written = written
            return
        state = self.read()
        if state is not None:
            self.write(state)

    def _stamp_now(self) -> _Stamp | None:
        try:
            return _stamp(os.stat(self.path))
        except OSError:
            return None

    def _cut(self, end: int) -> None:
        """Undo the last append: the file back to ``end`` bytes, if it is still ours."""
        try:
            fd = os.open(self.path, os.O_WRONLY)
        except OSError as exc:
            raise self._cannot_write(exc) from exc
        try:
            if _stamp(os.fstat(fd)) != self._seen:
                msg = (
                    f"journal {self.path} changed while a change was being undone; it may "
                    "record that change: check `hotpatch history` against the running level"
                )
                raise JournalError(msg)
            os.ftruncate(fd, end)
            _sync(fd)
            self._seen, self._end = _stamp(os.fstat(fd)), end
            self._written = None  # the change taken out: read back at the next compaction
        except OSError as exc:
            self._seen = None
            self._written = None
            raise self._cannot_write(exc) from exc
        finally:
            os.close(fd)

    def _replace(self, state: JournalState) -> Callable[[], None]:
        """Write ``state`` whole over whatever is there; returns what puts that back."""
        try:
            prior: bytes | None = self.path.read_bytes()
        except FileNotFoundError:
            prior = None
        except OSError as exc:
            raise self._cannot_write(exc) from exc
        self.write(state)
        if prior is None:
            return self._remove
        return lambda: self._write_bytes(prior, remember=False)

    def undo_point(self) -> Callable[[], None]:
        """A function that puts the journal back exactly as it is now (or removes it).

        It keeps the whole file's bytes: for a point held across a restart (the
        supervisor's), not for each change (``append`` returns its own undo).
        """
        if isinstance(self._on_disk, _Unknown):
            try:
                self._on_disk = self.path.read_bytes()
            except FileNotFoundError:
                self._on_disk = None
            except OSError as exc:
                msg = f"journal {self.path} cannot be read: {exc.strerror or exc}"
                raise JournalError(msg) from exc
        prior = self._on_disk
        if prior is None:
            return self._remove
        return lambda: self._put_back(prior)

    def hold(self) -> UndoPoint:
        """The journal as it is now, kept for a rollback across a restart: ``UndoPoint``.

        The file is kept under a second name (a hard link, ``.NAME.undo-PID-N``
        beside it): putting it back needs no new space. A ``JournalError`` (from
        the ``OSError``) when the link cannot be made for want of a resource (no
        inode or directory block left): a rollback could not be done either, so
        the change must wait. On a file system without hard links the bytes
        alone are kept (``UndoPoint.linked`` is ``False``) and written back whole.
        """
        folder = self.path.parent
        _remove_stale_links(folder, self.path.name)
        link: Path | None = None
        unlinked: str | None = None
        for n in itertools.count(1):
            candidate = folder / f".{self.path.name}.undo-{os.getpid()}-{n}"
            try:
                os.link(self.path, candidate, follow_symlinks=False)
            except FileExistsError:
                continue
            except FileNotFoundError:
                break  # no journal: the point removes the one written since
            except OSError as exc:
                if exc.errno in _SHORT:
                    msg = (
                        f"journal {self.path}: no undo point can be kept for a rollback "
                        f"({exc.strerror or exc}); free space (or inodes) on its file system"
                    )
                    raise JournalError(msg) from exc
                unlinked = exc.strerror or str(exc)  # no hard links here: the bytes alone
            else:
                link = candidate
            break
        kept: tuple[int, int] | None = None
        try:
            prior: bytes | None = (link or self.path).read_bytes()
            if link is not None:
                st = link.stat(follow_symlinks=False)
                kept = (st.st_dev, st.st_ino)
        except FileNotFoundError:
            prior = None
        except OSError as exc:
            if link is not None:
                link.unlink(missing_ok=True)
            msg = f"journal {self.path} cannot be read: {exc.strerror or exc}"
            raise JournalError(msg) from exc
        return UndoPoint(self, prior, link, unlinked, kept)

    def _restore_link(self, link: Path, prior: bytes) -> bool:
        """The file ``link`` keeps, cut back to ``prior``, renamed over the journal; ``False``
        when it no longer begins with ``prior`` (changed in place: nothing done)."""
        fd = os.open(link, os.O_RDWR)
        try:
            st = os.fstat(fd)
            if st.st_size < len(prior) or os.pread(fd, len(prior), 0) != prior:
                return False
            if st.st_size > len(prior):
                os.ftruncate(fd, len(prior))
            _sync(fd)
        finally:
            os.close(fd)
        kept = (st.st_dev, st.st_ino)
        folder = self.path.parent
        try:
            now = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            now = None
        if now is not None and (now.st_dev, now.st_ino) == kept:
            os.unlink(link)  # only appended to since: cut in place
        else:
            os.replace(link, self.path)
        # A name the rolled-back process gave the same file (set aside for its new
        # baseline) goes with it: the folder is as it was before the restart.
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith(f"{self.path.name}.") and not entry.is_symlink():
                    st = entry.stat(follow_symlinks=False)
                    if (st.st_dev, st.st_ino) == kept:
                        os.unlink(entry.path)
        _sync_folder(folder)
        self._forget()
        self._on_disk = prior
        return True

    def _put_back(self, prior: bytes) -> None:
        """The journal as ``prior`` again: cut back to it when only appended to since
        (no space needed: a full disk cannot keep a rolled-back patch in the journal),
        written whole otherwise."""
        try:
            with self.path.open("r+b") as f:
                if f.read(len(prior)) == prior:
                    f.truncate(len(prior))
                    f.flush()
                    os.fsync(f.fileno())
                    self._forget()
                    self._on_disk = prior
                    return
        except OSError:
            pass  # gone, unreadable or not cut: written whole below, or its error said
        self._write_bytes(prior, remember=False)

    def _remove(self) -> None:
        self.path.unlink(missing_ok=True)
        self._forget()
        self._on_disk = None

    def _cannot_write(self, exc: OSError) -> JournalError:
        msg = f"journal {self.path} cannot be written: {exc.strerror or exc}"
        return JournalError(msg)

    def _write_bytes(self, payload: bytes, *, remember: bool) -> None:
        """Replace the file with ``payload``: temporary file, sync, rename, sync the folder.

        ``remember``: the payload is a journal of this format, to append to.
        """
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=folder)
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(payload)
                    out.flush()
                    os.fsync(out.fileno())
                    st = os.fstat(out.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            _sync_folder(folder)
        except OSError as exc:
            self._forget()  # the rename may or may not have happened
            self._on_disk = _UNKNOWN
            raise self._cannot_write(exc) from exc
        self._forget()
        if remember:
            self._seen, self._end, self._base = _stamp(st), len(payload), len(payload)
            self.format_found = FORMAT
        self._on_disk = payload

    def set_aside(self, reason: str) -> Path:
        """Move the journal out of the way (kept for inspection); returns where it went."""
        target = self.path.with_name(f"{self.path.name}.{reason}")
        n = 1
        while target.exists():
            n += 1
            target = self.path.with_name(f"{self.path.name}.{reason}.{n}")
        try:
            os.replace(self.path, target)
        except OSError as exc:
            msg = (
                f"journal {self.path} cannot be moved aside to {target.name}: "
                f"{exc.strerror or exc}; move it yourself, then start again"
            )
            raise JournalError(msg) from exc
        self._forget()
        self._on_disk = None
        return target


class UndoPoint:
    """The journal as it was when held (``Journal.hold``): ``restore()`` puts it back,
    ``discard()`` lets it go once no rollback can need it (the kept file is removed).

    Put back through the kept file (cut back, renamed over the journal): no new
    space needed, so a full disk cannot leave a rolled-back patch in the journal
    for the next process to replay. A kept file removed by hand is looked for
    under the other names of the same file (the journal set aside by a new
    baseline's process). Without a kept file (none could be made, or it is
    gone) the bytes are put back as ``undo_point`` does -- cut back in place
    when only appended to since, else written whole, the last resort, which
    needs room: on a full disk that is a ``JournalError`` from the ``OSError``
    (``shortage_of`` names the resource), the journal left as it was, whole,
    and ``restore`` may be tried again once there is room.
    """

    def __init__(
        self,
        journal: Journal,
        prior: bytes | None,
        link: Path | None,
        unlinked: str | None,
        kept: tuple[int, int] | None = None,
    ) -> None:
        self._journal = journal
        self._prior = prior
        self._link = link
        self._kept = kept  # (st_dev, st_ino) of the kept file
        self.unlinked = unlinked  # why no file could be kept (bytes alone), if so

    def restore(self) -> None:
        """The journal as it was when held (removed if there was none); ``JournalError``."""
        journal, prior, link = self._journal, self._prior, self._link
        if prior is None:
            journal._remove()
            return
        without = f"its file system keeps no second name ({self.unlinked})"
        if link is not None:
            if not os.path.lexists(link):  # removed by hand: the same file by another name?
                without = f"the file kept for it ({link.name}) was removed"
                link = _same_file(link.parent, self._kept, journal.path) or link
            try:
                done = journal._restore_link(link, prior)
            except OSError:
                done = False  # not cut or not renamed: the bytes below (their error says why)
            if done:
                self._link = None
                return
        try:
            journal._put_back(prior)
        except JournalError as exc:
            msg = (
                f"journal {journal.path} cannot be put back as it was: {without}, so it is "
                f"written whole, which failed ({exc}); it is left as it is, whole. Free space "
                "on its file system"
            )
            raise JournalError(msg) from exc

    def discard(self) -> None:
        """No rollback will need this point: the kept file goes (its space, if it was the
        only name left)."""
        link, self._link = self._link, None
        if link is not None:
            with contextlib.suppress(OSError):
                link.unlink()


# What a link that cannot be made says about the file system: full (inodes,
# directory blocks, quota), not "no hard links here".
_SHORT = frozenset({errno.ENOSPC, errno.EDQUOT})
_LINK_NAME = re.compile(r"\.(?P<name>.+)\.undo-(?P<pid>[0-9]+)-[0-9]+")


def _same_file(folder: Path, kept: tuple[int, int] | None, journal: Path) -> Path | None:
    """Another name in ``folder`` than ``journal``'s of the file ``kept`` identifies, if any."""
    if kept is None:
        return None
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name == journal.name:
                    continue  # the journal itself, only appended to: cut in place
                st = entry.stat(follow_symlinks=False)
                if (st.st_dev, st.st_ino) == kept and entry.is_file(follow_symlinks=False):
                    return Path(entry.path)
    except OSError:
        return None
    return None


def _remove_stale_links(folder: Path, name: str) -> None:
    """Kept files of undo points whose process is gone (killed before it let them go)."""
    try:
        entries = os.listdir(folder)
    except OSError:
        return
    for entry in entries:
        match = _LINK_NAME.fullmatch(entry)
        if match is None or match["name"] != name or alive(int(match["pid"])):
            continue
        with contextlib.suppress(OSError):
            os.unlink(folder / entry)


def _sync_folder(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
