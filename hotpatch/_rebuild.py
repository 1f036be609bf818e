"""A class built again with a patch's layout, for a process that has not served yet.

A change of layout (bases, metaclass, ``__slots__``, enum members) cannot be
made to the running class: its instances are made of the old layout. At a
memory-preserving restart, before the new process serves, the patch's class
statement is run again as if written in the module (``rebuild``) and put
wherever a module held the old class (``references``), provided nothing else
holds what was made of the old one (``stray_holders``). What differs between
two classes, and why that is not hot, is ``_classes``'s.
"""

from __future__ import annotations

import gc
import sys
import types
from collections.abc import Iterator, Mapping
from typing import Any, cast

from hotpatch._classes import (
    BOILERPLATE,
    ENUM_BOOKKEEPING,
    enum_members,
    is_enum,
    members_text,
    own_slot,
    running_bases,
    slots,
)

__all__ = ["rebuild", "references", "stray_holders"]


def rebuild(
    old: type, new: type, globals_: dict[str, Any], stands_for: Mapping[int, type] | None = None
) -> type:
    """The class ``new`` declares, as if its statement ran in ``old``'s module.

    For a process that has not served yet (a restart): the patch class's layout
    and members, ``old``'s members the patch does not mention, functions bound to
    ``globals_`` with a ``__class__`` cell of the new class; its bases the running
    classes the patch's classes among them stand for (``stands_for``, by ``id``).
    A ``TypeError`` or ``ValueError`` from the class machinery propagates (the
    caller names it).
    """
    stands_for = stands_for or {}
    meta = stands_for.get(id(type(new)), type(new))
    bases = running_bases(new, stands_for)
    cell = types.CellType()
    # a dict (an enum's _EnumDict is one), whatever the stub says of __prepare__
    namespace = cast("dict[str, Any]", meta.__prepare__(old.__name__, bases))
    namespace["__module__"] = old.__module__
    namespace["__qualname__"] = old.__qualname__
    doc = vars(new).get("__doc__") or vars(old).get("__doc__")
    if doc is not None:
        namespace["__doc__"] = doc
    declared = slots(new)
    if declared is not None:
        namespace["__slots__"] = declared
    kept = {name: value for name, value in _own(old) if name not in vars(new)}
    for name, value in [*kept.items(), *_own(new)]:
        namespace[name] = _rebound(value, globals_, cell)
    new_members = enum_members(new)
    for name, value in (new_members or {}).items():
        namespace[name] = value
    cls: type = meta(old.__name__, bases, namespace)
    cell.cell_contents = cls
    if new_members is not None and enum_members(cls) != new_members:
        msg = (
            f"its members come out as {members_text(enum_members(cls) or {})}, not "
            f"{members_text(new_members)} (a __new__ or __init__ of its own)"
        )
        raise ValueError(msg)
    return cls


def references(old: type, new: type) -> list[tuple[Any, str, Any]]:
    """Where a module holds ``old`` (or, for an enum, one of its members): (module, name, new)."""
    found: list[tuple[Any, str, Any]] = []
    old_members = dict(vars(old)["_member_map_"]) if is_enum(old) else {}
    by_id = {id(m): name for name, m in old_members.items()}
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for name, value in list(namespace.items()):
            if value is old:
                found.append((module, name, new))
            elif id(value) in by_id and value is old_members[by_id[id(value)]]:
                found.append((module, name, getattr(new, by_id[id(value)])))
    return found


def stray_holders(old: type) -> list[str]:
    """What else holds ``old``'s instances (an enum: its members) besides modules and itself.

    A rebuilt class cannot reach them: each would keep the old layout or member.
    """
    if is_enum(old):
        held = list(vars(old)["_member_map_"].values())
        own = {id(x) for x in gc.get_referents(old, *held) if isinstance(x, dict | list)}
        own |= {id(vars(old)[n]) for n in ("_member_map_", "_value2member_map_") if n in vars(old)}
        # What holds the mark as well is this call's own doing (its argument tuple).
        mark = object()
        holders = [
            h
            for h in gc.get_referrers(mark, *held)
            if not any(x is mark for x in gc.get_referents(h))
        ]
        modules = {id(vars(m)) for m in list(sys.modules.values()) if hasattr(m, "__dict__")}
        return sorted(
            {
                f"a {type(h).__name__} holding a member"
                for h in holders
                if id(h) not in own
                and id(h) not in modules
                and h is not held
                and not isinstance(h, types.FrameType)
                and type(h) is not old
            }
        )
    count = sum(1 for x in gc.get_referrers(old) if type(x) is old)
    return [f"{count} instance{'s' if count != 1 else ''}"] if count else []


def _own(cls: type) -> Iterator[tuple[str, Any]]:
    """``cls``'s members a class statement wrote (not its layout, an enum's bookkeeping)."""
    own_slots = set(slots(cls) or ())
    enum_names = set(vars(cls)["_member_map_"]) if is_enum(cls) else set()
    for name, value in vars(cls).items():
        if name in BOILERPLATE or (name in own_slots and own_slot(value, cls)):
            continue
        if enum_names and (name in enum_names or name in ENUM_BOOKKEEPING or name == "__new__"):
            continue  # its own __new__ is _new_member_: the check after rebuilding sees it
        yield name, value


def _rebound(value: Any, globals_: dict[str, Any], cell: types.CellType) -> Any:
    """A member as if written in the module: functions get ``globals_`` and ``cell``."""
    if isinstance(value, types.FunctionType):
        cells = list(value.__closure__ or ())
        if "__class__" in value.__code__.co_freevars:
            cells[value.__code__.co_freevars.index("__class__")] = cell
        func = types.FunctionType(
            value.__code__, globals_, value.__name__, value.__defaults__, tuple(cells) or None
        )
        func.__kwdefaults__ = value.__kwdefaults__
        func.__doc__ = value.__doc__
        func.__annotations__ = value.__annotations__
        func.__dict__.update(value.__dict__)
        func.__qualname__ = value.__qualname__
        return func
    if isinstance(value, classmethod | staticmethod):
        return type(value)(_rebound(value.__func__, globals_, cell))
    if isinstance(value, property):
        parts = [
            _rebound(f, globals_, cell) if f else None for f in (value.fget, value.fset, value.fdel)
        ]
        return property(parts[0], parts[1], parts[2], value.__doc__)
    return value
