"""Wrapping a patch's functions for a while (``Registry.wrap``), seen through by apply and rollback.

A wrap is a trampoline in ``__code__`` that sends new calls through a wrapper
(the health gate counts errors during a probation). Applies and rollbacks must
record the patch's own code, never the trampoline: ``Wrappers`` knows which
function runs which trampoline, and for which code.

A nested target's functions are wrapped the same way, and those its enclosing
function makes while the wrap lasts too: the enclosing code's constant becomes a
stand-in, a trampoline that hands the wrapper a function running the target's
code with the new function's own cells. A target nested two deep or more has
functions in between (a ``deco`` kept from before the patch): they move onto code
that makes the stand-in. Unwrapping puts the constant back and moves the
functions made from the stand-in, and those in between, onto the patch's code.
"""

from __future__ import annotations

import threading
import types
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from typing import Any

from hotpatch._codegen import trampoline
from hotpatch._heap import carrying
from hotpatch._nested import Nested, holding, lineages, named, steps_of, with_code
from hotpatch._switch import Change, Key, switch

__all__ = ["Wrapper", "Wrappers"]

Wrapper = Callable[[types.FunctionType, types.FunctionType], Callable[..., Any]]


class Wrappers:
    """The trampolines installed by ``wrap()``: id(function) -> (trampoline, code it stands
    for), and the stand-ins of nested targets' code: id(stand-in) -> (stand-in, code)."""

    def __init__(self, lock: threading.RLock):
        self._lock = lock
        self._wrapped: dict[int, tuple[types.CodeType, types.CodeType]] = {}
        # Kept for good: a function made from a stand-in by a call of the enclosing
        # function that began before the unwrap still runs it, and is seen through.
        self._stand_ins: dict[int, tuple[types.CodeType, types.CodeType]] = {}

    def wrap(
        self,
        functions: Iterable[tuple[types.FunctionType, types.CodeType]],
        wrapper: Wrapper,
        nested: Sequence[Nested] = (),
    ) -> Callable[[], None]:
        """Wrap each function still running its given code, in one switch; returns the undo.

        A function running a ``nested`` target's code gets that target's stand-in,
        and so does the enclosing code, for the functions it makes from now on.
        The caller holds the lock.
        """
        stand_ins: dict[int, types.CodeType] = {}  # id(a nested target's code) -> stand-in
        mine: dict[int, tuple[types.CodeType, types.CodeType]] = {}  # id(stand-in) -> it, code
        done: list[tuple[types.FunctionType, types.CodeType, types.CodeType]] = []
        enclosing: dict[int, tuple[types.FunctionType, types.CodeType]] = {}  # with stand-ins
        for n in nested:
            stand_in = trampoline(n.new, _made_later(n.new, n.namespace, wrapper), cells=True)
            n.wraps.append(stand_in)  # a rollback moves what runs it too
            stand_ins[id(n.new)] = self._keep(stand_in, n.new, mine)
            for copy in lineages(n):  # what other versions of the enclosing code make
                standing = trampoline(copy, _made_later(copy, n.namespace, wrapper), cells=True)
                n.steps.append((copy, standing))
                stand_ins[id(copy)] = self._keep(standing, copy, mine)
            outer = n.enclosing
            if id(outer) not in self._wrapped and holding(outer.__code__, n.new):
                code = enclosing.get(id(outer), (outer, outer.__code__))[1]
                enclosing[id(outer)] = (outer, with_code(code, n.new.co_qualname, stand_in))
        done.extend((outer, code, outer.__code__) for outer, code in enclosing.values())
        moved: list[Change] = []  # functions put on a stand-in
        # Two deep or more: the functions in between (a ``deco`` kept from before the
        # patch) move onto code that makes the stand-in, and back on unwrap.
        between: dict[int, tuple[types.CodeType, types.CodeType]] = {}  # id(code) -> stand-in
        for n in nested:
            outer = n.enclosing
            if id(outer) in enclosing and holding(outer.__code__, n.new):
                wrapped = enclosing[id(outer)][1]
                for step, making in steps_of(outer.__code__, wrapped, n.new.co_qualname):
                    n.steps.append((step, making))  # a rollback moves what runs it too
                    between.setdefault(id(step), (step, self._keep(making, step, mine)))
        # Those made by another version of the enclosing code (their code rebuilt by the
        # patch to make the target's new code) too.
        for n, step, making in _rebuilt_stand_ins(nested, stand_ins, between):
            n.steps.append((step, making))
            between.setdefault(id(step), (step, self._keep(making, step, mine)))
        if between:
            namespaces = {id(n.namespace) for n in nested}
            moved.extend(
                (func, "__code__", between[id(func.__code__)][1])
                for func in carrying([step for step, _ in between.values()])
                if id(func.__globals__) in namespaces
            )
        for func, code in functions:
            if func.__code__ is not code:
                continue
            if id(code) in stand_ins:
                moved.append((func, "__code__", stand_ins[id(code)]))
                continue
            target = wrapper(func, _running(func, code))
            done.append((func, trampoline(code, target), code))
        switch([*((func, "__code__", wrapped) for func, wrapped, _ in done), *moved])
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
                # What runs a stand-in (made before or while wrapped) runs its code again.
                if mine:
                    runs = carrying([stand_in for stand_in, _ in mine.values()])
                    back.extend((f, "__code__", mine[id(f.__code__)][1]) for f in runs)
                switch(back)

        return unwrap

    def _keep(
        self,
        stand_in: types.CodeType,
        code: types.CodeType,
        mine: dict[int, tuple[types.CodeType, types.CodeType]],
    ) -> types.CodeType:
        """Know ``stand_in`` for ``code`` for good, and in ``mine`` (one wrap's); returns it."""
        self._stand_ins[id(stand_in)] = mine[id(stand_in)] = (stand_in, code)
        return stand_in

    def code_of(self, func: types.FunctionType) -> types.CodeType:
        """``func``'s code, or the code its ``wrap()`` trampoline or stand-in stands for."""
        code = func.__code__
        wrapped = self._wrapped.get(id(func))
        if wrapped is not None and wrapped[0] is code:
            return wrapped[1]
        stand_in = self._stand_ins.get(id(code))
        return stand_in[1] if stand_in is not None and stand_in[0] is code else code

    def see_through(self, values: Mapping[Key, Change]) -> dict[Key, Change]:
        """``values`` recorded live, with each ``wrap()`` trampoline replaced by its code."""
        seen = dict(values)
        if not self._wrapped and not self._stand_ins:
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


def _rebuilt_stand_ins(
    nested: Sequence[Nested],
    stand_ins: Mapping[int, types.CodeType],
    main: Container[int],
) -> list[tuple[Nested, types.CodeType, types.CodeType]]:
    """(target, code, stand-in) for each code in between that a patch rebuilt from another
    version of the enclosing code (not in ``main``, the ids of the enclosing code's own
    ones), and each code in between nested in it: the same code making the stand-ins
    of the targets' code."""
    rebuilt: dict[int, tuple[types.CodeType, list[str], Nested]] = {}
    for n in nested:
        leaf = n.new.co_qualname
        for _, after in n.moved:
            if id(after) in main or after.co_qualname == leaf:
                continue
            paths = named(after, leaf)
            if len(paths) == 1 and id(paths[0][-1]) in stand_ins:
                rebuilt.setdefault(id(after), (after, [], n))[1].append(leaf)
    found: list[tuple[Nested, types.CodeType, types.CodeType]] = []
    for code, leaves, n in rebuilt.values():
        making = code
        for leaf in leaves:
            making = with_code(making, leaf, stand_ins[id(named(making, leaf)[0][-1])])
        found.append((n, code, making))
        for leaf in leaves:
            found.extend((n, *pair) for pair in steps_of(code, making, leaf))
    return found


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


def _made_later(
    code: types.CodeType, namespace: dict[str, Any], wrapper: Wrapper
) -> Callable[..., Any]:
    """What a stand-in calls: ``wrapper`` over a function running ``code`` in the cells of
    the function called (made while the wrap lasts; it stands for that function too).

    The stand-in passes every argument, defaults applied, so the function needs none.
    """

    def made_later(cells: tuple[types.CellType, ...], /, *args: Any, **kwargs: Any) -> Any:
        impl = types.FunctionType(code, namespace, code.co_name, None, cells or None)
        impl.__qualname__ = code.co_qualname
        return wrapper(impl, impl)(*args, **kwargs)

    return made_later
