"""Finding the function objects already made from a nested function's code: heap scans.

Only a nested target (``mod:outer.<locals>.inner``) needs them, and they run
before a switch, never inside it: ordinary targets never walk the heap.
``made_from`` asks the garbage collector which objects refer to the module's
namespace (every function running in it does) and matches by code name, so it
finds what any version of the enclosing function made; ``carrying`` asks it
which objects refer to given code objects, for the functions made while a
switch was being prepared. Both walks run in C and hand back only what
matched: no list of every object is held while Python code runs.
"""

from __future__ import annotations

import contextlib
import gc
import operator
import sys
import types
from collections.abc import Collection, Iterator

__all__ = ["carrying", "made_from"]

_FUNCTION = types.FunctionType


# A reference count no mortal object reaches: that of an immortal one (3.12+).
_IMMORTAL = 1 << 30


@contextlib.contextmanager
def _visible() -> Iterator[None]:
    """Objects ``gc.freeze()`` moved out of the collector's generations, back in view.

    Neither ``gc.get_objects`` nor ``gc.get_referrers`` sees frozen objects; a
    pre-fork server freezes what its workers inherit. They are frozen again
    afterwards (with what was made since the freeze: ``gc.freeze`` takes all),
    unless all that was frozen is immortal: Python 3.12 starts with some of its
    own objects frozen, and freezing again would freeze the whole heap, garbage
    cycles included, for good. Those stay unfrozen (nothing can free them anyway).
    """
    frozen = gc.get_freeze_count()
    if not frozen:
        yield
        return
    # Unfrozen objects are appended to the oldest generation: its last ``frozen``
    # objects are those. No collection meanwhile may move others there.
    collecting = gc.isenabled()
    gc.disable()
    try:
        gc.unfreeze()
        # Taken in C alone: a list of the whole generation held while Python code runs
        # gives each object a reference more, and another thread's half-built tuple
        # (resized when done only if it holds the one reference) a SystemError.
        thawed = next(map(operator.itemgetter(slice(-frozen, None)), map(gc.get_objects, (2,))))
        mortal = any(sys.getrefcount(obj) < _IMMORTAL for obj in thawed)
        del thawed
    finally:
        if collecting:
            gc.enable()
    try:
        yield
    finally:
        if mortal:
            gc.freeze()


def made_from(
    namespace: dict[str, object], qualnames: Collection[str]
) -> dict[str, list[types.FunctionType]]:
    """Every live function running in ``namespace`` whose code is named one of ``qualnames``.

    One walk of the heap, whatever the number of names: what refers to ``namespace``
    (every function running in it does). Never a list of every object: while Python
    code went through one, each object in it had a reference more, and another
    thread's ``tuple(generator)``, resized when done only if it holds the one
    reference, failed with ``SystemError``.
    """
    found: dict[str, list[types.FunctionType]] = {name: [] for name in qualnames}
    with _visible():
        referrers = gc.get_referrers(namespace)
    for func in referrers:
        if type(func) is _FUNCTION and func.__globals__ is namespace:
            bucket = found.get(func.__code__.co_qualname)
            if bucket is not None:
                bucket.append(func)
    return found


def carrying(codes: Collection[types.CodeType]) -> list[types.FunctionType]:
    """Every live function whose ``__code__`` is one of ``codes``."""
    if not codes:
        return []
    wanted = {id(code) for code in codes}
    with _visible():
        referrers = gc.get_referrers(*codes)
    return [obj for obj in referrers if type(obj) is _FUNCTION and id(obj.__code__) in wanted]
