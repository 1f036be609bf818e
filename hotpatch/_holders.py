"""A class holding ``@patch.replace`` defs: of it, only those defs are applied.

A replacement of a method is written in a class of the target's name (``class
Bucket:`` or ``class _Bucket:``, as ``hotpatch make`` writes them), so its
private names are mangled as the original's. Such a holder is no class patch:
its class data and its other functions are not applied. A holder saying
otherwise than the running class (``LIMIT = 7`` where it holds 5, a changed
helper not registered, a name the running class lacks) would be a patch that
does less than it says: ``check_holders`` refuses it. What the running class
holds, restated (an unchanged helper copied for context, the running
sentinel), goes in.
"""

from __future__ import annotations

import contextlib
import reprlib
import types
from typing import Any

from hotpatch._classes import BOILERPLATE, ENUM_BOOKKEEPING, is_enum, same_code
from hotpatch._codegen import ABSENT
from hotpatch._errors import PatchError, VerificationFailed
from hotpatch._members import equal, member_functions
from hotpatch._patch import Patch
from hotpatch._targets import is_nested, resolve
from hotpatch._validate import written_in

__all__ = ["check_holders", "holder_of"]

_BOOKS = BOILERPLATE | ENUM_BOOKKEEPING


def holder_of(func: Any) -> type | None:
    """The class of the patch file that a def is written in, if it is one at its top."""
    path = str(getattr(func, "__qualname__", "")).split(".")[:-1]
    globals_ = getattr(func, "__globals__", None)
    if not path or "<locals>" in path or not isinstance(globals_, dict):
        return None
    found: Any = globals_.get(path[0])
    for part in path[1:]:
        found = vars(found).get(part) if isinstance(found, type) else None
    return found if isinstance(found, type) else None


def check_holders(patch: Patch) -> dict[int, type]:
    """``VerificationFailed`` if a class holding replacements of a class's methods,
    named as that class, says otherwise than the running class; else the ids of such
    holders -> the running class each stands for."""
    registered = {id(r.new) for r in patch.replacements if not r.is_class}
    seen: set[int] = set()
    standing: dict[int, type] = {}
    for replacement in patch.replacements:
        if replacement.is_class or is_nested(replacement.target):
            continue
        holder = holder_of(replacement.new)
        if holder is None or id(holder) in seen:
            continue
        seen.add(id(holder))
        owner = None
        with contextlib.suppress(PatchError):  # refused when its turn comes
            owner = resolve(replacement.target, patch=patch.version).owner
        if owner is None or holder.__name__.lstrip("_") != owner.__name__.lstrip("_"):
            continue  # a class of another name is no copy of the target's
        said = _said_otherwise(holder, owner, registered)
        if said:
            module = owner.__module__
            msg = (
                f"patch {patch.version}: class {holder.__qualname__} of the patch file, holding "
                f"the replacement for {replacement.target}, also says {'; '.join(said)}. Of a "
                "class holding @patch.replace defs only those defs are applied: the running "
                f"class would keep its own. Register a changed method with @patch.replace too, "
                f'set class data in @patch.migrate("{module}") (and @patch.unmigrate), or '
                "patch the class with @patch.replace_class; or leave them out of the holder"
            )
            raise VerificationFailed(msg, patch=patch.version, target=replacement.target)
        standing[id(holder)] = owner
    return standing


def _said_otherwise(holder: type, owner: type, registered: set[int]) -> list[str]:
    said: list[str] = []
    members = getattr(holder, "_member_map_", {}) if is_enum(holder) else {}
    for name, value in vars(holder).items():
        if (name.startswith("__") and name.endswith("__")) or name in _BOOKS:
            continue  # what every class body (an ABC's, an enum's) makes
        if id(value) in registered:
            continue  # a replacement, as written
        what = _member_said(name, value, owner, member=name in members, registered=registered)
        if what:
            said.append(f"{written_in(name, holder.__name__)} {what}")
    return said


def _member_said(  # noqa: PLR0911 - one reason per return
    name: str, value: Any, owner: type, *, member: bool, registered: set[int]
) -> str | None:
    """What the holder's ``name`` says otherwise than the running class, or ``None``."""
    if member:  # an enum's member: by its value
        running = getattr(owner, "_member_map_", {}).get(name, ABSENT)
        if running is not ABSENT and equal(running.value, value.value):
            return None
        return "(another member than the running class's)"
    functions = member_functions(value)
    if any(id(f) in registered for f in functions):
        return None  # a property or static method around a replacement
    running = next((vars(c)[name] for c in owner.__mro__ if name in vars(c)), ABSENT)
    if isinstance(value, types.MemberDescriptorType) and type(running) is type(value):
        return None  # a slot restated: the running class's own makes its instances
    if running is ABSENT:
        return "(the running class has none)"
    if functions or member_functions(running):
        same = _same_functions(running, value)
        return None if same else "(another function than the running class's)"
    if running is value or equal(running, value):
        return None
    return f"= {reprlib.repr(value)} (the running class holds {reprlib.repr(running)})"


def _same_functions(running: Any, value: Any) -> bool:
    """The same kind of member made of functions computing the same."""
    theirs, ours = member_functions(running), member_functions(value)
    return (
        type(running) is type(value)
        and len(theirs) == len(ours)
        and all(
            isinstance(a, types.FunctionType) and same_code(a.__code__, b.__code__)
            for a, b in zip(theirs, ours, strict=True)
        )
    )
