"""Preserved state and its rounds: dirty-tracking dicts, framed pickles in sealed memfds."""

from __future__ import annotations

import contextlib
import fcntl
import gc
import mmap
import os
import pickle
import struct
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from errno import EMFILE, ENFILE
from typing import Any, BinaryIO, Self

from hotpatch._errors import ServiceError

__all__ = ["PreservedDict", "PreservedState", "RoundWriter", "read_round", "seal"]

# A round is a stream of records, each an 8-byte length and a pickle (the
# record kinds are listed in hotpatch.service._api's docstring).
_FRAME = struct.Struct("<Q")
_RETRIES = 3
# A round is written by the control thread while the service serves: every
# this much pickling it lets the serving threads have the GIL, so their
# requests do not queue behind it (the interpreter would only switch every
# sys.getswitchinterval(), once per blocking call of theirs).
_YIELD_EVERY_S = 0.002


class PreservedDict(dict[Any, Any]):
    """A dict whose changes since the last hand-over round are known, per top-level key.

    Tracked: assignment, ``del``, ``pop``, ``popitem``, ``setdefault``,
    ``update``, ``|=`` and ``clear``; ``d[k] += 1`` is an assignment, so it
    is tracked too. **Not tracked**: changing a value in place (``d[k].append(x)``,
    ``d[k]["field"] = 1``): call ``d.touch(k)`` afterwards, or assign the
    changed value again. A change that is neither tracked nor touched reaches
    the new process only if a later round carries that key for another reason.

    The unit that crosses is a whole top-level value, pickled on its own:
    keep values moderate in size (a restart re-sends every value changed
    since the last round), and do not rely on two values sharing one object
    (after a restart each has its own copy). Keys and values must pickle.
    """

    __slots__ = ("_dirty", "_sealed", "name")

    def __init__(self, name: str, contents: Mapping[Any, Any] | None = None, /) -> None:
        dict.__init__(self, contents or {})
        self.name = name
        self._dirty: set[Any] = set()
        self._sealed: str | None = None  # why it may no longer change (handed over)

    # Mutate first, then mark: a round that swaps the dirty set in between
    # sees the new value, and the late mark only re-sends it.

    def __setitem__(self, key: Any, value: Any) -> None:
        if self._sealed is not None:
            self._refuse(key)
        dict.__setitem__(self, key, value)
        self._dirty.add(key)

    def __delitem__(self, key: Any) -> None:
        if self._sealed is not None:
            self._refuse(key)
        dict.__delitem__(self, key)
        self._dirty.add(key)

    def pop(self, key: Any, *default: Any) -> Any:
        if self._sealed is not None:
            self._refuse(key)
        value = dict.pop(self, key, *default)
        self._dirty.add(key)
        return value

    def popitem(self) -> tuple[Any, Any]:
        if self._sealed is not None:
            self._refuse("(popitem)")
        key, value = dict.popitem(self)
        self._dirty.add(key)
        return key, value

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if self._sealed is not None:
            if key not in self:
                self._refuse(key)
            return dict.__getitem__(self, key)  # a read: nothing to mark
        value = dict.setdefault(self, key, default)
        self._dirty.add(key)  # conservatively: the caller may be about to change it
        return value

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def __ior__(self, other: Any) -> Self:  # type: ignore[misc]
        self.update(other)
        return self

    def clear(self) -> None:
        if self._sealed is not None and self:
            self._refuse("(clear)")
        while True:
            try:
                key, _ = dict.popitem(self)
            except KeyError:
                return
            self._dirty.add(key)

    def touch(self, *keys: Hashable) -> None:
        """Declare that the values under ``keys`` were changed in place."""
        if self._sealed is not None and keys:
            self._refuse(keys[0])
        self._dirty.update(keys)

    def _refuse(self, key: Any) -> None:
        msg = (
            f"preserved({self.name!r}) key {key!r} changed after this process handed its "
            f"state over ({self._sealed}); the change would be lost, so it is refused: "
            f"finish work in flight before the drain callback returns (or before main "
            f"returns, with SIGTERM), and take no new work after"
        )
        raise ServiceError(msg)

    def copy(self) -> dict[Any, Any]:
        """A plain ``dict`` copy (copies are not preserved)."""
        return dict(self)

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (dict(self),))

    def __repr__(self) -> str:
        return f"PreservedDict({self.name!r}, {dict.__repr__(self)})"

    def _take_dirty(self) -> set[Any]:
        dirty, self._dirty = self._dirty, set()
        return dirty


class RoundWriter:
    """Writes framed pickled records into a memfd, within a size limit."""

    def __init__(self, out: BinaryIO, limit: int) -> None:
        self.out = out
        self.limit = limit
        self.size = 0
        self.records = 0
        self.since_yield = time.perf_counter()

    def write(self, record: tuple[Any, ...]) -> None:
        self._frame(pickle.dumps(record, protocol=5))

    def entry(self, state: PreservedDict, key: Any) -> None:
        for _ in range(_RETRIES):
            try:
                value = dict.__getitem__(state, key)
            except KeyError:
                self.write(("d", state.name, key))
                return
            try:
                payload = pickle.dumps(("s", state.name, key, value), protocol=5)
            except RuntimeError:
                continue  # another thread changed the value while it was pickled; again
            except Exception as exc:
                msg = (
                    f"preserved({state.name!r}) key {key!r} cannot be pickled "
                    f"({type(exc).__name__}: {exc}); keep only picklable values in preserved state"
                )
                raise ServiceError(msg) from exc
            self._frame(payload)
            return
        state.touch(key)  # changing faster than it pickles: the next round carries it

    def _frame(self, payload: bytes) -> None:
        self.size += _FRAME.size + len(payload)
        if self.size > self.limit:
            msg = (
                f"the preserved state is larger than the hand-over limit "
                f"({self.limit / 2**20:.0f} MB); raise --state-mb or keep less state"
            )
            raise ServiceError(msg)
        self.out.write(_FRAME.pack(len(payload)))
        self.out.write(payload)
        self.records += 1
        if time.perf_counter() - self.since_yield > _YIELD_EVERY_S:
            time.sleep(0)
            self.since_yield = time.perf_counter()


def read_round(fd: int, size: int) -> Iterator[tuple[Any, ...]]:
    """The records of a round, read straight from the shared memory (no copy)."""
    if size == 0:
        return
    with mmap.mmap(fd, size, prot=mmap.PROT_READ) as mapped:
        view = memoryview(mapped)
        try:
            position = 0
            while position < size:
                (length,) = _FRAME.unpack_from(view, position)
                position += _FRAME.size
                with view[position : position + length] as payload:
                    yield pickle.loads(payload)
                position += length
        finally:
            view.release()


def seal(fd: int) -> None:
    """Seal a memfd against any further change of its size or content."""
    seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)


class PreservedState:
    """A process's preserved mappings, written out and read back as rounds.

    ``lock`` guards them; the runtime shares it (a hand-over in progress
    holds it). ``limit`` is the largest round it writes (``--state-mb``).
    """

    def __init__(self, lock: threading.RLock | None = None, *, limit: int = 1 << 40) -> None:
        self.lock = lock if lock is not None else threading.RLock()
        self.limit = limit
        self.names: dict[str, PreservedDict] = {}
        self.unsent: set[str] = set()  # declared since the last round
        self.pending: dict[str, dict[Any, Any]] = {}  # received, not declared yet
        self.extra: dict[str, Any] = {}  # what the ``hotpatch_save_state`` hooks handed over
        self.sealed: str | None = None  # set by ``seal``: the final round was taken
        # A memfd kept for the final round: a process at its descriptor limit
        # (RLIMIT_NOFILE) can still hand its state over (``keep_reserve``).
        self._reserve: int | None = None

    def keep_reserve(self) -> None:
        """Make the memfd the final round is written into if no new one can be made."""
        if self._reserve is None:
            with contextlib.suppress(OSError):  # at the limit already: the next round tries
                self._reserve = os.memfd_create(
                    "hotpatch-state", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
                )

    def _memfd(self, *, final: bool) -> int:
        """A new memfd for a round; for the final one, the reserve if none can be made."""
        if not final:
            self.keep_reserve()
        try:
            return os.memfd_create("hotpatch-state", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        except OSError as exc:
            if not final or self._reserve is None or exc.errno not in (EMFILE, ENFILE):
                raise
            fd, self._reserve = self._reserve, None
            return fd

    def seal(self, why: str) -> None:
        """The final round is taken: from now on a change to the mappings raises ``ServiceError``.

        A change after it would never reach the new process; refusing it makes
        the work that tried it fail where it can be seen (its request is not
        answered as if it had counted).
        """
        with self.lock:
            self.sealed = why
            for state in self.names.values():
                state._sealed = why

    def changed_since_sealed(self) -> list[str]:
        """``name[key]`` of changes that slipped in while the final round was taken (lost)."""
        with self.lock:
            return [f"{name}[{key!r}]" for name, s in self.names.items() for key in s._dirty]

    def declared(self, name: str) -> PreservedDict | None:
        """The mapping ``name`` if it is declared already (``preserved`` returns it again)."""
        with self.lock:
            return self.names.get(name)

    def preserved(self, name: str, factory: Callable[[], Mapping[Any, Any]]) -> PreservedDict:
        """Declare ``name``: what the rounds received hold for it, else ``factory()``."""
        with self.lock:
            if name in self.names:
                return self.names[name]
            restored = self.pending.pop(name, None)
            if restored is not None:  # already in the chain: nothing to send
                state = self.names[name] = PreservedDict(name, restored)
                return state
        contents: object = factory()  # outside the lock: it may take a while
        if not isinstance(contents, Mapping):
            msg = (
                f"preserved({name!r}, factory): the factory returned a "
                f"{type(contents).__name__}, not a mapping; preserved state is a dict "
                f"(put other objects under a key)"
            )
            raise TypeError(msg)
        with self.lock:
            if name in self.names:  # another thread declared it meanwhile
                return self.names[name]
            state = self.names[name] = PreservedDict(name, contents)
            state._sealed = self.sealed
            self.unsent.add(name)
        return state

    def take_round(
        self, *, full: bool, extra: Mapping[str, Any] | None = None, final: bool = False
    ) -> tuple[int, int, int]:
        """Write a round into a new sealed memfd: ``(fd, size, records)``.

        ``final``: the hand-over's last round, which may use the reserved memfd.
        """
        fd = self._memfd(final=final)
        with self.lock:
            names = list(self.names.items())
            unsent, self.unsent = self.unsent, set()
            pending = [(name, list(entries.items())) for name, entries in self.pending.items()]
        taken: list[tuple[PreservedDict, set[Any]]] = []
        try:
            with open(fd, "wb", buffering=1 << 20, closefd=False) as out:
                writer = RoundWriter(out, self.limit)
                if full:
                    writer.write(("full",))
                for name, state in names:
                    dirty = state._take_dirty()
                    taken.append((state, dirty))
                    if full or name in unsent:
                        writer.write(("n", name))
                        keys: Iterable[Any] = list(state)
                    else:
                        keys = dirty
                    for key in keys:
                        writer.entry(state, key)
                if full:
                    for name, items in pending:
                        writer.write(("n", name))
                        for key, value in items:
                            writer.write(("s", name, key, value))
                if extra:
                    writer.write(("x", dict(extra)))
            seal(fd)
        except BaseException:
            os.close(fd)
            for state, dirty in taken:  # nothing was sent: still dirty
                state.touch(*dirty)
            with self.lock:
                self.unsent |= unsent
            raise
        return fd, writer.size, writer.records

    def apply_round(self, fd: int, size: int) -> None:
        """Apply a received round (and close its fd)."""
        collecting = gc.isenabled()
        gc.disable()  # loading makes no garbage cycles; collections would only slow it down
        try:
            for record in read_round(fd, size):
                self._apply(record)
        finally:
            os.close(fd)
            if collecting:
                gc.enable()

    def _apply(self, record: tuple[Any, ...]) -> None:
        op = record[0]
        with self.lock:
            if op == "full":
                for state in self.names.values():
                    dict.clear(state)
                self.pending.clear()
            elif op == "x":
                self.extra.update(record[1])
            else:
                name = record[1]
                target: dict[Any, Any] | None = self.names.get(name)
                if target is None:
                    target = self.pending.setdefault(name, {})
                if op == "s":
                    dict.__setitem__(target, record[2], record[3])
                elif op == "d":
                    dict.pop(target, record[2], None)
