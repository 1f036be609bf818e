"""A patch class's members against the running class's: what patches in place, what is set.

A member made of functions the running class has too (a method, a property's
accessors, a classmethod, what a ``partialmethod`` or ``singledispatchmethod``
binds) is patched function by function (``function_pairs``), so what holds the
running member keeps working; any other member is set whole, rebound to the
target module and class first (``rebind_member``). Which members a patch class
may set at all, and why a change is not hot, is ``_classes``'s.
"""

from __future__ import annotations

import collections.abc
import contextlib
import functools
import inspect
import os
import reprlib
import types
from collections.abc import Mapping
from typing import Any

from hotpatch._classes import ENUM_BOOKKEEPING, borrowed, decorators, inner_pairs, is_enum
from hotpatch._codegen import rebind
from hotpatch._validate import written_in

__all__ = [
    "data_conflict",
    "equal",
    "function_pairs",
    "member_functions",
    "rebind_member",
    "set_apart",
    "standing_for",
]


def equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return False


def standing_for(value: Any, stands_for: Mapping[int, type]) -> Any:
    """``value`` as the running class would hold it: each of the patch's patch classes in
    it (also in a dict, list, tuple or set: ``splitters = {"row": RowSplitter}``) the
    running class it stands for. For comparing only: the running object is what stays."""
    if id(value) in stands_for:
        return stands_for[id(value)]
    kind = type(value)
    if kind in (list, tuple, set, frozenset):
        return kind(standing_for(item, stands_for) for item in value)
    if kind is dict:
        return {standing_for(k, stands_for): standing_for(v, stands_for) for k, v in value.items()}
    return value


def data_conflict(old: type, attr: str, existing: Any, value: Any, module: str) -> str | None:
    """Why setting class data ``attr`` of ``old`` to ``value`` is refused, or ``None``.

    Class data the running class holds may be state the service built up (a
    counter, a registry filled at import or since): a patch class restating the
    class body (``count = 0``) would reset it, and a diff of the source is what
    knows a constant really changed. So data differing from the running value is
    never overwritten; Python's own ``__dunder__`` entries and a dataclass's field
    defaults (compared as fields) are not the user's data.
    """
    if attr not in vars(old) or (attr.startswith("__") and attr.endswith("__")):
        return None
    if attr in (vars(old).get("__dataclass_fields__") or {}):
        return None
    if is_enum(old) and attr in ENUM_BOOKKEEPING:
        return None  # the enum's, compared as members (a change is not hot)
    if _own_descriptor(existing):
        return _descriptor_conflict(existing, value, module)
    if not (_is_data(existing) and _is_data(value)):
        return None
    shown = _short(value)
    if shown == _short(existing):  # a sentinel made anew: say why two alike values differ
        written = written_in(attr, old.__name__)
        shown = (
            f"another {type(value).__name__} object with the same repr, {shown}, which does "
            "not compare equal to it (made anew by the class statement, as a sentinel is: "
            f"take the running one, `{written} = {module}.{old.__qualname__}.{attr}`)"
        )
    return (
        f"the running class holds {_short(existing)} and the patch class says {shown}; "
        "a class patch never overwrites class data, which may be state the service built up "
        "(a counter, a registry): leave it out of the patch class to keep the running value, "
        f'or change it in @patch.migrate("{module}") and put it back in @patch.unmigrate'
    )


# Descriptors of Python's own that keep no state: a patch may set them whole.
_STATELESS = (
    types.FunctionType,
    classmethod,
    staticmethod,
    property,
    functools.partialmethod,
    functools.singledispatchmethod,
    functools.cached_property,
    functools.partial,  # a function with its arguments (3.13 gave it a __get__)
)


def set_apart(
    old: type,
    new: type,
    attr: str,
    pairs: list[tuple[str, Any, Any]],
    module: types.ModuleType,
) -> str | None:
    """Why member ``attr`` of ``old`` may not be replaced by what the patch class's body
    defines, or ``None``: the running member is a function of the module's own, not made
    by the class body (``Foo.bar = _fast_bar`` after the class statement, or ``bar =
    _fast_bar`` in it). The patch class restating the class body would put the class
    body's version back, which the module's code sets aside again at a restart; only a
    diff of the source knows whether that is meant."""
    for _, running, replacement in pairs:
        if not borrowed(old, running) or borrowed(new, replacement):
            continue
        func = _innermost(running)
        code = getattr(func, "__code__", None)
        if not isinstance(code, types.CodeType) or not _same_file(code.co_filename, module):
            continue
        name = f"{module.__name__}:{func.__qualname__}"
        return (
            f"the running class holds {name} (line {code.co_firstlineno}), a function "
            f"the module set on the class apart from its body ({old.__qualname__}."
            f"{attr} = {func.__name__} after the class statement, or {attr} = "
            f"{func.__name__} in it), and the patch class defines {attr} in its body: "
            f"applied, the class body's version would replace the one the module chose, "
            f"which a restart of the same module would not do. To change what runs, "
            f'patch it: @patch.replace("{name}"); to keep it, leave {attr} out of the '
            "patch class; if the module no longer sets it, ship the change as a baseline"
        )
    return None


def _innermost(func: Any) -> Any:
    try:
        return inspect.unwrap(func)
    except ValueError:  # a cycle of __wrapped__
        return func


def _same_file(filename: str, module: types.ModuleType) -> bool:
    path = getattr(module, "__file__", None)
    if not isinstance(path, str):
        return False
    return filename == path or os.path.realpath(filename) == os.path.realpath(path)


def _descriptor_conflict(existing: Any, value: Any, module: str) -> str | None:
    """Why a descriptor the running class holds may not be replaced by ``value``: the
    state it keeps would be lost. ``None`` when it keeps none (it is set whole)."""
    filled = _filled(existing)
    if not filled:
        return None
    return (
        f"the running class holds the descriptor {_short(existing)}, which keeps state "
        f"({', '.join(filled)}), and the patch class restates it otherwise "
        f"({_short(value)}), which would replace it and lose that state: leave it out "
        "of the patch class to keep the running one, or replace it in "
        f'@patch.migrate("{module}") and put it back in @patch.unmigrate'
    )


def _filled(descriptor: Any) -> list[str]:
    """The containers a descriptor holds that are filled (a value for each instance, a
    cache): state the service built up, as ``name (N entries)``."""
    containers = (
        collections.abc.MutableMapping,
        collections.abc.MutableSequence,
        collections.abc.MutableSet,
    )
    return [
        f"{name} ({len(held)} entries)"
        for name, held in _descriptor_state(descriptor).items()
        if isinstance(held, containers) and len(held)
    ]


def _same_value(before: Any, after: Any) -> bool:
    """What a descriptor holds, the same: equal, or mappings holding the same (a
    ``WeakKeyDictionary`` compares by identity)."""
    if before is after or equal(before, after):
        return True
    mapping = collections.abc.Mapping
    return (
        isinstance(before, mapping)
        and isinstance(after, mapping)
        and (dict(before.items()) == dict(after.items()))
    )


def _own_descriptor(value: Any) -> bool:
    """A descriptor object of the project's making (``hits = Tracked()``), which may hold
    state for the instances."""
    return (
        not isinstance(value, type)
        and hasattr(type(value), "__get__")
        and not isinstance(value, _STATELESS)
        and not hasattr(value, "__wrapped__")  # a decorated method, patched as one
    )


def _descriptor_state(value: Any) -> dict[str, Any]:
    """What a descriptor object holds: its ``__dict__`` and slots; ``None`` if not readable."""
    state: dict[str, Any] = {}
    own = getattr(value, "__dict__", None)
    if isinstance(own, dict):
        state.update(own)
    for klass in type(value).__mro__:
        declared = vars(klass).get("__slots__", ())
        for name in (declared,) if isinstance(declared, str) else declared:
            slot = vars(klass).get(name)
            if isinstance(slot, types.MemberDescriptorType):
                with contextlib.suppress(AttributeError):  # a slot not set
                    state[name] = slot.__get__(value, type(value))
    return state


def _is_data(value: Any) -> bool:
    """A plain value: not a class, not a function or other descriptor, not a function
    with its arguments (``functools.partial``, set whole as a function is)."""
    return not isinstance(value, type | functools.partial) and not hasattr(type(value), "__get__")


def _short(value: Any) -> str:
    try:
        return reprlib.repr(value)
    except Exception:
        return f"a {type(value).__name__}"


def member_functions(value: Any) -> list[types.FunctionType]:
    """The Python functions a class member (or a whole class) is made of."""
    if isinstance(value, types.FunctionType):
        return [value]
    if isinstance(value, classmethod | staticmethod):
        return member_functions(value.__func__)
    if isinstance(value, property):
        return [
            f for f in (value.fget, value.fset, value.fdel) if isinstance(f, types.FunctionType)
        ]
    if isinstance(value, type):
        # and the classes its body made (a class it only names, such as a class naming
        # it back, is not made of it)
        return [
            f
            for member in vars(value).values()
            if not isinstance(member, type) or _nested_in(member, value)
            for f in member_functions(member)
        ]
    return []


def _nested_in(member: type, cls: type) -> bool:
    return member.__qualname__.startswith(f"{cls.__qualname__}.") and member.__module__ == (
        cls.__module__
    )


def function_pairs(
    old: Any, new: Any, stands_for: Mapping[int, type] | None = None
) -> list[tuple[str, Any, Any]] | None:
    """(accessor, function to patch, replacement) when ``new`` can patch ``old`` in place.

    ``stands_for``: the patch's patch classes -> the running classes (what a descriptor
    was told by ``__set_name__``, its owner, is the patch class)."""
    # The function under the decorators is patched, so the wrappers already made keep
    # applying, once: a replacement written plain or under the same decorators. Other
    # decorators (class_reasons names them): swapped whole.
    if decorators(new) and decorators(old) != decorators(new):
        return None
    old_function = isinstance(old, types.FunctionType) or (
        hasattr(old, "__wrapped__") and not _bound_kind(old)
    )
    python = isinstance(new, types.FunctionType)
    if old_function and (python or (hasattr(new, "__wrapped__") and not _bound_kind(new))):
        # both as written: the caller unwraps old, and takes the function under new's
        # decorators if they are the running member's, made with the same arguments
        return [("", old, new)]
    for wrapper in (classmethod, staticmethod):
        if isinstance(old, wrapper) and isinstance(new, wrapper):
            return [("", old.__func__, new.__func__)]
    if isinstance(old, property) and isinstance(new, property):
        accessors = ("fget", "fset", "fdel")
        if [getattr(old, a) is None for a in accessors] != [
            getattr(new, a) is None for a in accessors
        ]:
            return None  # accessors added or removed: the property is swapped whole
        return [
            (a, getattr(old, a), getattr(new, a)) for a in accessors if getattr(old, a) is not None
        ]
    return _other_pairs(old, new, stands_for or {})


def _other_pairs(
    old: Any, new: Any, stands_for: Mapping[int, type]
) -> list[tuple[str, Any, Any]] | None:
    """Members made of functions otherwise: partialmethod, singledispatchmethod,
    cached_property, a descriptor object of the project's."""
    inner = inner_pairs(old, new)
    if inner is not None:
        return [("", a, b) for a, b in inner]
    if _own_descriptor(old) and stands_for.get(id(type(new)), type(new)) is type(old):
        # (an instance of a class the same patch replaces: of the running class, then)
        return _descriptor_pairs(old, new, stands_for)
    return None


def _descriptor_pairs(
    old: Any, new: Any, stands_for: Mapping[int, type]
) -> list[tuple[str, Any, Any]] | None:
    """A descriptor object restated alike (``bold = Bit(0)``, ``total = lazy(total)``): the
    functions it holds, to patch in place (none: the running one stays as it is);
    ``None`` when it holds anything else otherwise, or holds nothing in sight (a C
    type's fields) and is not equal to the running one."""
    theirs, ours = _descriptor_state(old), _descriptor_state(new)
    if theirs.keys() != ours.keys():
        return None
    if not theirs and not equal(old, new):
        return None  # what it holds is out of sight (`str.strip`, a C type's fields)
    pairs: list[tuple[str, Any, Any]] = []
    for name, before in theirs.items():
        after = ours[name]
        if type(before) is types.FunctionType and type(after) is types.FunctionType:
            pairs.append(("", before, after))
        elif not _same_value(before, standing_for(after, stands_for)):
            return None
    return pairs


def _bound_kind(value: Any) -> bool:
    return isinstance(value, classmethod | staticmethod)


def rebind_member(value: Any, globals_: dict[str, Any], owner: type) -> Any:
    """A new class member as if defined in the target module and class."""
    if isinstance(value, types.FunctionType):
        return rebind(value, globals_, owner)
    if isinstance(value, classmethod | staticmethod):
        return type(value)(rebind_member(value.__func__, globals_, owner))
    if isinstance(value, property):
        parts = [
            rebind_member(f, globals_, owner) if f else None
            for f in (value.fget, value.fset, value.fdel)
        ]
        return property(parts[0], parts[1], parts[2], value.__doc__)
    return value
