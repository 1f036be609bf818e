"""Checks on a patch before anything changes: baseline, version, signatures, what is not hot.

Each check either passes or raises the ``PatchError`` that names the cause
(why a valid class patch cannot go in hot is ``_classes``'s). The planner
(``_plan``) calls them; the agent asks ``applied_as`` whether a dropped file is
a patch the process runs already.
"""

from __future__ import annotations

import dis
import inspect
import types
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from packaging.version import Version

from hotpatch._errors import (
    BaselineMismatch,
    SignatureIncompatible,
    VerificationFailed,
    VersionConflict,
)
from hotpatch._patch import Patch

__all__ = [
    "accepts_same_calls",
    "applied_as",
    "check_baseline",
    "check_names_defined",
    "check_private_names",
    "check_replacement",
    "check_version",
    "function_kind",
    "global_names",
    "kind_of_flags",
    "reference_function",
    "signature_problems",
    "written_in",
]

_P = inspect.Parameter
_POSITIONAL = (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD)
_LOOKUPS = frozenset({"LOAD_GLOBAL", "LOAD_NAME", "STORE_GLOBAL", "DELETE_GLOBAL"})
_VAR_FLAGS = inspect.CO_VARARGS | inspect.CO_VARKEYWORDS

# -- the patch as a whole ----------------------------------------------------------


def check_baseline(patch: Patch, baseline: Version, text: str) -> None:
    """``BaselineMismatch`` unless ``patch`` was built for the baseline ``text`` (``baseline``)."""
    if Version(patch.baseline) != baseline:
        msg = (
            f"patch {patch.version} is for baseline {patch.baseline}, but this process runs "
            f"baseline {text}; rebuild the patch against {text}"
        )
        raise BaselineMismatch(msg, patch=patch.version)


def check_version(patch: Patch, level: Sequence[Patch], current: str, baseline: Version) -> None:
    """``VersionConflict`` unless ``patch`` is newer than the ``level`` (or the baseline)."""
    v = patch.version
    top = level[-1].parsed_version if level else baseline
    if patch.parsed_version > top:
        return  # the level is in version order: newer than its top, newer than all
    if any(p.parsed_version == patch.parsed_version for p in level):
        msg = (
            f"patch {v} is already applied (level {', '.join(p.version for p in level)}); "
            "to change it, publish it again under a newer version"
        )
        raise VersionConflict(msg, patch=v)
    if patch.parsed_version <= top:
        msg = (
            f"patch {v} is not newer than the current level {current}; "
            f"give it a version above {current}"
        )
        raise VersionConflict(msg, patch=v)


def applied_as(patches: Iterable[Patch], version: str, sha256: str | None) -> Patch | None:
    """The applied patch ``version`` if its content is ``sha256``; ``None`` if not applied.

    Same version, other content: ``VerificationFailed`` (a version names one content).
    """
    wanted = Version(version)
    for applied in patches:
        if applied.parsed_version != wanted:
            continue
        if applied.sha256 == sha256:
            return applied
        msg = (
            f"patch {version} is already applied with other content (applied sha256 "
            f"{(applied.sha256 or '?')[:16]}, this file {(sha256 or '?')[:16]}); publish the "
            "change under a newer version"
        )
        raise VerificationFailed(msg, patch=version)
    return None


# -- one replacement ------------------------------------------------------------------


def function_kind(code: types.CodeType) -> str:
    """What calling code of this shape returns: a value, a generator, a coroutine, ..."""
    return kind_of_flags(code.co_flags)


def kind_of_flags(flags: int) -> str:
    """``function_kind`` of code with these ``co_flags``."""
    if flags & inspect.CO_ASYNC_GENERATOR:
        return "async generator"
    if flags & inspect.CO_COROUTINE:
        return "coroutine function"
    if flags & (inspect.CO_GENERATOR | inspect.CO_ITERABLE_COROUTINE):
        return "generator function"
    return "function"


def reference_function(state: dict[str, Any], name: str) -> types.FunctionType:
    """A throwaway function with a recorded state, for ``inspect.signature``."""
    code: types.CodeType = state["__code__"]
    closure = tuple(types.CellType() for _ in code.co_freevars) or None
    ref = types.FunctionType(code, {}, name, state["__defaults__"], closure)
    ref.__kwdefaults__ = state["__kwdefaults__"]
    ref.__annotations__ = state["__annotations__"]
    return ref


def check_replacement(
    patch: Patch, spec: str, original: dict[str, Any], name: str, new: object
) -> tuple[types.FunctionType, bool]:
    """Can ``new`` stand in for the function whose original state is ``original``?

    ``VerificationFailed`` if ``new`` is not a Python function;
    ``SignatureIncompatible`` if it is another kind of function (a generator for
    a function, ...) or cannot accept every call the original accepted, unless
    the patch says ``signature_change=True``. Returns the replacement and
    whether the signatures differ (then calls follow the replacement's).
    """
    v = patch.version
    if not isinstance(new, types.FunctionType):
        msg = (
            f"patch {v}: the replacement for {spec} is a {type(new).__name__}, "
            "not a Python function; decorate a def with @patch.replace"
        )
        if hasattr(new, "__wrapped__"):  # a def under a decorator that is not Python code
            msg = (
                f"patch {v}: the replacement for {spec} is written under a decorator that "
                f"is not Python code ({type(new).__name__}), which {spec} does not run "
                "under: it cannot be put on the running function. Write the replacement "
                "plain (or under exactly the target's decorators); adding a decorator "
                "needs a baseline"
            )
        raise VerificationFailed(msg, patch=v, target=spec)
    check_private_names(patch, spec, original["__code__"], new.__code__)
    old_kind, new_kind = function_kind(original["__code__"]), function_kind(new.__code__)
    if old_kind != new_kind:
        msg = (
            f"patch {v}: {spec} is a {old_kind} but its replacement is a {new_kind}; "
            f"callers would break. Keep it a {old_kind}, or ship the change as a baseline"
        )
        raise SignatureIncompatible(msg, patch=v, target=spec)
    # The usual patch keeps the parameters: no need to build and compare signatures.
    if accepts_same_calls(original, new):
        return new, False
    old_sig = inspect.signature(reference_function(original, name))
    problems = signature_problems(old_sig, inspect.signature(new))
    if problems and not patch.signature_change:
        msg = (
            f"patch {v}: the replacement for {spec} cannot accept every call the "
            f"original {spec.partition(':')[2]}{old_sig} accepted: {'; '.join(problems)}. "
            "Keep the original's parameters (new ones need defaults), or set "
            "Patch(signature_change=True) if every caller is patched too"
        )
        raise SignatureIncompatible(msg, patch=v, target=spec)
    return new, bool(problems)


def check_private_names(patch: Patch, spec: str, old: types.CodeType, new: types.CodeType) -> None:
    """``VerificationFailed`` if ``new`` spells a private name otherwise than ``old`` would.

    Python mangles ``__x`` (in ``self.__x``, a global, an import) by the class the
    def is written in: ``_Acct__x`` in ``class Acct``, ``__x`` outside a class. A
    replacement written outside the target's class (or in a class of another
    name) would read and write other attributes than the code it replaces, and
    every call could fail or go wrong without a word.
    """
    theirs, ours = _mangling_class(old.co_qualname), _mangling_class(new.co_qualname)
    if _prefix(theirs) == _prefix(ours):
        return
    wrong = sorted(
        (name, _mangle(written, theirs))
        for name in _names_of(new)
        if (written := _unmangle(name, ours)) is not None and _mangle(written, theirs) != name
    )
    if not wrong:
        return
    where = f"in class {ours}" if ours else "outside a class"
    there = f"in class {theirs}" if theirs else "outside any class"
    spelled = ", ".join(f"{name} (the original's {expected})" for name, expected in wrong)
    way = (
        f"in a class named {theirs} or _{theirs.lstrip('_')} (a class holding the "
        "@patch.replace defs, as hotpatch make writes them, or the @patch.replace_class "
        "class itself)"
        if theirs
        else "outside any class (at the patch file's top level)"
    )
    msg = (
        f"patch {patch.version}: the replacement for {spec} is written {where}, so Python "
        f"spells its private names {spelled}: the original was written {there}, and the "
        f"replacement would read and write other names than it. Write the def {way}, so "
        "its private names are mangled as the original's"
    )
    raise VerificationFailed(msg, patch=patch.version, target=spec)


def _mangling_class(qualname: str) -> str | None:
    """The class whose name mangles the private names of code of this ``__qualname__``."""
    parts = qualname.split(".")
    i = len(parts) - 2
    while i >= 0:
        if parts[i] == "<locals>":
            i -= 2  # the function whose locals these are: look past it
            continue
        return parts[i]
    return None


def _prefix(cls: str | None) -> str:
    return "_" + cls.lstrip("_") if cls and cls.strip("_") else ""


def _mangle(name: str, cls: str | None) -> str:
    """``name`` as the compiler spells it in a def written in class ``cls``."""
    if not name.startswith("__") or name.endswith("__") or "." in name:
        return name
    return _prefix(cls) + name


def written_in(name: str, cls: str | None) -> str:
    """``name`` (as the compiler stores it) as written in a class named ``cls``:
    ``__x`` for ``_C__x`` in ``class C``; any other name as it is."""
    return _unmangle(name, cls) or name


def _unmangle(name: str, cls: str | None) -> str | None:
    """The private name ``name`` was written as in class ``cls``; ``None`` if not private."""
    prefix = _prefix(cls)
    if prefix and name.startswith(prefix + "__") and _mangle(name[len(prefix) :], cls) == name:
        return name[len(prefix) :]
    return name if _mangle(name, "x") != name else None  # private: a class would mangle it


def _names_of(code: types.CodeType) -> set[str]:
    """The names ``code`` and the code nested in it look up: attributes, globals, imports."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names_of(const)
    return names


# -- the rules ------------------------------------------------------------------------


def global_names(code: types.CodeType) -> frozenset[str]:
    """Global names ``code`` and the code nested in it look up.

    Not cached: an apply asks once for each replacement's code, which no later
    apply shares (a cache held every patch's code and a key tuple for each, kept
    by the service after the patch was gone, and never hit in a burst).
    """
    names = _looked_up(code)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= global_names(const)
    return frozenset(names) if names else _NO_NAMES


_NO_NAMES: frozenset[str] = frozenset()
_LOAD_GLOBAL = dis.opmap["LOAD_GLOBAL"]
_BY_NAME = frozenset(dis.opmap[n] for n in _LOOKUPS - {"LOAD_GLOBAL"})


def _looked_up(code: types.CodeType) -> set[str]:
    """The global names ``code`` itself looks up (``_LOOKUPS``), read off its bytecode.

    What ``dis.get_instructions`` decodes, without an object per instruction (that
    was a third of an apply's time): each instruction is two bytes, an argument
    wider than a byte comes in EXTENDED_ARG prefixes, and LOAD_GLOBAL's argument
    (3.11+) is the name's index shifted left by one.
    """
    raw, names, found, wide = code.co_code, code.co_names, set(), 0
    for i in range(0, len(raw), 2):
        op, arg = raw[i], raw[i + 1] | wide
        if op == dis.EXTENDED_ARG:
            wide = arg << 8
            continue
        wide = 0
        if op == _LOAD_GLOBAL:
            found.add(names[arg >> 1])
        elif op in _BY_NAME:
            found.add(names[arg])
    return found


def check_names_defined(
    patch: Patch,
    spec: str,
    names: Iterable[str],
    namespaces: Sequence[Mapping[str, Any]],
    *,
    old: types.CodeType,
    new: types.CodeType,
) -> None:
    """``VerificationFailed`` if ``new`` reads a global name that none of ``namespaces``
    (the patch file's, the module's, the builtins) defines, that the original ``old``
    does not mention and that ``new`` does not assign: each call would raise NameError.
    """
    missing = [n for n in names if not any(n in space for space in namespaces)]
    if not missing:
        return  # the usual patch: nothing more to read
    known = _names_of(old) | _stored(new)
    missing = sorted(n for n in missing if n not in known)
    if missing:
        msg = (
            f"patch {patch.version}: the replacement for {spec} reads {', '.join(missing)}, "
            "which neither its module, nor the patch file, nor the builtins define, and the "
            "original does not read: each call would raise NameError. Import or define them "
            "in the patch file, or correct the names"
        )
        raise VerificationFailed(msg, patch=patch.version, target=spec)


def _stored(code: types.CodeType) -> set[str]:
    """The global names ``code`` and the code nested in it assign or delete."""
    names = {i.argval for i in dis.get_instructions(code) if i.opname in _STORES}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _stored(const)
    return names


_STORES = frozenset({"STORE_GLOBAL", "DELETE_GLOBAL", "STORE_NAME", "DELETE_NAME"})
_ABSENT = object()


def accepts_same_calls(original: dict[str, Any], new: types.FunctionType) -> bool:
    """True if ``new`` has the recorded ``original``'s parameters, optional where it is.

    Then ``signature_problems`` would find nothing: this is its fast path for the
    usual patch, without building two ``inspect.Signature`` objects. False means
    "look closer", not "incompatible".
    """
    # Looked up, not read from ``new.__dict__``, which reading makes (a dict kept for good).
    if getattr(new, "__wrapped__", _ABSENT) is not _ABSENT or (
        getattr(new, "__signature__", _ABSENT) is not _ABSENT
    ):
        return False  # inspect.signature would not read the code
    old: types.CodeType = original["__code__"]
    code = new.__code__
    if (
        code.co_argcount != old.co_argcount
        or code.co_posonlyargcount != old.co_posonlyargcount
        or code.co_kwonlyargcount != old.co_kwonlyargcount
        or (code.co_flags ^ old.co_flags) & _VAR_FLAGS
    ):
        return False
    count = code.co_argcount + code.co_kwonlyargcount
    count += bool(code.co_flags & inspect.CO_VARARGS) + bool(code.co_flags & inspect.CO_VARKEYWORDS)
    if code.co_varnames[:count] != old.co_varnames[:count]:
        return False
    old_defaults: tuple[Any, ...] = original["__defaults__"] or ()
    if not len(old_defaults) <= len(new.__defaults__ or ()) <= code.co_argcount:
        return False
    return set(original["__kwdefaults__"] or ()) <= set(new.__kwdefaults__ or ())


def signature_problems(  # noqa: PLR0912 - one rule per branch reads best
    old: inspect.Signature, new: inspect.Signature
) -> list[str]:
    """Why ``new`` cannot accept every call ``old`` accepted (empty: it can)."""
    problems: list[str] = []
    old_params = list(old.parameters.values())
    new_params = list(new.parameters.values())
    new_by_name = new.parameters
    new_pos = [p for p in new_params if p.kind in _POSITIONAL]
    new_star = any(p.kind is _P.VAR_POSITIONAL for p in new_params)
    new_dstar = any(p.kind is _P.VAR_KEYWORD for p in new_params)

    old_pos = [p for p in old_params if p.kind in _POSITIONAL]
    for index, param in enumerate(old_pos):
        if index < len(new_pos):
            other = new_pos[index]
            if param.kind is _P.POSITIONAL_OR_KEYWORD and (
                other.name != param.name or other.kind is not _P.POSITIONAL_OR_KEYWORD
            ):
                problems.append(
                    f"argument {index + 1} {param.name!r} can be passed by name, "
                    f"but the replacement has {other.name!r} there"
                )
            elif param.default is not _P.empty and other.default is _P.empty:
                problems.append(
                    f"argument {param.name!r} is optional, but required in the replacement"
                )
        elif not new_star:
            problems.append(
                f"argument {index + 1} {param.name!r} is not accepted by the replacement"
            )
        elif param.kind is _P.POSITIONAL_OR_KEYWORD and not (
            new_dstar or _by_name(new_by_name.get(param.name))
        ):
            problems.append(
                f"argument {index + 1} {param.name!r} can be passed by name, but the "
                "replacement takes it only by position (in *args)"
            )
    for param in old_params:
        if param.kind is _P.VAR_POSITIONAL and not new_star:
            problems.append(f"*{param.name} (extra positional arguments) is not accepted")
        elif param.kind is _P.VAR_KEYWORD and not new_dstar:
            problems.append(f"**{param.name} (extra keyword arguments) is not accepted")
        elif param.kind is _P.KEYWORD_ONLY:
            named = new_by_name.get(param.name)
            if named is None or named.kind not in (_P.KEYWORD_ONLY, _P.POSITIONAL_OR_KEYWORD):
                if not new_dstar:
                    problems.append(f"keyword argument {param.name!r} is not accepted")
            elif param.default is not _P.empty and named.default is _P.empty:
                problems.append(
                    f"keyword {param.name!r} is optional, but required in the replacement"
                )
    problems.extend(_bound_twice(old, old_pos, new_pos))
    old_keyword_only = {p.name for p in old_params if p.kind is _P.KEYWORD_ONLY}
    for index, param in enumerate(new_params):
        if param.default is not _P.empty or param.kind in (_P.VAR_POSITIONAL, _P.VAR_KEYWORD):
            continue
        if param.kind in _POSITIONAL and index < len(old_pos):
            continue
        if param.kind is _P.KEYWORD_ONLY and param.name in old_keyword_only:
            continue
        problems.append(f"the replacement requires {param.name!r}, which callers do not pass")
    return problems


def _bound_twice(
    old: inspect.Signature, old_pos: list[inspect.Parameter], new_pos: list[inspect.Parameter]
) -> list[str]:
    """Names callers pass after more positional arguments than the replacement has before them.

    Such a name would get two values. Where the original has a positional-or-keyword
    parameter at that place, ``signature_problems``'s first rule has spoken.
    """
    problems: list[str] = []
    kinds = {p.kind for p in old.parameters.values()}
    old_at = {p.name: index for index, p in enumerate(old_pos)}
    for index, other in enumerate(new_pos):
        if other.kind is not _P.POSITIONAL_OR_KEYWORD or (
            index < len(old_pos) and old_pos[index].kind is _P.POSITIONAL_OR_KEYWORD
        ):
            continue
        mine = old.parameters.get(other.name)
        if mine is not None and mine.kind is _P.POSITIONAL_OR_KEYWORD:
            twice = old_at[mine.name] > index
        elif _by_name(mine) or _P.VAR_KEYWORD in kinds:  # keyword-only, or taken by **kwargs
            twice = _P.VAR_POSITIONAL in kinds or len(old_pos) > index
        else:
            twice = False
        if twice:
            count = f"{index + 1} positional argument{'s' if index else ''}"
            problems.append(
                f"a call with {count} and {other.name}=... would give the replacement's "
                f"{other.name!r} two values"
            )
    return problems


def _by_name(param: inspect.Parameter | None) -> bool:
    """Can a call pass ``param`` by name?"""
    return param is not None and param.kind in (_P.KEYWORD_ONLY, _P.POSITIONAL_OR_KEYWORD)
