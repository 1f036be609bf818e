"""Running short: a failure that is the machine's (disk, descriptors, memory), not the patch's.

A patch that cannot be staged, journalled or filed because the disk is full,
a quota or file size limit is reached, no descriptor or no memory is left, is
not at fault: it is kept and tried again once the resource is back (the
agent's ``hotpatch.agent._resources``). The core names what ran out
(``shortage_of``), so that every side -- the agent, and the serving process
under ``hotpatch run``, which tells its supervisor -- says it alike.

A check that must not need a new descriptor (after an apply: does the way
back still work?) uses a ``SparePair`` made beforehand: a process at its
``RLIMIT_NOFILE`` is then not taken for one whose patch broke that way. What
needs a descriptor of its own at the limit -- a control server accepting one
more connection (a pre-fork worker taking the owner's delivery), the check's
result file, the journal record of a rollback -- gets one from ``SpareFds``:
descriptors held beforehand and given up just for that.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import threading
from collections.abc import Iterator

__all__ = ["RESOURCES", "Shortage", "SpareFds", "SparePair", "is_fd_shortage", "shortage_of"]

# What ran out, by errno: the resource a person can do something about.
RESOURCES = {
    errno.ENOSPC: "disk full (no space left on the device)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file size limit exceeded (RLIMIT_FSIZE, ulimit -f)",
    errno.EMFILE: "out of file descriptors in this process (RLIMIT_NOFILE, ulimit -n)",
    errno.ENFILE: "out of file descriptors on this machine (fs.file-max)",
    errno.ENOMEM: "out of memory",
    errno.ENOBUFS: "out of buffer space",
}


class Shortage(Exception):
    """A patch could not be processed for want of ``resource``; nothing of it was applied."""

    def __init__(self, resource: str, detail: str) -> None:
        super().__init__(f"{resource}: {detail}")
        self.resource = resource
        self.detail = detail


def shortage_of(exc: BaseException) -> str | None:
    """The resource that ``exc`` (or an exception it was raised from) says ran out, if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, Shortage):
            return current.resource
        if isinstance(current, MemoryError):
            return RESOURCES[errno.ENOMEM]
        if isinstance(current, OSError) and current.errno in RESOURCES:
            return RESOURCES[current.errno]
        current = current.__cause__ or current.__context__
    return None


def is_fd_shortage(exc: BaseException) -> bool:
    """Did ``exc`` come of no descriptor being left (this process's limit or the machine's)?"""
    return isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE)


class SpareFds:
    """``count`` descriptors (``/dev/null``) held to be given up when none is left otherwise.

    ``reserve()`` while descriptors are free; at the limit, ``released()``
    closes them for the block that needs them (the lowest numbers free are
    the ones given up, so the block gets them unless another thread takes
    one first) and takes them again after, as far as it can: ``held`` says
    whether they are all there. Thread-safe.
    """

    def __init__(self, count: int = 1) -> None:
        self.count = count
        self._fds: list[int] = []
        self._lock = threading.Lock()

    @property
    def held(self) -> bool:
        return len(self._fds) >= self.count

    def reserve(self) -> None:
        """Hold ``count`` descriptors; ``OSError`` (``EMFILE``...) when they cannot all be had."""
        with self._lock:
            while len(self._fds) < self.count:
                self._fds.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))

    def try_reserve(self) -> bool:
        """``reserve()``, without the error: are they all held now?"""
        with contextlib.suppress(OSError):
            self.reserve()
        return self.held

    def release(self) -> int:
        """Give up the descriptors held; how many there were."""
        with self._lock:
            fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)
        return len(fds)

    @contextlib.contextmanager
    def released(self) -> Iterator[int]:
        """The block runs with the held descriptors given up (how many); taken again after."""
        freed = self.release()
        try:
            yield freed
        finally:
            self.try_reserve()


class SparePair:
    """A connected pair of Unix sockets made before it is needed, and kept while it works.

    ``reserve()`` before a patch goes in (and can break making one, or take the
    last descriptors): the check after it then needs no new descriptor. When
    none can be made, ``reserve`` raises the ``OSError`` (``EMFILE``...) that
    ``shortage_of`` names: the patch is not taken now and is tried again. A
    pair that failed a check is ``spoil``-ed and made anew next time.
    """

    def __init__(self, kind: int = socket.SOCK_STREAM) -> None:
        self.kind = kind
        self._pair: tuple[socket.socket, socket.socket] | None = None

    @property
    def pair(self) -> tuple[socket.socket, socket.socket] | None:
        return self._pair

    def reserve(self) -> tuple[socket.socket, socket.socket]:
        """The pair, made now if there is none; ``OSError`` if it cannot be made."""
        if self._pair is None:
            self._pair = socket.socketpair(socket.AF_UNIX, self.kind)
        return self._pair

    def spoil(self, *, close: bool = True) -> None:
        """Not used again: closed, or (``close=False``) left to whoever still holds it."""
        pair, self._pair = self._pair, None
        if pair is not None and close:
            for end in pair:
                end.close()
