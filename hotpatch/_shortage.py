"""Running short: a failure that is the machine's (disk, descriptors, memory), not the patch's.

A patch that cannot be staged, journalled or filed because the disk is full,
a quota or file size limit is reached, no descriptor or no memory is left, is
not at fault: it is kept and tried again once the resource is back (the
agent's ``hotpatch.agent._resources``). The core names what ran out
(``shortage_of``), so that every side -- the agent, and the serving process
under ``hotpatch run``, which tells its supervisor -- says it alike.

A check that must not need a new descriptor (after an apply: does the way
back still work?) uses a ``SparePair`` made beforehand: a process at its
``RLIMIT_NOFILE`` is then not taken for one whose patch broke that way.
"""

from __future__ import annotations

import errno
import socket

__all__ = ["RESOURCES", "Shortage", "SparePair", "shortage_of"]

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
