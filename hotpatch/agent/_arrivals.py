"""Names coming into and going from the watched folder, read from the kernel without waiting.

The folder's queue holds back a drop while a lower version is in the folder
but not announced yet (still being written, or its event still on its way
through the watcher's thread). Listing the whole folder for every drop taken
finds those, but costs as much as the folder is large: a burst of N drops
cost N listings of up to N names. ``Arrivals`` has an inotify instance of its
own, read without blocking by whoever looks (the folder's worker), so that
what it says does not wait on any other thread: every name created, renamed
or linked into the folder before the look is in the answer, and so is every
name deleted or renamed away. The folder is listed at the first look, and
again only when the kernel says events were lost (its queue overflowed). When
the folder itself is deleted, renamed or replaced, its watch goes with it:
``look`` says so, and the caller lists the folder until it opens new
``Arrivals`` on the folder there now.

Linux only (as the folder's watch is); where an inotify instance cannot be
had (``fs.inotify.max_user_instances`` reached), ``Arrivals.open`` gives
``None`` and the caller lists the folder as before.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import NamedTuple

from watchdog.observers.inotify_c import InotifyConstants, inotify_add_watch, inotify_init

__all__ = ["Arrivals", "Look"]

_HERE = (
    InotifyConstants.IN_CREATE | InotifyConstants.IN_MOVED_TO
)  # a name came in: created, renamed or linked in
_GONE = (
    InotifyConstants.IN_DELETE | InotifyConstants.IN_MOVED_FROM
)  # a name went: deleted or renamed away
_GONE_SELF = (
    InotifyConstants.IN_IGNORED | InotifyConstants.IN_DELETE_SELF | InotifyConstants.IN_MOVE_SELF
)  # the path is no longer watched
_MASK = (
    _HERE
    | _GONE
    | InotifyConstants.IN_DELETE_SELF
    | InotifyConstants.IN_MOVE_SELF
    | InotifyConstants.IN_ONLYDIR
)
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then the name
_READ_BYTES = 64 * 1024


class Look(NamedTuple):
    """What changed in the folder since the last look."""

    came: set[str]  # names created, renamed or linked in (and not gone again)
    went: set[str]  # names deleted or renamed away (and not back again)
    whole: bool  # ``came`` is everything in the folder: listed, events having been lost


class Arrivals:
    """The changes of one folder's names, as the kernel reported them; ``look()`` reads them.

    Made by ``open``; used by one thread at a time; ``close`` when done.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd
        self._came: set[str] = set()
        self._went: set[str] = set()
        self._lost = True  # the folder is listed at the next look
        self._blind = False  # the watch is gone with its folder

    @classmethod
    def open(cls, path: Path) -> Arrivals | None:
        """Watch ``path`` for names coming and going; ``None``: no inotify instance to be had."""
        fd = inotify_init()
        if fd < 0:
            return None
        os.set_blocking(fd, False)  # read by whoever looks, never waited on
        os.set_inheritable(fd, False)  # not left open in a program a patch's check runs
        if inotify_add_watch(fd, os.fsencode(path), _MASK) < 0:
            os.close(fd)
            return None
        return cls(path, fd)

    def look(self) -> Look | None:
        """The changes since the last look; ``None``: the watch is gone, list the folder.

        The first look, and the first after the kernel lost events (its queue
        overflowed), lists the folder. Raises ``OSError`` when that listing fails
        (the folder gone: its guard says so).
        """
        self._read()
        if self._blind:
            return None
        whole = self._lost
        if whole:
            # Watched first (since ``open``), listed second: a name that comes in
            # between is seen twice, harmlessly, never missed.
            self._came, self._went = set(), set()
            listed = set(os.listdir(self.path))
            self._lost = False
            self._read()  # what came and went while listing
            if self._fd < 0:  # the folder went meanwhile
                return None
            self._came |= listed - self._went
        look = Look(self._came, self._went, whole)
        self._came, self._went = set(), set()
        return look

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _read(self) -> None:
        while self._fd >= 0:
            try:
                chunk = os.read(self._fd, _READ_BYTES)
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            if not chunk:
                return
            self._take(chunk)

    def _take(self, chunk: bytes) -> None:
        """Note the events in ``chunk``, in order (whole events: the kernel never splits one)."""
        offset, end = 0, len(chunk)
        while offset + _EVENT.size <= end:
            _wd, mask, _cookie, length = _EVENT.unpack_from(chunk, offset)
            start = offset + _EVENT.size
            offset = start + length
            if mask & _GONE_SELF:
                self._blind = True
                self.close()
                return
            if mask & InotifyConstants.IN_Q_OVERFLOW:
                self._lost = True
                continue
            name = os.fsdecode(chunk[start:offset].rstrip(b"\0"))
            if not name:
                continue
            if mask & _HERE:
                self._came.add(name)
                self._went.discard(name)
            elif mask & _GONE:
                self._went.add(name)
                self._came.discard(name)
