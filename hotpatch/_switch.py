"""The atomic switch and its undo; the quiescence stack check.

A switch is a list of attribute assignments (function versions, module globals
a patch brings, class members). They run as one uninterrupted sequence of C
calls -- ``map`` over prepared ``functools.partial`` objects -- so no bytecode of
another thread runs between the first and the last assignment: for new calls,
every target switches in one step. Old values stay referenced by the undo
record, so no finaliser can run in the middle. Caches of the switched code
(``lru_cache``'s ``cache_clear``) are cleared right after the last assignment,
in the same sequence: no call that starts after the switch finds an old answer.
"""

from __future__ import annotations

import collections
import functools
import operator
import sys
import threading
import time
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from hotpatch._codegen import ABSENT
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


def switch(
    changes: Iterable[Change],
    undo: Mapping[Key, Change] | None = None,
    caches: Iterable[Any] = (),
) -> float:
    """Set every change in one uninterrupted step, then clear ``caches``; returns the
    seconds it took.

    If an assignment fails (a class whose metaclass refuses it), the values in
    ``undo`` are put back before the error propagates: nothing is left half done.
    """
    ops = [_op(obj, attr, value) for obj, attr, value in changes]
    ops.extend(cache.cache_clear for cache in caches)
    start = time.perf_counter()
    try:
        collections.deque(map(operator.call, ops), maxlen=0)
    except BaseException:
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
