"""What a replacement written under its target's decorators was made with otherwise.

Written under the decorators its target runs under, a replacement stands for the
function under them: the running wrappers keep applying, with what they were
made with. What the patch's own wrappers were made with differently would not
take effect: a decorator factory's arguments (``@retry(5)`` over the running
``@retry(3)``), a cache's parameters (``lru_cache(maxsize=128)``), attributes a
decorator set (``fn.required_role = "admin"``). ``made_otherwise`` names them,
so the patch can be refused instead. The function under them is compared by
its attributes too, written under decorators or plain.

A factory's arguments are the wrapper's free variables that come from outside
the function making it (``times`` in ``retry.<locals>.deco.<locals>.wrapper``);
those of that function itself (the wrapped ``fn``, a count it keeps per function)
are the decorator's own state, made anew for each function, and never compared.
"""

from __future__ import annotations

import functools
import gc
import reprlib
import types
from collections.abc import Iterator, Sequence
from typing import Any

from hotpatch._members import equal

__all__ = ["made_otherwise"]

_LOCALS = ".<locals>."
_DEEPEST = 32  # decorators over a factory looked through
# What a function's version is made of (swapped with its code), a wrapper's link, and
# what functools.update_wrapper copies onto a wrapper object from the function it wraps
_A_VERSIONS = frozenset({"__wrapped__", "__signature__", *functools.WRAPPER_ASSIGNMENTS})


class _Lacks:
    def __repr__(self) -> str:
        return "none"


_LACKS = _Lacks()


class _Named:
    """A function shown by its qualname (its repr's address says nothing)."""

    def __init__(self, func: types.FunctionType) -> None:
        self.qualname = func.__code__.co_qualname

    def __repr__(self) -> str:
        return self.qualname


def made_otherwise(running: Sequence[Any], written: Sequence[Any]) -> list[str]:
    """How each of ``written`` was made otherwise than the one of ``running`` in its
    place: both a chain of the same decorators down to the function under them,
    outermost first (or that function alone)."""
    changes: list[str] = []
    for old, new in zip(running, written, strict=False):
        plain = type(new) is types.FunctionType and new.__closure__ is None
        if plain and _own_attributes(new) is None:
            continue  # the usual replacement: made with nothing, carrying nothing
        for what, theirs, ours in _differences(old, new):
            name = (
                old.__code__.co_qualname
                if type(old) is types.FunctionType
                else f"{type(old).__module__}.{type(old).__qualname__}"
            )
            changes.append(
                f"{name}: {what} is {reprlib.repr(theirs)} running, {reprlib.repr(ours)} "
                "in the patch"
            )
    return changes


def _differences(old: Any, new: Any) -> Iterator[tuple[str, Any, Any]]:
    if type(old) is types.FunctionType and type(new) is types.FunctionType:
        yield from _factory_values(old, new)
        yield from _attributes(old, new)
        return  # a function is no cache
    yield from _attributes(old, new)
    theirs, ours = _cache_parameters(old), _cache_parameters(new)
    if theirs is not None and ours is not None:
        for name, value in theirs.items():
            if name in ours and not equal(value, ours[name]):
                yield f"argument {name!r}", value, ours[name]
        return
    yield from _held_differences(old, new)


def _held_differences(old: Any, new: Any) -> Iterator[tuple[str, Any, Any]]:
    """What a wrapper object (not a function) holds to call around the function it wraps,
    where ``new``'s differs: another function, or one made with other arguments.

    Such a function (``wrapt``'s ``_self_wrapper``: ``@retry(3)`` made of a generic
    ``wrapper(wrapped, instance, args, kwargs)`` closing over ``times``) was made for
    no function in particular, so all it closes over is what the decorator was made
    with. Its ``__dict__``, when it shows one, is compared as attributes already.
    """
    shown = _own_attributes(new) or {}
    theirs = _held_functions(old)
    for name, ours in _held_functions(new).items():
        before = theirs.get(name)
        if before is None or before is ours:
            continue
        if before.__code__ is not ours.__code__:
            if shown.get(name) is not ours:  # else named as an attribute
                yield f"the function it calls ({name})", _Named(before), _Named(ours)
            continue
        cells = dict(zip(ours.__code__.co_freevars, ours.__closure__ or (), strict=True))
        for var, cell in zip(before.__code__.co_freevars, before.__closure__ or (), strict=True):
            try:
                value, theirs_value = cells[var].cell_contents, cell.cell_contents
            except (KeyError, ValueError):  # a cell not filled yet
                continue
            if theirs_value is not value and not equal(theirs_value, value):
                yield f"argument {var!r} of {before.__code__.co_qualname}", theirs_value, value


def _held_functions(obj: Any) -> dict[str, types.FunctionType]:
    """The Python functions a wrapper object holds besides what it wraps, by attribute:
    in its own dict (read through the type's own ``__dict__`` descriptor: a proxy's
    ``__dict__`` attribute may show the wrapped function's), in slots, or in a C
    type's fields."""
    found: dict[str, types.FunctionType] = {}
    for klass in type(obj).__mro__:
        for name, attr in vars(klass).items():
            if not isinstance(attr, types.MemberDescriptorType | types.GetSetDescriptorType):
                continue
            if name != "__dict__" and (name in found or name.startswith("__")):
                continue
            try:
                value = attr.__get__(obj, type(obj))
            except Exception:  # a slot not set, a field that refuses to be read
                continue
            if name == "__dict__" and type(value) is dict:
                found.update(
                    (k, v)
                    for k, v in value.items()
                    if isinstance(k, str) and type(v) is types.FunctionType and k not in found
                )
            elif type(value) is types.FunctionType:
                found[name] = value
    found.pop("__wrapped__", None)
    return found


def _attributes(old: Any, new: Any) -> Iterator[tuple[str, Any, Any]]:
    """Attributes set on ``new`` (by a decorator, or after its def) that ``old`` holds
    otherwise or lacks: a patch swaps code, never what a function carries."""
    ours = _own_attributes(new)
    if not ours:
        return
    theirs = _own_attributes(old) or {}
    for name, value in ours.items():
        if name in _A_VERSIONS:
            continue
        before = theirs.get(name, _LACKS)
        if before is not value and not equal(before, value) and not _same_code(before, value):
            yield f"attribute {name!r}", before, value


def _own_attributes(obj: Any) -> dict[str, Any] | None:
    """``obj.__dict__``, if it has one, without making one.

    A function's ``__dict__`` is made on its first read and kept: read on every
    apply, each replacement (and each running function) would keep an empty dict
    for good. A function has one if the collector sees a dict it holds besides its
    globals, builtins, keyword defaults and annotations (whose keys are parameter
    names, or ``return``): an attribute named as a parameter is not seen.
    """
    if type(obj) is not types.FunctionType:
        found = getattr(obj, "__dict__", None)
        return found if isinstance(found, dict) else None
    known = (obj.__globals__, getattr(obj, "__builtins__", None), obj.__kwdefaults__)
    for held in gc.get_referents(obj):
        if (
            type(held) is dict
            and held
            and all(held is not k for k in known)
            and not held.keys() <= {*obj.__code__.co_varnames, "return"}
        ):
            return obj.__dict__  # there already
    return None


def _same_code(a: Any, b: Any) -> bool:
    """Two functions of one code: what a wrapper makes for itself (``cache_parameters``)."""
    return type(a) is types.FunctionType and getattr(b, "__code__", None) is a.__code__


def _factory_values(
    old: types.FunctionType, new: types.FunctionType
) -> Iterator[tuple[str, Any, Any]]:
    """The free variables ``old`` takes from outside the function that made it, where
    ``new``'s differ (not the same object, not equal)."""
    maker = _maker_code(old)
    if maker is None or old.__closure__ is None or new.__closure__ is None:
        return
    ours = dict(zip(new.__code__.co_freevars, new.__closure__, strict=True))
    for name, cell in zip(old.__code__.co_freevars, old.__closure__, strict=True):
        if name not in maker.co_freevars or name not in ours:
            continue
        try:
            theirs, value = cell.cell_contents, ours[name].cell_contents
        except ValueError:  # a cell not filled yet
            continue
        if theirs is not value and not equal(theirs, value):
            yield f"argument {name!r}", theirs, value


def _maker_code(func: types.FunctionType) -> types.CodeType | None:
    """The code of the function that made ``func`` (``retry.<locals>.deco`` for
    ``retry.<locals>.deco.<locals>.wrapper``), found from the module's top; ``None``
    where it cannot be found or is at the module's top itself."""
    maker, sep, _ = func.__code__.co_qualname.rpartition(_LOCALS)
    if not sep:
        return None
    top: Any = func.__globals__
    for part in maker.split(_LOCALS, 1)[0].split("."):
        top = (top if isinstance(top, dict) else getattr(top, "__dict__", {})).get(part)
        if top is None:
            return None
    top = getattr(top, "__func__", top)  # a static or class method
    for _ in range(_DEEPEST):  # a factory under decorators of its own (functools.cache)
        if isinstance(top, types.FunctionType) or not hasattr(top, "__wrapped__"):
            break
        top = top.__wrapped__
    code = getattr(top, "__code__", None)
    return _find(code, maker) if isinstance(code, types.CodeType) else None


def _find(code: types.CodeType, qualname: str) -> types.CodeType | None:
    if code.co_qualname == qualname:
        return code
    for const in code.co_consts:
        if isinstance(const, types.CodeType) and qualname.startswith(const.co_qualname):
            found = _find(const, qualname)
            if found is not None:
                return found
    return None


def _cache_parameters(obj: Any) -> dict[str, Any] | None:
    """What a cache (``functools.lru_cache``) was made with, if ``obj`` is one."""
    parameters = getattr(obj, "cache_parameters", None)
    if not callable(parameters):
        return None
    try:
        found = parameters()
    except Exception:
        return None
    return found if isinstance(found, dict) else None
