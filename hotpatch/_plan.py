"""Planning: a ``Patch`` checked against the running code and the level, turned into a ``Plan``.

A plan is every value the switch will set (function versions, module globals the
patch brings, class members), why the patch is not hot if it is not, and what
a strict quiescence has to wait for. Planning changes nothing: ``check()`` is a
plan; ``apply()`` is a plan committed by the registry.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import Any

from packaging.version import Version

from hotpatch._classes import (
    borrowed,
    changed_hash,
    class_reasons,
    hash_reason,
    layout_changes,
    members,
    nested_classes,
    set_name,
)
from hotpatch._classes_hooks import hooks_of, refusal
from hotpatch._codegen import ABSENT, FUNC_ATTRS, build, capture
from hotpatch._defaults import check_restated_defaults, running_in_defaults
from hotpatch._errors import (
    JournalError,
    NameConflict,
    NotPatchable,
    PatchError,
    VerificationFailed,
)
from hotpatch._heap import made_from
from hotpatch._holders import check_holders
from hotpatch._mapped import Mapped
from hotpatch._members import (
    data_conflict,
    equal,
    function_pairs,
    member_functions,
    rebind_member,
    set_apart,
    standing_for,
)
from hotpatch._nested import (
    Leaf,
    Nested,
    Settle,
    check_made,
    forward,
    leaves_back,
    move_steps,
    origins,
    plan_code,
    resettle,
    settle_changes,
    steps_back,
    steps_of,
    with_code,
)
from hotpatch._patch import Migration, Patch
from hotpatch._rebuild import rebuild, references, stray_holders
from hotpatch._switch import Change, Key, current, key
from hotpatch._targets import (
    Kind,
    NestedTarget,
    Target,
    accessor_of,
    home_module,
    import_module,
    is_nested,
    resolve,
    resolve_class,
    resolve_nested,
    undecorated,
    unwrap,
    wrapper_names,
    written_elsewhere,
)
from hotpatch._validate import (
    check_baseline,
    check_names_defined,
    check_replacement,
    check_version,
    global_names,
)

__all__ = [
    "NO_KEYS",
    "Applied",
    "Level",
    "Plan",
    "caches_of",
    "make_plan",
    "nested_of",
]


@dataclass(slots=True)
class Plan:
    """What applying ``patch`` would do; built by ``make_plan``, committed by the registry."""

    patch: Patch
    changes: dict[Key, Change] = field(default_factory=dict)
    injected: set[Key] = field(default_factory=set)
    modes: dict[str, str] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    codes: list[types.CodeType] = field(default_factory=list)
    functions: list[types.FunctionType] = field(default_factory=list)
    migrations: list[tuple[Migration, types.ModuleType]] = field(default_factory=list)
    unmigrations: list[tuple[Migration, types.ModuleType]] = field(default_factory=list)
    caches: list[Any] = field(default_factory=list)  # cleared in the switch (lru_cache, ...)
    nested: list[Nested] = field(default_factory=list)  # nested function targets
    settles: list[Settle] = field(default_factory=list)  # for functions made meanwhile
    patched: dict[str, int] = field(default_factory=dict)  # target -> function objects
    # (module, names, namespace the names come from, target) for the namespace rule
    needs: list[tuple[types.ModuleType, frozenset[str], dict[str, Any], str]] = field(
        default_factory=list
    )


NO_KEYS: frozenset[Key] = frozenset()  # what most applied patches injected: shared
_UNSET: Any = object()  # in a record: no value on that side (an entry not yet built)


class Applied:
    """One applied patch: what it set, what was there before, what it replaced.

    Kept for as long as the patch is applied, so kept small for the collector:
    what is mostly empty is an empty tuple or frozenset shared by all, and what
    its targets held before and after is one flat tuple (each object, attribute,
    value before, value after, in turn), not a record per attribute, whatever
    the patch patched. ``before`` and ``after`` give it as mappings of the
    changes (a new ``dict`` on each read: hold it to look up many keys);
    ``value_after`` looks up one key without one.
    """

    __slots__ = (
        "_records",
        "caches",
        "functions",
        "injected",
        "nested",
        "patch",
        "replaced",
        "unmigrations",
    )

    def __init__(  # noqa: PLR0917 -- the fields in the order Applied always took them
        self,
        patch: Patch,
        before: Mapping[Key, Change],
        after: Mapping[Key, Change],
        injected: AbstractSet[Key],
        unmigrations: Sequence[tuple[Migration, types.ModuleType]],
        replaced: Sequence[Applied],
        functions: Sequence[types.FunctionType] = (),  # whose code it built
        caches: Sequence[Any] = (),  # what caches its targets' answers
        nested: Sequence[Nested] = (),  # its nested function targets
    ):
        self.patch = patch
        self._records = _records(before, after)
        self.injected = injected
        self.unmigrations = unmigrations
        self.replaced = replaced
        self.functions = functions
        self.caches = caches
        self.nested = nested

    @property
    def before(self) -> Mapping[Key, Change]:
        """What each target held before the patch went in."""
        return _side(self._records, 2)

    @before.setter
    def before(self, values: Mapping[Key, Change]) -> None:
        self._records = _records(values, self.after)

    @property
    def after(self) -> Mapping[Key, Change]:
        """What the patch set."""
        return _side(self._records, 3)

    @after.setter
    def after(self, values: Mapping[Key, Change]) -> None:
        self._records = _records(self.before, values)

    def value_after(self, k: Key) -> Change | None:
        """``after[k]``, or ``None``, without a mapping of the whole entry."""
        return _find(self._records, k, 3)

    def changed(self, more: Iterable[tuple[Any, str, Any, Any]]) -> None:
        """Record ``more`` changes, each (object, attribute, before, after), in place of
        any it already holds for the same object and attribute."""
        before, after = dict(self.before), dict(self.after)
        for obj, attr, old, new in more:
            k = key(obj, attr)
            before[k], after[k] = (obj, attr, old), (obj, attr, new)
        self._records = _records(before, after)


def _records(before: Mapping[Key, Change], after: Mapping[Key, Change]) -> tuple[Any, ...]:
    """One flat tuple: (object, attribute, before, after) for each key of either side,
    ``_UNSET`` where a side has none."""
    flat: list[Any] = []
    for k, (obj, attr, old) in before.items():
        new = after.get(k)
        flat += (obj, attr, old, _UNSET if new is None else new[2])
    for k, (obj, attr, new) in after.items():
        if k not in before:
            flat += (obj, attr, _UNSET, new)
    return tuple(flat)


def _side(records: tuple[Any, ...], at: int) -> dict[Key, Change]:
    return {
        (id(records[i]), records[i + 1]): (records[i], records[i + 1], records[i + at])
        for i in range(0, len(records), 4)
        if records[i + at] is not _UNSET
    }


def _find(records: tuple[Any, ...], k: Key, at: int) -> Change | None:
    obj_id, attr = k
    for i in range(0, len(records), 4):
        if id(records[i]) == obj_id and records[i + 1] == attr:
            value = records[i + at]
            return None if value is _UNSET else (records[i], attr, value)
    return None


@dataclass(frozen=True, slots=True)
class Level:
    """What a plan is made against: the registry's baseline and applied patches."""

    baseline: str
    baseline_version: Version
    stack: Sequence[Applied]
    # id(function) -> (function, its state before hotpatch first touched it)
    originals: Mapping[int, tuple[types.FunctionType, dict[str, Any]]]
    code_of: Callable[[types.FunctionType], types.CodeType]  # sees through wrap()
    journaled: bool  # the level is recorded: a patch must carry its source
    # The process has not served yet (a restart, a journal replay): what is not hot
    # goes in anyway, and a class whose layout changes is built again.
    restarting: bool = False

    @property
    def version(self) -> str:
        return self.stack[-1].patch.version if self.stack else self.baseline


def make_plan(patch: Patch, level: Level) -> Plan:
    """Validate ``patch`` against ``level`` and build every value the switch will set.

    Raises the ``PatchError`` of an invalid patch; changes nothing.
    """
    v = patch.version
    plan = Plan(patch)
    if patch.kind != "hot":
        plan.reasons.append(
            f"patch {v} is a {patch.kind} patch: a baseline replaces the code and "
            "always needs a restart"
        )
        return plan
    check_baseline(patch, level.baseline_version, level.baseline)
    check_version(patch, Mapped(level.stack, _patch_of), level.version, level.baseline_version)
    if level.journaled and patch.source is None:
        msg = (
            f"patch {v} was not loaded from a file, so the journal cannot record its "
            "content; load it with hotpatch.load_patch(path)"
        )
        raise JournalError(msg, patch=v)
    if not patch.replacements and not patch.migrations:
        msg = f"patch {v} replaces nothing; add @patch.replace(...) functions to it"
        raise VerificationFailed(msg, patch=v)

    replaced = list(level.stack) if patch.cumulative else []
    planner = _Planner(plan, level, _pristine(replaced), nested_of(replaced))
    stands_for = _stands_for(patch)
    running_in_defaults(patch, stands_for)
    for replacement in patch.replacements:
        if replacement.is_class:
            planner.add_class(replacement.target, replacement.new, stands_for)
        elif is_nested(replacement.target):
            planner.add_nested(resolve_nested(replacement.target, patch=v), replacement.new)
        else:
            planner.add_function(resolve(replacement.target, patch=v), replacement.new)
    holders = check_holders(patch)  # after the targets: a default's own refusal says more
    planner.add_names(() if patch.cumulative else level.stack, holders)  # those it stacks on
    planner.finish(replaced)
    for migration in patch.migrations:
        module = import_module(migration.module, patch=v, target=migration.module)
        plan.migrations.append((migration, module))
    for migration in patch.unmigrations:
        module = import_module(migration.module, patch=v, target=migration.module)
        plan.unmigrations.append((migration, module))
    if patch.restart:
        plan.reasons.append(f"patch {v} asks for a restart (restart=True)")
    return plan


def _stands_for(patch: Patch) -> dict[int, type]:
    """The ids of the patch's patch classes -> the running classes they patch (those that
    resolve: a target that does not is refused when its turn comes)."""
    found: dict[int, type] = {}
    for replacement in patch.replacements:
        if replacement.is_class:
            with contextlib.suppress(PatchError):
                running = resolve_class(replacement.target, patch=patch.version)[1]
                _stands_for_class(found, replacement.new, running)
    return found


def _stands_for_class(found: dict[int, type], new: type, old: type) -> None:
    """Patch class ``new`` stands for ``old``, and each class nested in it for the running
    class it restates (patched as class targets of their own)."""
    found[id(new)] = old
    for _, running, nested in nested_classes(old, new):
        _stands_for_class(found, nested, running)


def caches_of(entries: Sequence[Applied], also: Sequence[Any] = ()) -> list[Any]:
    """``also`` and the caches whose answers go stale when ``entries`` (and what they
    replaced) come or go, each once."""
    found: dict[int, Any] = {id(c): c for c in also}
    for entry in entries:
        found.update((id(c), c) for c in caches_of(entry.replaced, entry.caches))
    return list(found.values())


def nested_of(entries: Sequence[Applied]) -> list[Nested]:
    """The nested targets of ``entries`` and of what they replaced, in their order."""
    return [
        n for e in entries if e.nested or e.replaced for n in (*e.nested, *nested_of(e.replaced))
    ]


def _patch_of(entry: Applied) -> Patch:
    """Planning reads the patches of a stack where asked: the top one, for a patch newer
    than the top is newer than the whole level."""
    return entry.patch


def _pristine(entries: Sequence[Applied]) -> dict[Key, Change]:
    """The values from before ``entries`` for everything they touched (oldest wins)."""
    values: dict[Key, Change] = {}
    for entry in reversed(entries):
        values.update(entry.before)
        # a cumulative's "before" is the level it replaced: go under that level too
        values.update(_pristine(entry.replaced))
    return values


class _Planner:
    """Fills one plan, target by target; ``base`` is what a target holds under the patch."""

    def __init__(
        self,
        plan: Plan,
        level: Level,
        pristine: dict[Key, Change],
        replaced: Sequence[Nested] = (),
    ):
        self.plan = plan
        self.level = level
        self.pristine = pristine
        # A cumulative patch: the nested targets of the level it replaces, and the code
        # each function in between that level moved was made from (what it builds on).
        self.replaced = replaced
        self.origins = origins(replaced)
        # For each nested target, the copies of its new code: id(origin) -> (origin, copy)
        self.lineages: dict[str, dict[int, tuple[types.CodeType, types.CodeType]]] = {}
        # id(enclosing function) -> its code with the nested targets replaced so far,
        # and the code it had under the patch's level
        self.enclosing: dict[int, types.CodeType] = {}
        self.bases: dict[int, types.CodeType] = {}
        self.pending: list[tuple[NestedTarget, types.CodeType, types.CodeType]] = []
        # id(function) -> the target that named it first, and its replacement
        self.named: dict[int, tuple[str, Any]] = {}

    @cached_property
    def leaf_origins(self) -> dict[int, types.CodeType]:
        """What a nested target's function was made from, through every level: worked
        out for a patch with nested targets only (the others need not walk the level)."""
        return origins(nested_of(self.level.stack))

    @cached_property
    def codes_before(self) -> dict[int, list[types.CodeType]]:
        """id(function) -> the code it ran before each patch of the level that set it:
        for a strict patch only (the others need not walk the level)."""
        codes: dict[int, list[types.CodeType]] = {}
        for entry in self.level.stack:
            for obj, attr, value in entry.before.values():
                if attr == "__code__" and isinstance(obj, types.FunctionType):
                    codes.setdefault(id(obj), []).append(value)
        return codes

    def base(self, obj: Any, attr: str) -> Any:
        """The value the patch builds on: from under a level it replaces, else the live one."""
        change = self.pristine.get(key(obj, attr))
        return change[2] if change is not None else current(obj, attr)

    def original(self, function: types.FunctionType) -> dict[str, Any]:
        known = self.level.originals.get(id(function))
        return known[1] if known is not None else capture(function)

    def code_base(self, func: types.FunctionType) -> types.CodeType:
        """The code ``func`` runs under the patch's level (under a wrap(), the wrapped code);
        for a cumulative patch, under none of the level it replaces (a function in between
        made or moved while it was applied: the code it was made from)."""
        change = self.pristine.get(key(func, "__code__"))
        code: types.CodeType = change[2] if change is not None else self.level.code_of(func)
        return self.origins.get(id(code), code)

    def add_function(self, target: Target, new_obj: Any) -> None:
        plan, spec, func = self.plan, target.spec, target.function
        if self.enclosing and id(func) in self.enclosing:
            _both(plan.patch, spec)
        new = undecorated(target, accessor_of(new_obj, target.accessor), patch=plan.patch.version)
        home = home_module(func)
        if (
            home is not None
            and home is not target.module
            and getattr(new, "__globals__", None) is not vars(home)
        ):
            raise written_elsewhere(
                spec, home, patch=plan.patch.version, suggestion=_written_as(spec, func)
            )
        first, written = self.named.setdefault(id(func), (spec, new))
        if written is not new:
            msg = (
                f"patch {plan.patch.version}: {first} and {spec} name the same function "
                f"({func.__module__}:{func.__code__.co_qualname}) with two replacements, so "
                "one would silently win; keep one of the two targets"
            )
            raise VerificationFailed(msg, patch=plan.patch.version, target=spec)
        original = self.original(func)
        new, widened = check_replacement(plan.patch, spec, original, func.__name__, new)
        check_restated_defaults(plan.patch, target, original, new)
        owner = target.owner
        if func.__name__ == "__hash__" and owner and changed_hash(original["__code__"], new):
            plan.reasons.append(hash_reason(f"{owner.__module__}:{owner.__qualname__}", "changes"))
        old_code: types.CodeType = original["__code__"]
        # A changed signature (signature_change=True): calls follow the replacement's.
        built = build(
            func,
            original,
            new,
            globals_=target.module.__dict__,
            owner=target.owner,
            any_call=widened,
        )
        for attr in FUNC_ATTRS:
            plan.changes[key(func, attr)] = (func, attr, built.state[attr])
        plan.modes[spec] = built.mode + (f" ({built.why})" if built.why else "")
        plan.functions.append(func)
        if target.caches:
            plan.caches.extend(target.caches)
        plan.patched[spec] = 1
        # Strict quiescence looks for every version a thread could still be running.
        plan.codes.extend(
            (old_code, func.__code__, self.level.code_of(func), built.state["__code__"])
        )
        if plan.patch.quiescence == "strict":  # only a strict patch waits on them
            plan.codes.extend(self.codes_before.get(id(func), ()))
        names = global_names(new.__code__) - set(old_code.co_freevars)
        if not _migrates(plan.patch, target.module):  # a migration may define names
            spaces = (new.__globals__, target.module.__dict__, getattr(func, "__builtins__", {}))
            check_names_defined(plan.patch, spec, names, spaces, old=old_code, new=new.__code__)
        plan.needs.append((target.module, names, new.__globals__, spec))

    def add_nested(self, target: NestedTarget, new_obj: Any) -> None:
        """A nested function: the enclosing code's constant now; the made ones in scan_nested."""
        plan, outer = self.plan, target.enclosing
        if any(f is outer for f in plan.functions):
            _both(plan.patch, target.spec)
        for other, _, _ in self.pending:  # one nested in the other
            if other.enclosing is outer and _one_in_other(other.qualname, target.qualname):
                _both(plan.patch, target.spec)
        base = self.enclosing.get(id(outer)) or self.bases.setdefault(
            id(outer), self.code_base(outer)
        )
        old, code, new = plan_code(plan.patch, target, base, accessor_of(new_obj, ""))
        self.enclosing[id(outer)] = with_code(base, target.qualname, code)
        plan.changes[key(outer, "__code__")] = (outer, "__code__", self.enclosing[id(outer)])
        plan.modes[target.spec] = "inline"
        plan.codes.extend((old, code))
        names = global_names(new.__code__) - set(old.co_freevars)
        if not _migrates(plan.patch, target.module):  # a migration may define names
            spaces = (new.__globals__, target.module.__dict__, getattr(outer, "__builtins__", {}))
            check_names_defined(plan.patch, target.spec, names, spaces, old=old, new=new.__code__)
        plan.needs.append((target.module, names, new.__globals__, target.spec))
        self.pending.append((target, old, code))

    def finish(self, replaced: Sequence[Applied]) -> None:
        """After the targets: the heap scan (nested targets only), what a cumulative
        patch puts back, and the caches to clear, each once."""
        plan = self.plan
        if self.pending:
            self.scan_nested()
        for k, change in self.pristine.items():  # cumulative: what it does not touch goes back
            plan.changes.setdefault(k, change)
        if replaced:
            self.nested_back()
            plan.caches = caches_of(replaced, plan.caches)
        elif len(plan.caches) > 1:
            plan.caches = caches_of((), plan.caches)

    def scan_nested(self) -> None:
        """Every function already made from a nested target's code, and (a target nested
        two deep or more) from the code of each function in between: one heap scan per
        module."""
        if not self.pending:
            return
        plan = self.plan
        modules: dict[int, tuple[dict[str, Any], set[str]]] = {}
        steps: dict[int, list[tuple[types.CodeType, types.CodeType]]] = {}  # by enclosing
        for target, _, _ in self.pending:
            namespace = target.module.__dict__
            outer = id(target.enclosing)
            found_in = steps.setdefault(outer, [])
            found_in.extend(steps_of(self.bases[outer], self.enclosing[outer], target.qualname))
            names = modules.setdefault(id(namespace), (namespace, set()))[1]
            names.update((target.qualname, *(b.co_qualname for b, _ in found_in)))
        found: dict[tuple[int, str], list[types.FunctionType]] = {}
        for namespace, qualnames in modules.values():
            for qualname, made in made_from(namespace, qualnames).items():
                found[id(namespace), qualname] = made
        for outer, pairs in steps.items():
            steps[outer] = self.move_steps(outer, pairs, found)
        for target, old, code in self.pending:
            namespace = target.module.__dict__
            made = found[id(namespace), target.qualname]
            seen = check_made(plan.patch, target.spec, old, made)
            runs = {id(c): self.leaf_code(target, old, code, c) for c in seen}
            for func in made:
                plan.changes[key(func, "__code__")] = (func, "__code__", runs[id(func.__code__)])
            plan.codes.extend(seen)
            plan.patched[target.spec] = len(made)
            # made by another version of the enclosing code: (its code, the copy it runs)
            lineage = list(self.lineages.get(target.spec, {}).values())
            plan.codes.extend(copy for _, copy in lineage)
            mine = [*steps[id(target.enclosing)], *lineage]
            main = tuple(c for c in seen if runs[id(c)] is code)
            nested = Nested(
                target.spec, namespace, target.enclosing, old, code, main, [], mine, tuple(mine)
            )
            plan.nested.append(nested)
            # what the level it replaces made of the target, should one be made meanwhile
            before = [c for n in self.replaced if n.spec == target.spec for c in (n.new, *n.wraps)]
            plan.settles.append(Settle(target.spec, namespace, (old, *main, *before), code))
            for c in seen:
                if runs[id(c)] is not code:
                    plan.settles.append(Settle(target.spec, namespace, (c,), runs[id(c)]))

    def leaf_code(
        self, target: NestedTarget, old: types.CodeType, new: types.CodeType, made: types.CodeType
    ) -> types.CodeType:
        """The code for a function made from ``made`` to run: ``new``, or, made by another
        version of the enclosing code, a copy of ``new`` of its own (one per version), so
        that a rollback tells what each version made apart."""
        origin = self.leaf_origins.get(id(made), made)
        if origin is self.leaf_origins.get(id(old), old):
            return new
        lineage = self.lineages.setdefault(target.spec, {})
        if id(origin) not in lineage:
            lineage[id(origin)] = (origin, new.replace())
        return lineage[id(origin)][1]

    def move_steps(
        self,
        outer: int,
        pairs: list[tuple[types.CodeType, types.CodeType]],
        found: Mapping[tuple[int, str], list[types.FunctionType]],
    ) -> list[tuple[types.CodeType, types.CodeType]]:
        """The functions in between (``retry3 = retry(3)``) onto code that makes the new
        one (``move_steps``); the (before, after) codes."""
        plan = self.plan
        group = [(t, old, code) for t, old, code in self.pending if id(t.enclosing) == outer]
        module = group[0][0].module
        leaves: list[Leaf] = [
            (t.qualname, old, partial(self.leaf_code, t, old, code)) for t, old, code in group
        ]
        made = {q: found[id(module.__dict__), q] for q in {b.co_qualname for b, _ in pairs}}
        moved, moves = move_steps(
            plan.patch, module.__name__, pairs, leaves, made, code_of=self.code_base
        )
        for func, attr, value in moved:
            plan.changes[key(func, attr)] = (func, attr, value)
        for before, after in moves:
            spec = f"{module.__name__}:{before.co_qualname}"
            plan.settles.append(Settle(spec, module.__dict__, (before,), after))
            plan.codes.extend((before, after))
            plan.patched.setdefault(spec, 0)
        for func, _, _ in moved:
            plan.patched[f"{module.__name__}:{func.__code__.co_qualname}"] += 1
        return moves

    def nested_back(self) -> None:
        """Cumulative: the nested targets it replaces and does not patch again go back, and
        every function in between that level moved gets what this patch gives the code it
        was made from (so it makes none of the targets dropped)."""
        plan = self.plan
        mine = {n.spec for n in plan.nested}
        gone = [n for n in self.replaced if n.spec not in mine]
        if not self.replaced:
            return
        ahead = forward(plan.nested)
        settles = leaves_back(gone, self.origins, ahead)
        settles += steps_back(self.replaced, self.origins, ahead)
        resettle(plan.changes, settles)
        plan.changes.update(
            (key(func, attr), (func, attr, value))
            for func, attr, value in settle_changes(settles, plan.changes)
        )
        plan.settles.extend(settles)

    def add_class(self, spec: str, new_cls: type, stands_for: Mapping[int, type]) -> None:
        plan = self.plan
        v = plan.patch.version
        module, old = resolve_class(spec, patch=v)
        _check_class_home(spec, module, old, patch=v)
        if ran := hooks_of(new_cls):  # a patch class made in code: the loader would refuse it
            raise refusal(spec, ran, patch=v, ran=True)
        plan.reasons.extend(class_reasons(old, new_cls, stands_for))
        if layout_changes(old, new_cls, stands_for):
            subclasses: list[type] = old.__subclasses__()
            if subclasses:
                msg = (
                    f"patch {v}: class {spec} changes its layout (bases, metaclass, __slots__ or "
                    f"enum members), and its subclasses "
                    f"({', '.join(c.__qualname__ for c in subclasses)}) are built on the old one; "
                    "not even a restart can change it under them: ship the change as a baseline"
                )
                raise NotPatchable(msg, patch=v, target=spec)
            if self.level.restarting:
                self.rebuild_class(spec, module, old, new_cls, stands_for)
                return
        nested = {name for name, _, _ in nested_classes(old, new_cls)}
        for attr, value in members(old, new_cls, stands_for):
            if attr in nested:  # a class of the running class's own: patched in place
                self.add_nested_class(spec, attr, value, stands_for)
            else:  # (a patch class: the running one it stands for)
                running = stands_for.get(id(value), value)
                self.add_member(spec, module, (old, new_cls), attr, running, stands_for=stands_for)

    def add_member(
        self,
        spec: str,
        module: types.ModuleType,
        classes: tuple[type, type],
        attr: str,
        value: Any,
        *,
        stands_for: Mapping[int, type],
    ) -> None:
        """Member ``attr`` of ``spec``'s patch class: patched in place, or set.
        ``classes``: the running class and the patch class."""
        plan = self.plan
        old, new_cls = classes
        member = f"{spec}.{attr}"
        existing = self.base(old, attr)
        if existing is value:
            return  # the same object (what a base or a decorator put in both)
        pairs = function_pairs(existing, value, stands_for)
        # A function the class borrowed (total_ordering's helpers, a mixin's) is
        # shared: the class gets its own instead of a patch of everyone's.
        if pairs is not None and not any(
            borrowed(old, f) or borrowed(new_cls, n) for _, f, n in pairs
        ):
            for accessor, wrapped, new in pairs:
                kind: Kind = "property" if accessor else "method"
                func, caches = unwrap(wrapped, member, patch=plan.patch.version)
                wrappers = wrapper_names(wrapped)  # a replacement written under them
                target = Target(
                    member, module, func, old, kind, accessor, caches, wrappers, wrapped
                )
                self.add_function(target, new)
            return
        apart = (
            pairs is not None
            and not self.level.restarting
            and set_apart(old, new_cls, attr, pairs, module)
        )
        if apart:
            msg = f"patch {plan.patch.version}: {member}: {apart}"
            raise NameConflict(msg, patch=plan.patch.version, target=member)
        restated = standing_for(value, stands_for)  # the patch's classes: the running ones
        if existing is value or (existing is not ABSENT and equal(existing, restated)):
            return
        # A process not serving yet (a replay, a restart) applies what the journal
        # holds as it went in: the rule is for a patch going in while state is live.
        conflict = (
            existing is not ABSENT
            and not self.level.restarting
            and data_conflict(old, attr, existing, restated, module.__name__)
        )
        if conflict:
            msg = f"patch {plan.patch.version}: {member}: {conflict}"
            raise NameConflict(msg, patch=plan.patch.version, target=member)
        functions = [f for f in member_functions(value) if not borrowed(new_cls, f)]
        rebound = rebind_member(value, module.__dict__, old) if functions else value
        set_name(rebound, old, attr)
        plan.changes[key(old, attr)] = (old, attr, rebound)
        for func in functions:
            names = global_names(func.__code__)
            plan.needs.append((module, names, func.__globals__, member))

    def add_nested_class(
        self, spec: str, attr: str, new_cls: type, stands_for: Mapping[int, type]
    ) -> None:
        """Class ``attr`` of the class ``spec``, restated in its patch class: a class target."""
        v, inner = self.plan.patch.version, f"{spec}.{attr}"
        if any(r.is_class and r.target == inner for r in self.plan.patch.replacements):
            msg = (
                f"patch {v}: class {inner} is a target of its own, and the patch class of "
                f"{spec} restates it too: two patch classes for one class, so one would "
                f"silently win; keep one (leave {attr} out of the patch class of {spec}, or "
                f"drop the replace_class of {inner})"
            )
            raise VerificationFailed(msg, patch=v, target=inner)
        self.add_class(inner, new_cls, stands_for)

    def rebuild_class(
        self,
        spec: str,
        module: types.ModuleType,
        old: type,
        new_cls: type,
        stands_for: Mapping[int, type],
    ) -> None:
        """A layout change in a process not serving yet: a new class where the old one was."""
        plan, v = self.plan, self.plan.patch.version
        held = stray_holders(old)
        if held:
            msg = (
                f"patch {v}: class {spec} changes its layout, but what was made before the "
                f"patch would keep the old one ({', '.join(held)}: made at import, or from "
                "preserved state); make them after hotpatch.ready(), or ship the change as a "
                "baseline"
            )
            raise NotPatchable(msg, patch=v, target=spec)
        try:
            rebuilt = rebuild(old, new_cls, module.__dict__, stands_for)
        except (TypeError, ValueError) as exc:
            msg = (
                f"patch {v}: class {spec} cannot be built again with the patch's layout: "
                f"{type(exc).__name__}: {exc}; ship the change as a baseline"
            )
            raise NotPatchable(msg, patch=v, target=spec) from exc
        for obj, name, value in references(old, rebuilt):
            plan.changes[key(obj, name)] = (obj, name, value)
        plan.modes[spec] = "rebuilt (its layout changes; the process has not served yet)"
        for func in member_functions(new_cls):
            plan.needs.append((module, global_names(func.__code__), func.__globals__, spec))

    def add_names(self, ours: Sequence[Applied], holders: Mapping[int, type]) -> None:
        """The namespace rule: bring what the replacements need, refuse to shadow.

        ``ours`` are the applied patches the plan stacks on (not those it replaces);
        ``holders``, the patch file's classes holding replacements by the name of the
        running class each stands for (that name needs nothing brought in).
        """
        plan = self.plan
        patch = plan.patch
        exempt = {id(patch)} | {id(r.new) for r in patch.replacements}
        exempt |= {id(f) for r in patch.replacements for f in member_functions(r.new)}
        for module, names, namespace, spec in plan.needs:
            for name in sorted(names):
                if name not in namespace:
                    continue  # the module's own, or a builtin
                if _is_dunder(name) and name in module.__dict__:
                    continue  # the module's own attribute (a class body reads __name__)
                value = namespace[name]
                if id(value) in exempt or module.__dict__.get(name) is namespace:
                    continue
                if id(value) in holders and module.__dict__.get(name) is holders[id(value)]:
                    continue  # the holder by the running class's name: the running class
                k = key(module, name)
                existing = self.base(module, name)
                if existing is value:
                    continue
                injected_here = any(
                    k in e.injected
                    and (change := e.value_after(k)) is not None
                    and change[2] is existing
                    for e in ours
                )
                if existing is not ABSENT and not injected_here and k not in plan.injected:
                    msg = (
                        f"patch {patch.version}: {spec} needs {name!r} from the patch file, but "
                        f"module {module.__name__} already has a different {name!r} "
                        f"({type(existing).__name__}); rename it in the patch file, or use the "
                        "module's own"
                    )
                    raise NameConflict(msg, patch=patch.version, target=spec)
                if k not in plan.injected:
                    plan.names.append(f"{module.__name__}.{name}")
                plan.changes[k] = (module, name, value)
                plan.injected.add(k)


def _migrates(patch: Patch, module: types.ModuleType) -> bool:
    """Whether ``patch`` runs a migration of ``module`` (which may define its names)."""
    return any(m.module == module.__name__ for m in patch.migrations)


def _both(patch: Patch, spec: str) -> None:
    msg = (
        f"patch {patch.version}: {spec} is nested in a function the patch also replaces, "
        "whose replacement brings its own nested functions; keep one of the two targets"
    )
    raise VerificationFailed(msg, patch=patch.version, target=spec)


def _one_in_other(a: str, b: str) -> bool:
    """Is one of two nested qualnames nested in the other?"""
    return a.startswith(b + ".<locals>.") or b.startswith(a + ".<locals>.")


def _is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__") and name.strip("_") != ""


def _check_class_home(spec: str, module: types.ModuleType, cls: type, *, patch: str) -> None:
    """``NotPatchable`` if class ``cls`` (target ``spec``) was written in another module
    than ``module``, which only holds it."""
    home = _class_home(cls)
    if home is not None and home is not module:
        raise written_elsewhere(
            spec, home, patch=patch, suggestion=cls.__qualname__, how="replace_class"
        )


def _class_home(cls: type) -> types.ModuleType | None:
    """The module the functions of ``cls``'s class statement run in (where it was written),
    told by their code's qualname: a factory may rename what it adds (namedtuple's
    helpers, written in ``collections``, are renamed ``NT._make``), not their code."""
    for func in member_functions(cls):
        written = func.__code__.co_qualname.startswith(f"{cls.__qualname__}.")
        home = home_module(func) if written else None
        if home is not None:
            return home
    return None


def _written_as(spec: str, func: types.FunctionType) -> str:
    """The qualname of a function target as written in its own module (an accessor kept)."""
    last = spec.rpartition(".")[2]
    return func.__code__.co_qualname + (
        f".{last}" if last in {"getter", "setter", "deleter"} else ""
    )
