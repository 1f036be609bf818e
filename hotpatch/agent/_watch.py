"""The folder's watch: watchdog's inotify reader, each event handed straight to the folder.

What the folder needs of a change is the name that came in complete: a file
closed after writing (``IN_CLOSE_WRITE``), a name renamed in (``IN_MOVED_TO``:
from another folder or from another name in this one -- where it came from
does not matter), a name created (``IN_CREATE``: a link is complete once
made). watchdog's reader (``InotifyFD``: the inotify instance, its thread
blocking on it, the struct parsing) calls ``Watch`` with each event as the
kernel gives it. Its observer is not used: it pairs each ``IN_MOVED_TO``
with an ``IN_MOVED_FROM`` by scanning the events it holds (a burst of N
renames cost N scans of up to N events), holds a rename out of the folder
back half a second (and every event behind it), and makes event objects for
three more threads to pass on -- none of which the folder uses. A full
inotify queue (events lost) is said to the watch itself, as a call
(``on_queue_overflow``): the folder looks at itself again, whatever a
service has set watchdog's logger to.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from watchdog.observers.inotify_c import (
    CallbackId,
    InotifyConstants,
    InotifyEvent,
    InotifyFD,
    Mask,
    WatchDescriptor,
)

__all__ = ["Watch"]

log = logging.getLogger("hotpatch")

_CLOSED = InotifyConstants.IN_CLOSE_WRITE
_MOVED_IN = InotifyConstants.IN_MOVED_TO
_CREATED = InotifyConstants.IN_CREATE
# As watchdog's observer watched a folder: a symlink at the folder's path is not followed.
_MASK = Mask(
    _CLOSED
    | _MOVED_IN
    | _CREATED
    | InotifyConstants.IN_DELETE_SELF
    | InotifyConstants.IN_DONT_FOLLOW
)


class Watch:
    """Calls ``closed``, ``moved_in``, ``created`` with the name of each such event in
    ``path``, and ``lost`` when the kernel dropped events, from watchdog's reader thread.

    ``Watch(...)`` starts watching (``OSError`` when the folder cannot be watched:
    nothing is left running); ``stop()`` ends it and waits for its threads.
    """

    def __init__(
        self,
        path: Path,
        *,
        closed: Callable[[str], None],
        moved_in: Callable[[str], None],
        created: Callable[[str], None],
        lost: Callable[[], None],
    ) -> None:
        self.path = path
        self._closed, self._moved_in, self._created = closed, moved_in, created
        self._lost = lost
        self._reader = InotifyFD()
        self._reader.name = f"hotpatch-watch {path.name}"
        # Started first: a reader that never ran would keep its descriptors when closed.
        self._reader.start()
        try:
            self._reader.add_callback(os.fsencode(path), _MASK, self, CallbackId(id(self)))
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self._reader.stop()
        self._reader.join()

    # -- what watchdog's reader calls (its dispatcher thread) -----------------------------

    def on_event(self, event: InotifyEvent) -> None:
        if not event.name:
            return  # the folder itself (deleted): its guard sees to that
        name = os.fsdecode(event.name)
        if event.mask & _CLOSED:
            self._call(self._closed, name)
        elif event.mask & _MOVED_IN:
            self._call(self._moved_in, name)
        elif event.mask & _CREATED:
            self._call(self._created, name)

    def on_queue_overflow(self) -> None:
        self._call(lambda _: self._lost(), "")

    def on_events_lost(self) -> None:
        """Told once every watch of the reader heard ``on_queue_overflow``: nothing more to do."""

    def on_watch_deleted(self, wd: WatchDescriptor) -> None:
        """The folder went (deleted, or its file system unmounted): its guard sees to that."""

    def _call(self, call: Callable[[str], None], name: str) -> None:
        # An exception would end watchdog's dispatcher thread, and every event after it.
        try:
            call(name)
        except Exception:
            log.exception("patch folder %s: unexpected error on a change of %r", self.path, name)
