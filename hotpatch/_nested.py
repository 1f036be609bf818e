"""Nested function targets (``mod:outer.<locals>.inner``): their code, the functions made from it.

A nested function's code is a constant of the enclosing function's code; every
call of the enclosing function makes a new function object from it (a closure,
or the wrapper a decorator returns). Patching one means: every such object
already made runs the new code (found by a heap scan before the switch), and
the enclosing code's constant is replaced so that those made later do too.
Both go back on rollback. The new code must fit every existing object as it
is -- same parameters, same closure -- or the target is refused.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hotpatch._codegen import ABSENT, build
from hotpatch._errors import NotPatchable, SignatureIncompatible, TargetNotFound
from hotpatch._heap import carrying
from hotpatch._patch import Patch
from hotpatch._switch import Change, Key, key
from hotpatch._targets import NestedTarget, nested_qualnames
from hotpatch._validate import check_replacement, global_names, reference_function

__all__ = [
    "Leaf",
    "Nested",
    "Settle",
    "check_made",
    "forward",
    "going_back",
    "holding",
    "leaves_back",
    "lineages",
    "move_steps",
    "named",
    "origins",
    "plan_code",
    "resettle",
    "running",
    "settle_changes",
    "steps_back",
    "steps_of",
    "with_code",
]

_SHAPE_FLAGS = (
    inspect.CO_VARARGS
    | inspect.CO_VARKEYWORDS
    | inspect.CO_GENERATOR
    | inspect.CO_COROUTINE
    | inspect.CO_ASYNC_GENERATOR
)


@dataclass(frozen=True, slots=True)
class Nested:
    """A planned nested target: the code the enclosing function made, and the new one."""

    spec: str
    namespace: dict[str, Any]  # the module's: functions made from the code run in it
    enclosing: types.FunctionType
    old: types.CodeType  # what the enclosing code made before the patch
    new: types.CodeType  # what runs after it
    # the codes of the functions found before the switch (those the enclosing function's
    # own version made; what another version made runs a copy of ``new``: ``lineages``)
    seen: tuple[types.CodeType, ...]
    # Stand-ins for ``new`` a wrap() put in the enclosing code meanwhile (the health
    # gate's counting trampolines): functions made from them go back with the rest.
    wraps: list[types.CodeType] = field(default_factory=list, compare=False)
    # A target nested two deep or more: (code before, code after) of the functions in
    # between (``retry3 = retry(3)``, a ``deco`` kept from before the patch), moved onto
    # code that makes the new one; a rollback moves them, and those made since, back.
    steps: list[tuple[types.CodeType, types.CodeType]] = field(default_factory=list, compare=False)
    # The patch's own pairs of ``steps`` (no ``wrap()`` stand-in): from the code a function
    # in between was made from (no patch's) to the code the patch gives it.
    moved: tuple[tuple[types.CodeType, types.CodeType], ...] = field(default=(), compare=False)


def named(code: types.CodeType, qualname: str) -> list[tuple[types.CodeType, ...]]:
    """Paths (``code`` first) to every code object named ``qualname`` among its constants."""
    paths: list[tuple[types.CodeType, ...]] = []
    for const in code.co_consts:
        if not isinstance(const, types.CodeType):
            continue
        if const.co_qualname == qualname:
            paths.append((code, const))
        elif qualname.startswith(const.co_qualname + "."):
            paths.extend((code, *path) for path in named(const, qualname))
    return paths


def holding(code: types.CodeType, nested: types.CodeType) -> bool:
    """Does ``code`` make functions from ``nested`` (one of its constants, at any depth)?"""
    return any(path[-1] is nested for path in named(code, nested.co_qualname))


def running(nested: Sequence[Nested]) -> list[tuple[types.FunctionType, types.CodeType]]:
    """The functions running each nested target's new code (or its copy for what another
    version of the enclosing code made, or a ``wrap()`` stand-in of either) now, each
    with that code.

    A walk of what refers to those codes (cheap: no scan of every object).
    """
    if not nested:
        return []
    by_code: dict[int, tuple[types.CodeType, Nested, types.CodeType]] = {}  # carried, runs
    for n in nested:
        by_code.update((id(c), (c, n, n.new)) for c in (n.new, *n.wraps))
        copies = {id(c): c for c in lineages(n)}
        by_code.update((i, (c, n, c)) for i, c in copies.items())
        # a wrap()'s stand-in of a copy
        by_code.update((id(a), (a, n, b)) for b, a in n.steps if id(b) in copies)
    found: list[tuple[types.FunctionType, types.CodeType]] = []
    for func in carrying([carried for carried, _, _ in by_code.values()]):
        _, n, code = by_code[id(func.__code__)]
        if func.__globals__ is n.namespace:
            found.append((func, code))
    return found


def steps_of(
    base: types.CodeType, final: types.CodeType, qualname: str
) -> list[tuple[types.CodeType, types.CodeType]]:
    """(code before, code after) of each function between the enclosing one and its nested
    function ``qualname``, outermost first: ``final`` is ``base`` with nested code replaced."""
    (before,), (after,) = named(base, qualname), named(final, qualname)
    return list(zip(before[1:-1], after[1:-1], strict=True))


Leaf = tuple[str, types.CodeType, Callable[[types.CodeType], types.CodeType]]
"""A nested target seen from a function in between: (its qualname, the code the
enclosing function made before the patch, the code to make instead of a given one)."""


def _rebuilt_step(
    patch: Patch, spec: str, code: types.CodeType, leaves: Iterable[Leaf]
) -> types.CodeType | None:
    """``code``, of a function in between made by another version of the enclosing code
    (``spec`` names it), rebuilt to make each leaf's new code (``new_for`` the code it
    makes now); ``None`` if it makes none of them.

    Only constants change, so its closure still fits. ``NotPatchable`` if it makes a
    leaf with other parameters or another closure than ``old``: the new code would not
    run in what it makes.
    """
    rebuilt = code
    for qualname, old, new_for in leaves:
        if not qualname.startswith(code.co_qualname + "."):
            continue
        paths = named(rebuilt, qualname)
        if not paths:
            continue
        made = paths[0][-1]
        if len(paths) > 1 or _shape(made) != _shape(old):
            msg = (
                f"patch {patch.version}: {spec}: a function of it made by another version of "
                f"the enclosing code makes {qualname!r} with other parameters or another "
                f"closure ({', '.join(made.co_freevars) or 'none'}, not "
                f"{', '.join(old.co_freevars) or 'none'}), so the new code cannot run in what "
                "it makes; apply it through a restart"
            )
            raise NotPatchable(msg, patch=patch.version, target=spec)
        rebuilt = with_code(rebuilt, qualname, new_for(made))
    return None if rebuilt is code else rebuilt


def move_steps(
    patch: Patch,
    modname: str,
    pairs: Sequence[tuple[types.CodeType, types.CodeType]],
    leaves: Sequence[Leaf],
    made: Mapping[str, Sequence[types.FunctionType]],
    *,
    code_of: Callable[[types.FunctionType], types.CodeType],
) -> tuple[list[Change], list[tuple[types.CodeType, types.CodeType]]]:
    """A target nested two deep or more: the functions in between made before the patch
    (``retry3 = retry(3)``, holding the old wrapper code) onto code that makes the new one.

    ``pairs`` are the (before, after) codes of the enclosing function's own code,
    ``leaves`` its nested targets, ``made`` the functions found at each level in
    between, ``code_of`` the code one runs under the patch's level. A function made by
    another version of the enclosing code gets its own code rebuilt (only the constants
    change, so its closure still fits). Returns the changes and every (before, after)
    pair they use, the codes in between nested in a rebuilt one too.
    """
    moves = {id(before): (before, after) for before, after in pairs}
    inner: dict[int, tuple[types.CodeType, types.CodeType]] = {}  # id(after) -> pair
    changes: list[Change] = []
    for qualname, functions in made.items():
        for func in functions:
            code = code_of(func)
            if id(code) not in moves:
                rebuilt = _rebuilt_step(patch, f"{modname}:{qualname}", code, leaves)
                if rebuilt is None:
                    continue  # that version makes none of the targets
                moves[id(code)] = (code, rebuilt)
                for leaf, _, _ in leaves:  # what it makes in between, made anew
                    if len(named(code, leaf)) == 1:
                        inner.update((id(a), (b, a)) for b, a in steps_of(code, rebuilt, leaf))
            changes.append((func, "__code__", moves[id(code)][1]))
    return changes, [*moves.values(), *inner.values()]


def with_code(code: types.CodeType, qualname: str, new: types.CodeType) -> types.CodeType:
    """``code`` with its nested code named ``qualname`` replaced by ``new`` (at any depth)."""
    consts = list(code.co_consts)
    for i, const in enumerate(consts):
        if not isinstance(const, types.CodeType):
            continue
        if const.co_qualname == qualname:
            consts[i] = new
        elif qualname.startswith(const.co_qualname + "."):
            consts[i] = with_code(const, qualname, new)
    return code.replace(co_consts=tuple(consts))


def _shape(code: types.CodeType) -> tuple[object, ...]:
    """What a function object made from ``code`` fixes: its parameters and its closure."""
    return (
        code.co_argcount,
        code.co_posonlyargcount,
        code.co_kwonlyargcount,
        code.co_flags & _SHAPE_FLAGS,
        code.co_varnames[: code.co_argcount + code.co_kwonlyargcount],
        code.co_freevars,
    )


def plan_code(
    patch: Patch, target: NestedTarget, base: types.CodeType, new: object
) -> tuple[types.CodeType, types.CodeType, types.FunctionType]:
    """(the nested code in ``base``, the code to run instead, the checked replacement).

    ``base`` is the code the enclosing function runs under the patch. Raises the
    ``PatchError`` that says why the replacement cannot run in the functions
    already made.
    """
    v, spec, qualname = patch.version, target.spec, target.qualname
    outer = f"{target.module.__name__}:{target.enclosing.__code__.co_qualname}"
    paths = named(base, qualname)
    if not paths:
        known = ", ".join(nested_qualnames(base)) or "none"
        msg = (
            f"patch {v}: target {spec}: the code {outer} runs now has no nested function "
            f"{qualname!r} (it has: {known}); check the qualname against the running code"
        )
        raise TargetNotFound(msg, patch=v, target=spec)
    if len(paths) > 1:
        msg = (
            f"patch {v}: target {spec}: {outer} defines {len(paths)} nested functions named "
            f"{qualname!r} (lambdas, or a def in each branch), so the name does not say which; "
            f"patch {outer} itself (new calls only), or ship the change as a baseline"
        )
        raise NotPatchable(msg, patch=v, target=spec)
    path = paths[0]
    old = path[-1]
    original: dict[str, Any] = {
        "__code__": old,
        "__defaults__": None,
        "__kwdefaults__": None,
        "__doc__": None,
        "__annotations__": {},
        "__signature__": ABSENT,
    }
    name = old.co_name
    replacement, _ = check_replacement(patch, spec, original, name, new)
    keep = (
        "every function already made keeps its own parameters, defaults and closure: "
        f"patch {outer} instead (functions it makes from then on), or ship the change as a "
        "baseline"
    )
    if _shape(replacement.__code__)[:5] != _shape(old)[:5]:
        msg = (
            f"patch {v}: the replacement for nested function {spec} must keep its parameters "
            f"exactly (names and kinds); {keep}"
        )
        raise SignatureIncompatible(msg, patch=v, target=spec)
    enclosing = {n for code in path[:-1] for n in (*code.co_varnames, *code.co_cellvars)}
    wanted = (global_names(replacement.__code__) & enclosing) - set(old.co_freevars)
    if wanted:
        msg = (
            f"patch {v}: the replacement for nested function {spec} reads "
            f"{', '.join(sorted(wanted))}, local to {outer}, which the functions already made "
            f"do not hold (their closure: {', '.join(old.co_freevars) or 'none'}). A changed "
            f"closure shape is not hot: {keep}"
        )
        raise NotPatchable(msg, patch=v, target=spec)
    inner = {
        n
        for const in replacement.__code__.co_consts
        if isinstance(const, types.CodeType)
        for n in global_names(const)
    }
    if held := sorted(inner & set(old.co_freevars)):
        msg = (
            f"patch {v}: the replacement for nested function {spec} has code nested in it (a "
            f"def, lambda, generator expression or comprehension) that reads "
            f"{', '.join(held)} of the closure; only the replacement's own code can read the "
            "closure, so that code would raise NameError when it runs. Read those variables "
            "into locals of the replacement first and let the nested code use the locals, or "
            f"{keep}"
        )
        raise NotPatchable(msg, patch=v, target=spec)
    built = build(
        reference_function(original, name),
        original,
        replacement,
        globals_=target.module.__dict__,
        owner=None,
    )
    if built.mode != "inline":
        msg = (
            f"patch {v}: the replacement for nested function {spec} cannot run in the "
            f"functions already made: {built.why}. Read the closure's variables by name "
            f"({', '.join(old.co_freevars) or 'none'}); {keep}"
        )
        raise NotPatchable(msg, patch=v, target=spec)
    code: types.CodeType = built.state["__code__"]
    return old, code, replacement


def check_made(
    patch: Patch, spec: str, old: types.CodeType, made: Sequence[types.FunctionType]
) -> tuple[types.CodeType, ...]:
    """The distinct codes of ``made``; ``NotPatchable`` if one has another shape than ``old``."""
    codes = {id(f.__code__): f.__code__ for f in made}
    for code in codes.values():
        if _shape(code) != _shape(old):
            count = sum(f.__code__ is code for f in made)
            msg = (
                f"patch {patch.version}: target {spec}: {count} function(s) made from it "
                f"by an earlier version of the enclosing code have other parameters or another "
                f"closure ({', '.join(code.co_freevars) or 'none'}, not "
                f"{', '.join(old.co_freevars) or 'none'}), so the new code cannot run in them; "
                "apply it through a restart"
            )
            raise NotPatchable(msg, patch=patch.version, target=spec)
    return tuple(codes.values())


@dataclass(frozen=True, slots=True)
class Settle:
    """Every function in ``namespace`` made from one of ``codes`` is to run ``target``."""

    spec: str
    namespace: dict[str, Any]
    codes: tuple[types.CodeType, ...]
    target: types.CodeType


def resettle(changes: dict[Key, Change], settles: Sequence[Settle]) -> None:
    """Each of ``changes`` that sets a function's code to one of a settle's codes sets
    that settle's target instead (a value recorded at another level than the one
    being made)."""
    targets = {id(c): s.target for s in settles for c in s.codes}
    for k, (obj, attr, value) in list(changes.items()):
        if attr == "__code__" and (target := targets.get(id(value))) is not None:
            changes[k] = (obj, attr, target)


def settle_changes(settles: Sequence[Settle], done: Container[Key]) -> list[Change]:
    """The changes that make each settle true, for the functions ``done`` does not set.

    A walk of what refers to the settles' codes (cheap: no scan of every object).
    """
    if not settles:
        return []
    wanted = {id(c): s for s in settles for c in s.codes if c is not s.target}
    changes: list[Change] = []
    for func in carrying([c for s in settles for c in s.codes if c is not s.target]):
        settle = wanted.get(id(func.__code__))
        if settle is None or func.__globals__ is not settle.namespace:
            continue
        if key(func, "__code__") not in done:
            changes.append((func, "__code__", settle.target))
    return changes


def going_back(nested: Sequence[Nested], kept: Sequence[Nested] = ()) -> list[Settle]:
    """Nested patches going away (newest first), ``kept`` those of the level that stays
    (oldest first, not what a cumulative one replaced): every function made from their
    code, a target's or one in between, to what that level gives the code it was made
    from (or that code, if the level patches it not)."""
    origin, ahead = origins([*nested, *kept]), forward(kept)
    return leaves_back(nested, origin, ahead) + steps_back(nested, origin, ahead)


def leaves_back(
    nested: Sequence[Nested],
    origin: Mapping[int, types.CodeType],
    ahead: Mapping[int, types.CodeType],
) -> list[Settle]:
    """Nested targets going away (newest first): every function made from their code by
    the enclosing function's own version to what ``ahead`` gives the code it was made
    from (``origin``), or to that code. Never to what the enclosing function makes at
    that level: a patch of it as a whole makes code of its own, for new calls only."""
    groups: dict[tuple[int, str], list[Nested]] = {}
    for n in nested:
        groups.setdefault((id(n.namespace), n.spec), []).append(n)
    settles: list[Settle] = []
    for group in groups.values():
        newest = group[0]
        first = origin.get(id(newest.new), newest.old)
        target = ahead.get(id(first), first)
        codes = {id(c): c for n in group for c in (n.old, n.new, *n.seen, *n.wraps)}
        settles.append(Settle(newest.spec, newest.namespace, tuple(codes.values()), target))
    return settles


def origins(nested: Iterable[Nested]) -> dict[int, types.CodeType]:
    """id(code a patch or a ``wrap()`` gave a function, nested target or in between) ->
    the code that function was made from, under no patch (of ``nested``)."""
    back: dict[int, types.CodeType] = {}
    for n in nested:
        back.update((id(after), before) for before, after in n.steps)
        back.update((id(w), n.new) for w in n.wraps)
        back[id(n.new)] = n.old
    return _resolve(back)


def lineages(n: Nested) -> list[types.CodeType]:
    """The copies of ``n``'s new code it gave the functions made by another version of
    the enclosing code (one per version: a rollback tells them apart)."""
    leaf = n.new.co_qualname
    return [after for _, after in n.moved if after.co_qualname == leaf]


def forward(nested: Iterable[Nested]) -> dict[int, types.CodeType]:
    """id(code a function in between was made from) -> the code the level of ``nested``
    (oldest first, no cumulative's replaced ones among them) gives it."""
    ahead: dict[int, types.CodeType] = {}
    for n in nested:
        ahead[id(n.old)] = n.new
        ahead.update((id(before), after) for before, after in n.moved)
    return _resolve(ahead)


def steps_back(
    nested: Sequence[Nested],
    origin: Mapping[int, types.CodeType],
    ahead: Mapping[int, types.CodeType],
) -> list[Settle]:
    """The functions in between (of targets nested two deep or more) running a code one
    of ``nested`` gave them: to what ``ahead`` gives the code they were made from
    (``origin``), or to that code."""
    found: dict[int, tuple[types.CodeType, dict[int, types.CodeType], Nested]] = {}
    for n in nested:
        for _, after in n.steps:
            made = origin.get(id(after), after)
            target = ahead.get(id(made), made)
            if target is not after:
                found.setdefault(id(target), (target, {}, n))[1][id(after)] = after
    settles: list[Settle] = []
    for target, codes, n in found.values():
        spec = f"{n.spec.partition(':')[0]}:{target.co_qualname}"
        settles.append(Settle(spec, n.namespace, tuple(codes.values()), target))
    return settles


def _resolve(back: Mapping[int, types.CodeType]) -> dict[int, types.CodeType]:
    """id(code installed) -> the code to go back to, following ``back`` to its end."""
    resolved: dict[int, types.CodeType] = {}
    for code_id, first in back.items():
        code, seen = first, {code_id}
        while id(code) in back and id(code) not in seen:
            seen.add(id(code))
            code = back[id(code)]
        resolved[code_id] = code
    return resolved
