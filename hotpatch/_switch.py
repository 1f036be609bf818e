"""The atomic switch and its undo; the quiescence stack check.

A switch is a list of attribute assignments (function versions, module globals
a patch brings, class members). For new calls, every target switches in one
step, even with an audit hook written in Python installed: CPython audits each
assignment of a function's ``__code__``, ``__defaults__`` and ``__kwdefaults__``,
so such a hook runs Python code -- and another thread can run -- before each of
them. The functions but one therefore first get choosers, which run the old
version or the new one as one shared flag says; then one uninterrupted run of C
calls (``map`` over prepared ``functools.partial`` objects) sets the last
function, every store no hook sees and the flag, and clears the caches of the
switched code (``lru_cache``'s ``cache_clear``): no call that starts after it
finds an old answer; then the chosen functions get their new version directly
(``_Steps``). Old values stay referenced, so no finaliser can run in the middle.
"""

from __future__ import annotations

import collections
import functools
import gc
import itertools
import operator
import sys
import threading
import time
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from hotpatch._codegen import ABSENT, chooser
from hotpatch._errors import QuiescenceTimeout
from hotpatch._patch import Patch

__all__ = [
    "Change",
    "Key",
    "busy_threads",
    "current",
    "key",
    "quiesce",
    "switch",
    "wait_quiescent",
]

Key = tuple[int, str]
Change = tuple[Any, str, Any]  # (object, attribute, value or ABSENT)


def key(obj: object, attr: str) -> Key:
    return (id(obj), attr)


def current(obj: Any, attr: str) -> Any:
    """The live value of ``obj.attr`` as a switch would record it (``ABSENT`` if unset)."""
    if isinstance(obj, types.FunctionType) and attr == "__signature__":
        return obj.__dict__.get(attr, ABSENT)
    if isinstance(obj, types.ModuleType | type):
        return vars(obj).get(attr, ABSENT)
    return getattr(obj, attr)


def _op(obj: Any, attr: str, value: Any) -> Callable[[], object]:
    if value is not ABSENT:
        return functools.partial(setattr, obj, attr, value)
    if isinstance(obj, types.ModuleType | types.FunctionType):
        # dict.pop with a default never raises, even if the name went away meanwhile.
        return functools.partial(obj.__dict__.pop, attr, None)
    return functools.partial(delattr, obj, attr)


# What CPython audits (an audit hook written in Python runs before the store).
_AUDITED = ("__defaults__", "__kwdefaults__", "__code__")  # the code last: see _Steps
_C_SETATTR = (object.__setattr__, type.__setattr__, types.ModuleType.__setattr__)
_C_DELATTR = (object.__delattr__, type.__delattr__, types.ModuleType.__delattr__)


def _runs_python(obj: Any) -> bool:
    """Does a store on ``obj`` run Python code (a metaclass's ``__setattr__``, as
    ``EnumType``'s)?"""
    kind: Any = type(obj)
    return kind.__setattr__ not in _C_SETATTR or kind.__delattr__ not in _C_DELATTR


def _same(old: Any, new: Any) -> bool:
    """Do two values of ``__defaults__`` or ``__kwdefaults__`` behave alike (the same
    objects in them)? Setting one over the other then changes no call."""
    if old is new:
        return True
    if type(old) is tuple and type(new) is tuple and len(old) == len(new):
        return all(a is b for a, b in zip(old, new, strict=True))
    if type(old) is dict and type(new) is dict and old.keys() == new.keys():
        return all(old[k] is new[k] for k in old)
    return False


def _shadow(func: types.FunctionType, code: Any, defaults: Any, kwdefaults: Any) -> Any:
    """A function running ``code`` with these defaults in ``func``'s globals and cells."""
    shadow = types.FunctionType(code, func.__globals__, func.__name__, defaults, func.__closure__)
    shadow.__kwdefaults__ = kwdefaults
    shadow.__qualname__ = func.__qualname__
    shadow.__module__ = func.__module__
    return shadow


class _Stores:
    """``setattr`` calls as three parallel lists, run by one ``map`` (no object per call),
    and other calls (deletes, a metaclass's stores, the flag, caches) after them."""

    __slots__ = ("attrs", "calls", "objs", "values")

    def __init__(self) -> None:
        self.objs: list[Any] = []
        self.attrs: list[str] = []
        self.values: list[Any] = []
        self.calls: list[Callable[[], object]] = []

    def set(self, obj: Any, attr: str, value: Any) -> None:
        self.objs.append(obj)
        self.attrs.append(attr)
        self.values.append(value)

    def __iter__(self) -> Iterator[Callable[[], object]]:
        """Each call in the order ``run`` makes them (for a test to watch them one by one)."""
        for obj, attr, value in zip(self.objs, self.attrs, self.values, strict=True):
            yield functools.partial(setattr, obj, attr, value)
        yield from self.calls

    def running(self) -> Iterator[object]:
        """What makes every call when consumed, in C (no bytecode between two of them)."""
        return itertools.chain(
            map(setattr, self.objs, self.attrs, self.values), map(operator.call, self.calls)
        )


class _Steps:
    """A switch in three steps, each harmless wherever an audit hook runs.

    * ``before``: stores that change no call (defaults with the same objects in them);
      each function but one whose code or defaults change gets a chooser: code that
      takes the call as it is and hands it to a function running its old version or
      one running its new version, as one shared flag says (it says "old": every call
      runs as before); then the stores of class members through a metaclass's Python
      ``__setattr__`` that add or replace one.
    * ``first`` and ``flip``: the one function left (whose change is a single audited
      store), then every store no hook sees (other attributes, module names, class
      members), then the flag set to "new", then the caches cleared. A hook runs
      before the first store only, while every function still runs its old version;
      nothing runs from there to the flag: every function runs its new version at once.
    * ``after``: each chosen function's new defaults and then its new code (harmless:
      its chooser already runs the new version); then the stores of class members
      through a metaclass's Python ``__delattr__`` that remove one.
    """

    __slots__ = ("after", "before", "chosen", "first", "flag", "flip", "held")

    def __init__(self, changes: Iterable[Change], caches: Iterable[Any]):
        self.before, self.flip, self.after = _Stores(), _Stores(), _Stores()
        self.first: list[Callable[[], object]] = []  # the last function's store, if any
        # each chosen function, with its old state and its new one
        self.chosen: list[tuple[types.FunctionType, dict[str, Any], dict[str, Any]]] = []
        self.flag = [0]
        # The old values of what the chooser reads, kept: no finaliser runs inside the
        # switch (the caller's undo record keeps the others).
        self.held: list[Any] = []
        audited: dict[int, tuple[types.FunctionType, dict[str, Any]]] = {}
        metaclass: list[Callable[[], object]] = []
        for obj, attr, value in changes:
            if attr in _AUDITED and isinstance(obj, types.FunctionType):
                old = getattr(obj, attr)
                self.held.append(old)
                if old is value or (attr != "__code__" and _same(old, value)):
                    self.before.set(obj, attr, value)
                else:
                    audited.setdefault(id(obj), (obj, {}))[1][attr] = value
            elif value is not ABSENT and (
                isinstance(obj, types.FunctionType) or not _runs_python(obj)
            ):
                self.flip.set(obj, attr, value)
            elif value is ABSENT and isinstance(obj, types.ModuleType | types.FunctionType):
                self.flip.calls.append(_op(obj, attr, value))  # dict.pop: no Python code
            elif value is ABSENT:
                (self.after if _runs_python(obj) else self.flip).calls.append(_op(obj, attr, value))
            else:
                metaclass.append(_op(obj, attr, value))
        last = next((e for e in audited.values() if len(e[1]) == 1), None)
        for entry in audited.values():
            if entry is not last:
                self.choose(*entry)
        if last is not None:
            ((attr, value),) = last[1].items()
            self.first.append(functools.partial(setattr, last[0], attr, value))
        self.before.calls.extend(metaclass)
        if self.chosen:
            self.flip.calls.append(functools.partial(operator.setitem, self.flag, 0, 1))
        self.flip.calls.extend(cache.cache_clear for cache in caches)

    def choose(self, func: types.FunctionType, new: dict[str, Any]) -> None:
        """``func`` runs its old version through a chooser until the flag says "new"."""
        code, defaults, kwdefaults = func.__code__, func.__defaults__, func.__kwdefaults__
        old = {"__code__": code, "__defaults__": defaults, "__kwdefaults__": kwdefaults}
        to = new.get("__code__", code)
        pick = (
            _shadow(func, code, defaults, kwdefaults),
            _shadow(
                func,
                to,
                new.get("__defaults__", defaults),
                new.get("__kwdefaults__", kwdefaults),
            ),
        )
        self.before.set(func, "__code__", chooser(code, self.flag, pick))
        # the defaults first: the chooser, still there, takes no defaults of its own
        for attr in ("__defaults__", "__kwdefaults__"):
            if attr in new:
                self.after.set(func, attr, new[attr])
        self.after.set(func, "__code__", to)
        self.chosen.append((func, old, {**old, **new}))

    def steps(self) -> list[tuple[str, list[Callable[[], object]]]]:
        """Each step's calls, in order: what ``run`` does, for a test to watch."""
        return [
            ("before", list(self.before)),
            ("flip", [*self.first, *self.flip]),
            ("after", list(self.after)),
        ]

    def run(self) -> None:
        """The three steps in one run of C calls (an audit hook runs inside the audited
        stores of ``before`` and ``after``, and before ``first``, nowhere else). The
        collector runs Python code (finalisers, ``gc.callbacks``) and on 3.11 an
        allocation can start it: it is held off meanwhile."""
        calls = itertools.chain(
            self.before.running(),
            map(operator.call, self.first),
            self.flip.running(),
            self.after.running(),
        )
        enabled = gc.isenabled()
        gc.disable()
        try:
            collections.deque(calls, maxlen=0)
        finally:
            if enabled:
                gc.enable()

    def put_back(self) -> None:
        """A step failed: each chosen function's old version, or its new one once the flag
        is set (the caller's undo record then puts them all back together)."""
        for func, old, new in self.chosen:
            state = new if self.flag[0] else old
            for attr in _AUDITED:
                try:
                    setattr(func, attr, state[attr])
                except (AttributeError, TypeError):
                    continue


def switch(
    changes: Iterable[Change],
    undo: Mapping[Key, Change] | None = None,
    caches: Iterable[Any] = (),
) -> float:
    """Set every change so that calls see all of them at once, then clear ``caches``;
    returns the seconds it took (the three steps of ``_Steps``).

    If an assignment fails (a class whose metaclass refuses it), the values in
    ``undo`` are put back before the error propagates: nothing is left half done.
    """
    steps = _Steps(changes, caches)
    start = time.perf_counter()
    try:
        steps.run()
    except BaseException:
        steps.put_back()
        if undo:
            for obj, attr, value in undo.values():
                try:
                    _op(obj, attr, value)()
                except (AttributeError, TypeError):  # absent already: that is the goal
                    continue
        raise
    return time.perf_counter() - start


def busy_threads(codes: Iterable[types.CodeType]) -> list[str]:
    """Which threads are executing any of ``codes`` right now (a walk of every stack)."""
    wanted = {id(c) for c in codes}
    names = {t.ident: t.name for t in threading.enumerate()}
    busy: list[str] = []
    for ident, frame in sys._current_frames().items():
        walk: types.FrameType | None = frame
        while walk is not None:
            if id(walk.f_code) in wanted:
                busy.append(f"thread {names.get(ident, ident)!r} is in {walk.f_code.co_qualname}")
                break
            walk = walk.f_back
    return busy


def wait_quiescent(codes: Iterable[types.CodeType], timeout: float) -> list[str]:
    """Wait until no thread runs ``codes``; returns ``[]``, or who was still busy at timeout."""
    codes = list(codes)
    deadline = time.monotonic() + timeout
    delay = 0.0002
    while True:
        busy = busy_threads(codes)
        if not busy or time.monotonic() >= deadline:
            return busy
        time.sleep(delay)
        delay = min(delay * 2, 0.01)


def quiesce(patch: Patch, codes: Iterable[types.CodeType], deadline: float) -> None:
    """``quiescence="strict"``: wait until no thread runs ``codes``, up to ``deadline``
    (``time.monotonic()``); ``QuiescenceTimeout`` naming who was busy, past it."""
    if patch.quiescence != "strict":
        return
    busy = wait_quiescent(codes, max(0.0, deadline - time.monotonic()))
    if busy:
        who = "; ".join(busy)
        reason = f"strict quiescence not reached in {patch.quiescence_timeout}s: {who}"
        msg = (
            f"patch {patch.version}: {reason}. Nothing changed; retry when the service "
            "is quieter, raise quiescence_timeout, or apply it with a restart"
        )
        raise QuiescenceTimeout(msg, reasons=[reason], patch=patch.version)
