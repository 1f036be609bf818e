"""The folder's queue: drops announced complete and not taken yet, lowest version first.

A drop's version is read without importing anything (the
``Patch(version="...")`` literal, or ``patch.toml`` of a bundle), once per
announcement, and remembered while the file stays the same (inode, size,
modification time); a file whose version cannot be read goes last. Drops
announced within ``SETTLE_S`` (5 ms) of each other are one burst: a drop is
taken once the folder has been quiet that long. On a loaded machine the
settle is longer, by twice how late the agent's own timers fire lately
(``hotpatch.agent._lateness``, at most 50 ms more): ``mv`` is descheduled
between two renames about as long as they are late. A file with a lower version
that is visible in the folder but not announced yet (still open, or its event
in flight) is waited for, up to ``HOLD_BACK_S`` (1 s). While a burst waits,
those are found without listing the folder for each drop
(``hotpatch.agent._arrivals``: what came in and went, from the kernel), so a
drop costs the same however many wait behind it. Once a drop is checked, just
before it is applied, ``lower_than`` looks again: a lower version that came
meanwhile goes first (``hotpatch.agent._turn``).

The queue finds the order; ``hotpatch.agent._folder`` watches the folder,
announces what is complete, and processes and files what it takes.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import stat
import threading
import time
from pathlib import Path

from packaging.version import Version

from hotpatch._errors import VerificationFailed
from hotpatch._patch import VersionKey, version_key
from hotpatch.agent._arrivals import Arrivals
from hotpatch.agent._configmap import Taken, is_configmap_link, resolve
from hotpatch.agent._drops import (
    Vanished,
    bundle_version,
    is_bundle_name,
    is_ignored,
    peek_version,
    read_patch_file,
)
from hotpatch.agent._lateness import TIMERS, TimerLateness
from hotpatch.agent._names import shown
from hotpatch.agent._outcome import OUTCOME_DIRS
from hotpatch.agent._signing import SIGNATURE_SUFFIX

__all__ = ["HOLD_BACK_S", "SETTLE_S", "DropQueue"]

SETTLE_S = 0.005
HOLD_BACK_S = 1.0
_BURST = 2  # drops queued from which the folder's changes are watched, not listed

# (0, the version's key, name), or (1, the lowest key, name) when no version can be read.
# Ints and strings only (``version_key``): compared in C, and not tracked by the garbage
# collector once it has seen them, so a burst of N waiting costs it nothing per drop.
SortKey = tuple[int, VersionKey, str]
_UNKNOWN = version_key(Version("0"))


class DropQueue:
    """The drops of one folder waiting to be processed; ``take()`` gives them in version order.

    It shares the folder's condition ``cond``: ``add``, ``add_again``,
    ``requeue``, ``close``, ``rewatch`` and ``names`` are called holding it,
    ``take`` and ``forget`` by the folder's worker alone, without it, and
    ``stopped`` once the worker is gone. ``keep``: the folder
    is only read (drops stay in it), ``taken`` notes what was taken already.
    ``timers``: how late timers fire (the process's), which lengthens the settle.
    """

    def __init__(
        self,
        path: Path,
        cond: threading.Condition,
        *,
        max_bytes: int,
        keep: bool,
        taken: Taken,
        timers: TimerLateness = TIMERS,
    ) -> None:
        self.path = path
        self._timers = timers
        self._cond = cond
        self._max_bytes = max_bytes
        self._keep = keep
        self._taken = taken
        self._queue: dict[str, int] = {}  # name -> arrival number
        # The names queued again (arrival -1: before all others), in the order they were.
        self._requeued: dict[str, None] = {}
        self._next_arrival = 0  # the number of the next arrival: they only grow
        self._given_up: set[str] = set()  # unannounced names no longer waited for
        self._keys: dict[str, tuple[tuple[int, int, int], SortKey]] = {}
        # The queued drops by (key, arrival), a heap (lowest first: taking one and sorting
        # one in cost O(log N), not a shift of the N waiting behind it); kept by the worker
        # alone. A name announced again gets a new entry; the old one is dropped when met.
        self._order: list[tuple[SortKey, int, str]] = []
        self._unsorted: set[str] = set()  # announced since the worker last sorted
        self._sorted_at = 0.0  # when the worker last sorted drops in
        self._last_announced = 0.0
        self._came: dict[str, float] = {}  # name -> when last announced (time.monotonic)
        self._closed = False
        # The names the kernel said came in that were not queued when last looked at
        # (the worker's alone): any of them may be a lower version not announced yet.
        self._changes: Arrivals | None = None
        self._unheard: set[str] = set()
        self._rewatch = False  # the folder was replaced: watch its changes anew
        self.current: str | None = None  # the drop taken and being processed
        self.came = 0.0  # when the current drop was announced (time.monotonic)

    def __len__(self) -> int:
        return len(self._queue)

    # -- under the condition ------------------------------------------------------------

    def add(self, name: str) -> None:
        """``name`` was announced complete: queued, its version read again."""
        self._queue.setdefault(name, self._number())
        self._given_up.discard(name)
        self._keys.pop(name, None)  # changed, or new: its version is read again
        self._unsorted.add(name)
        self._last_announced = self._came[name] = time.monotonic()

    def add_again(self, name: str) -> None:
        """A drop that stays in the folder may go in now (a new signature): queued again."""
        self._queue.setdefault(name, self._number())
        self._last_announced = self._came[name] = time.monotonic()

    def _number(self) -> int:
        self._next_arrival += 1
        return self._next_arrival - 1

    def requeue(self, name: str) -> None:
        """``name`` back in the queue, before the drops of its version."""
        if self._queue.setdefault(name, -1) == -1:
            self._requeued[name] = None
        self._unsorted.add(name)  # sorted in again: its entry was taken off the order
        if name == self.current:
            self._came.setdefault(name, self.came)

    def close(self) -> None:
        """``take()`` gives nothing from now on (the folder stops)."""
        self._closed = True

    def rewatch(self) -> None:
        """The folder at the path was replaced: its arrivals are watched anew at the next look."""
        self._rewatch = True

    def names(self, limit: int | None = None) -> list[str]:
        """The drops waiting, as shown to people (the current one first, then by arrival);
        ``limit``: the first that many only, at a cost that does not grow with the queue
        (a status asked for after each drop of a burst would cost N names each)."""
        # The queue's own order is the arrivals' (a name queued again keeps its place,
        # one queued anew comes last), but for the names queued again: first.
        first = [self.current] if self.current else []
        ordered = itertools.chain(
            first, self._requeued, (n for n in self._queue if n not in self._requeued)
        )
        return [shown(name) for name in itertools.islice(ordered, limit)]

    # -- the worker ---------------------------------------------------------------------

    @property
    def settle(self) -> float:
        """How long the folder must be quiet for a burst to be over: ``SETTLE_S`` on an idle
        machine, longer by twice the timers' lateness (capped) on a loaded one."""
        return self._timers.settle(SETTLE_S)

    def forget(self, name: str) -> None:
        """``name`` was processed: its version is read again if it comes back."""
        self._keys.pop(name, None)

    def stopped(self) -> None:
        """The worker is gone (the folder stopped): the watch of the folder's changes is closed."""
        self._close_changes()

    def _close_changes(self) -> None:
        if self._changes is not None:
            self._changes.close()
            self._changes = None

    def take(self) -> str | None:
        """Take the queued drop with the lowest version, once its burst has settled.

        A burst (``mv *.py patches/`` renames one file at a time) is over when
        nothing new was announced for the settle (``settle``); a lower version
        visible in the folder but not announced yet is waited for, up to
        ``HOLD_BACK_S``.
        """
        deadline = time.monotonic() + HOLD_BACK_S
        while True:
            with self._cond:
                if self._closed or not self._queue:
                    return None
                queued = _Queued(self._queue, self._cond, self._next_arrival)
                fresh, self._unsorted = self._unsorted, set()
                quiet = time.monotonic() - self._last_announced
            if self._sort_in(fresh, queued):
                continue
            now = time.monotonic()
            quiet = min(quiet, now - self._sorted_at)
            settle = self.settle
            if quiet < settle and now < deadline:
                with self._cond:
                    started, timeout = time.monotonic(), settle - quiet
                    if not self._cond.wait(timeout):  # timed out: how late, the load tells
                        self._timers.waited(started, timeout)
                continue
            lowest = self._lowest(queued)
            if lowest is None:  # never expected: sort every queued drop again
                with self._cond:
                    self._unsorted.update(self._queue)
                continue
            key, best = lowest
            lower = [
                name
                for name in self._unannounced(queued)
                if name not in self._given_up and self._key(name) < key
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
                self._requeued.pop(best, None)
                self.current = best
                self.came = self._came.pop(best, now)
            heapq.heappop(self._order)  # best's entry: only this thread changes the order
            return best

    def lower_than(self, version: str) -> str | None:
        """A drop of a lower version than ``version`` (the current drop's) that came since it
        was taken: queued, or in the folder and not announced yet; ``None``: none.

        Asked just before the current drop is applied: what a move brought in
        after its first file was taken still goes in first. A name no longer
        waited for (``HOLD_BACK_S`` passed) is not asked about again.
        """
        with self._cond:
            queued = _Queued(self._queue, self._cond, self._next_arrival)
            fresh, self._unsorted = self._unsorted, set()
        self._sort_in(fresh, queued)
        # above every lower version's key only
        ceiling: SortKey = (0, version_key(Version(version)), "")
        lowest = self._lowest(queued)
        if lowest is not None and lowest[0] < ceiling:
            return lowest[1]
        for name in self._unannounced(queued):
            if name != self.current and name not in self._given_up and self._key(name) < ceiling:
                return name
        return None

    def _sort_in(self, fresh: set[str], queued: _Queued) -> bool:
        """Sort the drops announced since the last look into the order; were there any?"""
        # Each drop is read and sorted in once, when announced: a burst of N
        # costs N reads and insertions, not N for each of its drops.
        for name in fresh:
            arrival = queued.get(name)
            if arrival is not None:
                heapq.heappush(self._order, (self._key(name), arrival, name))
        if fresh:
            # Reading them took a while, during which the watcher may not have had
            # its turn: the quiet that ends the burst counts from now on.
            self._sorted_at = time.monotonic()
        return bool(fresh)

    def _lowest(self, queued: _Queued) -> tuple[SortKey, str] | None:
        """The first entry of the order that is still queued as it was sorted in."""
        order = self._order
        while order:
            key, arrival, name = order[0]
            if queued.get(name) != arrival or self._known_key(name) != key:
                heapq.heappop(order)  # taken, queued again, or announced again: stale
                continue
            now = self._key(name)  # the file itself: changed without a word?
            if now != key:
                heapq.heapreplace(order, (now, arrival, name))
                continue
            return key, name
        return None

    def _unannounced(self, queued: _Queued) -> list[str]:
        """Names in the folder that could be drops but have not been announced yet."""
        try:
            names = self._arrived(queued)
        except OSError:
            return []
        found = []
        for n in list(names):
            if (
                n in queued
                or is_ignored(n)
                or n.endswith(SIGNATURE_SUFFIX)
                or n in OUTCOME_DIRS.values()
                or is_configmap_link(self.path, n)  # announced by the kubelet's swap
                # Taken, and stays: changed since, its event announces it (no stat per pick).
                or (self._keep and self._taken.has_name(n))
            ):
                self._unheard.discard(n)
            else:
                found.append(n)
        return found

    def _arrived(self, queued: _Queued) -> set[str]:
        """The names that came in and were not queued when looked at, up to now.

        While a burst waits (two drops queued or more), kept from the
        kernel's account of the folder's changes (``Arrivals``): a look costs
        what changed since the last one, not what the folder holds. Otherwise
        -- one drop, or no inotify instance to be had, or the folder replaced
        and not watched again yet -- the folder is listed. The watch is held
        only while a burst waits: inotify instances are few
        (``fs.inotify.max_user_instances``, shared by a user's processes).
        """
        with self._cond:
            rewatch, self._rewatch = self._rewatch, False
        if rewatch or len(queued) < _BURST:
            self._close_changes()
        if self._changes is None and len(queued) >= _BURST:
            self._changes = Arrivals.open(self.path)
        look = self._changes.look() if self._changes is not None else None
        if look is None:
            return set(os.listdir(self.path))
        if look.whole:
            self._unheard = look.came
        else:
            self._unheard -= look.went
            self._unheard |= look.came
        return self._unheard

    def _known_key(self, name: str) -> SortKey:
        """``_key(name)`` as last read, without looking at the file again."""
        cached = self._keys.get(name)
        return cached[1] if cached is not None else self._key(name)

    def _key(self, name: str) -> SortKey:
        """Sort key of a drop: its version when it can be read without importing, else last."""
        if is_configmap_link(self.path, name):
            return self._configmap_key(name)
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
        key: SortKey = (0, version_key(Version(version)), name) if version else (1, _UNKNOWN, name)
        self._keys[name] = (identity, key)
        return key

    def _configmap_key(self, name: str) -> SortKey:
        """A ConfigMap file's sort key (read through its link each time: ``..data`` swaps)."""
        version: str | None = None
        if name.endswith(".py"):
            with contextlib.suppress(OSError, Vanished, VerificationFailed):
                version = peek_version(resolve(self.path, name, max_bytes=self._max_bytes).data)
        return (0, version_key(Version(version)), name) if version else (1, _UNKNOWN, name)


class _Queued:
    """The queue as the worker last looked at it, without a copy of it (a burst of N
    drops would copy up to N names for each of them).

    Other threads only add to the queue meanwhile, each arrival numbered from
    ``mark`` on (a name queued already keeps its number); only the worker
    takes names out. So a name with a number below ``mark`` is one that was
    queued when it looked, and one with none, or a later one, was not.
    """

    __slots__ = ("_cond", "_mark", "_queue", "_size")

    def __init__(self, queue: dict[str, int], cond: threading.Condition, mark: int) -> None:
        self._queue, self._cond, self._mark = queue, cond, mark
        self._size = len(queue)  # taken holding the condition, as the mark

    def get(self, name: str) -> int | None:
        with self._cond:
            arrival = self._queue.get(name)
        return arrival if arrival is not None and arrival < self._mark else None

    def __contains__(self, name: str) -> bool:
        return self.get(name) is not None

    def __len__(self) -> int:
        return self._size
