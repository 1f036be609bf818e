"""A replacement's defaults, evaluated where its def is written: in the patch file.

A default names what the patch file binds to that name, not what the running
module or class does. Two ways that goes wrong without a word: a default naming
what the patch itself replaces (a patch class, a replaced function:
``running_in_defaults`` puts the running object there), and a default naming a
value the patch file restates, such as a sentinel copied with the method
(``__marker = object()`` beside ``def pop(self, key, default=__marker)``), which
the body, comparing it with the running one, never recognises
(``check_restated_defaults`` refuses it).
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator, Mapping
from typing import Any

from hotpatch._codegen import ABSENT
from hotpatch._errors import NameConflict, PatchError
from hotpatch._holders import holder_of
from hotpatch._members import equal, member_functions
from hotpatch._patch import Patch
from hotpatch._targets import Target, is_nested, resolve
from hotpatch._validate import written_in

__all__ = ["check_restated_defaults", "running_in_defaults"]


def running_in_defaults(patch: Patch, stands_for: Mapping[int, type]) -> None:
    """Defaults naming what the patch replaces name the running object instead.

    In the patch file the name of a ``replace_class`` class is the patch class, and
    the name of a replaced function (``def copy_list(items, deepcopy=deepcopy)``
    beside a replaced ``deepcopy``) the patch's replacement, which nothing runs
    once the patch is in. Kept, objects made with the default after the patch
    (``Parser(formatter_class=Formatter)``) would be of the patch class, and calls
    through it would run this patch's code after a later patch of the function:
    later patches reach the running objects only.
    """
    functions = _functions(patch)
    named = {id(d) for func in functions for d in _defaults(func)}
    running: dict[int, Any] = {k: v for k, v in stands_for.items() if k in named}
    for replacement in patch.replacements:
        wanted = id(replacement.new) in named and id(replacement.new) not in running
        if wanted and not replacement.is_class and not is_nested(replacement.target):
            with contextlib.suppress(PatchError):  # refused when its turn comes
                target = resolve(replacement.target, patch=patch.version)
                running[id(replacement.new)] = target.outermost
    if not running:
        return
    for func in functions:
        if func.__defaults__:
            func.__defaults__ = tuple(running.get(id(d), d) for d in func.__defaults__)
        if func.__kwdefaults__:
            func.__kwdefaults__ = {k: running.get(id(d), d) for k, d in func.__kwdefaults__.items()}


def _functions(patch: Patch) -> list[types.FunctionType]:
    """The Python functions of the patch's replacements, those under their decorators too."""
    found: list[types.FunctionType] = []
    for replacement in patch.replacements:
        for func in member_functions(replacement.new):
            found.append(func)
            inner = getattr(func, "__wrapped__", None)
            while isinstance(inner, types.FunctionType) and inner not in found:
                found.append(inner)
                inner = getattr(inner, "__wrapped__", None)
    return found


def _defaults(func: types.FunctionType) -> tuple[Any, ...]:
    return (*(func.__defaults__ or ()), *(func.__kwdefaults__ or {}).values())


def check_restated_defaults(
    patch: Patch, target: Target, original: Mapping[str, Any], new: types.FunctionType
) -> None:
    """``NameConflict`` if a default of ``new`` is the patch file's own value of a name
    whose running value the original's default is, and the two differ.

    The original's default is the running module's (or class's) ``_MISSING``; the
    replacement's is what the patch file binds to ``_MISSING``. A new object there
    is never the one the running code compares with; a new value differs from what
    the module holds, which a restart would change too. Taking the running value in
    the patch file, or a literal default, goes in.
    """
    if _same_objects(original["__defaults__"], new.__defaults__) and _same_objects(
        original["__kwdefaults__"], new.__kwdefaults__
    ):
        return  # the usual patch: the defaults as they were (literals, the module's names)
    spec, module = target.spec, target.module
    theirs = _by_parameter(
        original["__code__"], original["__defaults__"], original["__kwdefaults__"]
    )
    if not theirs:
        return
    ours = _by_parameter(new.__code__, new.__defaults__, new.__kwdefaults__)
    holder = holder_of(new)
    for param, old in theirs.items():
        value = ours.get(param, old)
        if value is old or equal(value, old):
            continue
        for path, name in _running_names(old, module, target.owner):
            if holder is not None and vars(holder).get(name, ABSENT) is value:
                written = written_in(name, holder.__name__)
            elif new.__globals__.get(name, ABSENT) is value:
                written = name
            else:
                continue
            msg = (
                f"patch {patch.version}: {spec}: the default of {param!r} is the patch file's "
                f"{written} ({type(value).__name__}), a different value from {path}.{name}, "
                "which the original's default is: code that tells the default by identity "
                "(a sentinel compared with `is`) would not recognise it, and a value the "
                "module holds differs from the one it runs with. Take the running one in "
                f"the patch file ({written} = {path}.{name}), or change the value in "
                f'@patch.migrate("{module.__name__}")'
            )
            raise NameConflict(msg, patch=patch.version, target=spec)


def _same_objects(theirs: Any, ours: Any) -> bool:
    """The same defaults, object for object (a tuple, a dict, or ``None``)."""
    if theirs is None or ours is None:
        return theirs is ours
    if len(theirs) != len(ours):
        return False
    if isinstance(theirs, dict):
        return all(ours.get(k, ABSENT) is v for k, v in theirs.items())
    return all(a is b for a, b in zip(theirs, ours, strict=True))


def _by_parameter(
    code: types.CodeType, defaults: tuple[Any, ...] | None, kwdefaults: dict[str, Any] | None
) -> dict[str, Any]:
    """A function's defaults by the parameter they are for."""
    found = dict(kwdefaults or {})
    if defaults:
        positional = code.co_varnames[: code.co_argcount]
        found.update(zip(positional[len(positional) - len(defaults) :], defaults, strict=True))
    return found


def _running_names(
    value: Any, module: types.ModuleType, owner: type | None
) -> Iterator[tuple[str, str]]:
    """Where the running code binds ``value`` by name: (the holder's path, the name)."""
    for cls in owner.__mro__[:-1] if owner is not None else ():
        for name, bound in vars(cls).items():
            if bound is value:
                yield f"{cls.__module__}.{cls.__qualname__}", name
    for name, bound in vars(module).items():
        if bound is value:
            yield module.__name__, name
