"""Wrapping a patch's functions for a while (``Registry.wrap``), seen through by apply and rollback.

A wrap is a trampoline in ``__code__`` that sends new calls through a wrapper
(the health gate counts errors during a probation). Applies and rollbacks must
record the patch's own code, never the trampoline: ``Wrappers`` knows which
function runs which trampoline, and for which code.
"""

from __future__ import annotations

import threading
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from hotpatch._codegen import trampoline
from hotpatch._switch import Change, Key, switch

__all__ = ["Wrapper", "Wrappers"]

Wrapper = Callable[[types.FunctionType, types.FunctionType], Callable[..., Any]]


class Wrappers:
    """The trampolines installed by ``wrap()``: id(function) -> (trampoline, code it stands for)."""

    def __init__(self, lock: threading.RLock):
        self._lock = lock
        self._wrapped: dict[int, tuple[types.CodeType, types.CodeType]] = {}

    def wrap(
        self, functions: Iterable[tuple[types.FunctionType, types.CodeType]], wrapper: Wrapper
    ) -> Callable[[], None]:
        """Wrap each function still running its given code, in one switch; returns the undo.

        The caller holds the lock.
        """
        done: list[tuple[types.FunctionType, types.CodeType, types.CodeType]] = []
        for func, code in functions:
            if func.__code__ is not code:
                continue
            target = wrapper(func, _running(func, code))
            done.append((func, trampoline(code, target), code))
        switch((func, "__code__", wrapped) for func, wrapped, _ in done)
        for func, wrapped, code in done:
            self._wrapped[id(func)] = (wrapped, code)

        def unwrap() -> None:
            with self._lock:
                back: list[Change] = []
                for func, wrapped, code in done:
                    if self._wrapped.get(id(func), (None,))[0] is wrapped:
                        del self._wrapped[id(func)]
                        if func.__code__ is wrapped:
                            back.append((func, "__code__", code))
                switch(back)

        return unwrap

    def code_of(self, func: types.FunctionType) -> types.CodeType:
        """``func``'s code, or the code its ``wrap()`` trampoline stands for."""
        wrapped = self._wrapped.get(id(func))
        return wrapped[1] if wrapped is not None and wrapped[0] is func.__code__ else func.__code__

    def see_through(self, values: Mapping[Key, Change]) -> dict[Key, Change]:
        """``values`` recorded live, with each ``wrap()`` trampoline replaced by its code."""
        seen = dict(values)
        if not self._wrapped:
            return seen
        for k, (obj, attr, value) in values.items():
            if attr == "__code__" and isinstance(obj, types.FunctionType):
                seen[k] = (obj, attr, self.code_of(obj) if value is obj.__code__ else value)
        return seen

    def forget(self, changed: Iterable[Key]) -> None:
        """A switch set these: the trampolines it replaced are gone."""
        if self._wrapped:
            for obj_id, attr in changed:
                if attr == "__code__":
                    self._wrapped.pop(obj_id, None)


def _running(func: types.FunctionType, code: types.CodeType) -> types.FunctionType:
    """A function that runs ``code`` as ``func`` would: same globals, cells and defaults."""
    impl = types.FunctionType(
        code, func.__globals__, func.__name__, func.__defaults__, func.__closure__
    )
    impl.__kwdefaults__ = func.__kwdefaults__
    impl.__qualname__ = func.__qualname__
    impl.__module__ = func.__module__
    impl.__doc__ = func.__doc__
    return impl
