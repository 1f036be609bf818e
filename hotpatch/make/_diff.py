"""Two versions of the service's code -> a plan: what changed, definition by definition, and how.

Each changed Python module is compared with ``ast``: top-level functions and
classes, methods, nested functions, module-level statements. Every change
gets a verdict: a replaced function (``replace``; the registry later says
``inline`` or ``forward``), a new definition (``added``), a constant set
again (``migration``), something removed that can stay (``left``), or a
change that cannot go in hot (``baseline``), with the reason.
"""

from __future__ import annotations

import ast
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from hotpatch._classes import HASH_REASON
from hotpatch._validate import signature_problems
from hotpatch.make._closures import NestedTargets, escaping
from hotpatch.make._runs import ImportRuns, Source, import_runs
from hotpatch.make._sources import MakeError, Place, Tree, classify, scripts
from hotpatch.make._syntax import (
    Binding,
    Star,
    accessor,
    all_names,
    assigned_name,
    bindings,
    block_names,
    call_names,
    def_time_names,
    default_reads,
    dotted,
    function_kind,
    is_pure,
    main_guard,
    private_names,
    segment,
    signature,
    stars,
    string_lines,
    typing_names,
    typing_only,
)

__all__ = [
    "Assignment",
    "Change",
    "Helper",
    "Members",
    "ModulePlan",
    "Plan",
    "Replacement",
    "compare",
]

_Def = ast.FunctionDef | ast.AsyncFunctionDef
_SHOWN = 60  # characters of a statement quoted in a reason
# Classes whose members or fields are data the class machinery decides when it is made.
_RECORD_BASES = frozenset({"Enum", "IntEnum", "StrEnum", "Flag", "IntFlag", "NamedTuple"})
_LAYOUT_BASES = _RECORD_BASES | {"TypedDict", "Structure"}
_ENUM_AUTO = frozenset({"auto", "enum.auto"})
# Decorators that read nothing of a function's annotations when it is defined
_BLIND_TO_ANNOTATIONS = frozenset(
    {
        *("staticmethod", "classmethod", "property", "setter", "getter", "deleter"),
        *("abstractmethod", "cached_property", "overload", "override", "final"),
        *("contextmanager", "asynccontextmanager"),
    }
)


@dataclass(slots=True)
class Change:
    """One changed definition (or file) and what becomes of it."""

    name: str  # "shop.pricing:apply_discount", "shop.pricing:RATE", "src/shop/rates.json"
    what: str  # "function", "method", "class", "constant", "statement", "module", "file", ...
    verdict: str  # replace/inline/forward/added/migration/restart/baseline/left/ignored
    why: str

    def record(self) -> dict[str, str]:
        return {"name": self.name, "what": self.what, "verdict": self.verdict, "why": self.why}


@dataclass(slots=True)
class Replacement:
    """A changed function or method: ``@patch.replace(target)`` with its new source."""

    target: str
    qualname: str  # the function's own __qualname__ (a property's accessors share it)
    source: str
    def_name: str
    defaults: set[str]  # names its defaults read, when the patch file defines it
    change: Change
    mangled: str = ""  # a class whose name mangles private names: source indented in it
    note: str = ""  # a comment above it in the patch file
    reads: set[str] = field(default_factory=set)  # what its defaults read (default_reads)
    # names its defaults read from its class's body (``n=LIMIT``), and that class's qualname:
    # the holder class it is written in binds each to the running class's
    class_names: set[str] = field(default_factory=set)
    owner: str = ""


@dataclass(slots=True)
class Helper:
    """A new top-level function or class, defined in the patch file."""

    name: str
    source: str
    names: set[str]  # every global name it reads, when defined and when called
    change: Change
    line: int = 0  # where the new code has it: the patch file defines helpers in that order


@dataclass(slots=True)
class Members:
    """New methods of an existing class: ``@patch.replace_class(target)``."""

    target: str
    header: str  # "class Cart(Base):"
    sources: list[str]
    names: set[str]  # names its header reads (bases, keywords)
    changes: list[Change]
    line: int = 0  # where the new code has the class
    reads: list[set[str]] = field(default_factory=list)  # each new method's default_reads


@dataclass(slots=True)
class Assignment:
    """A module or class attribute set by a migration; ``old`` ``None``: it is new."""

    owner: str  # "" for the module, else a class qualname
    name: str
    new: ast.expr
    old: ast.expr | None
    change: Change
    new_text: str = ""  # the value's source, as written
    old_text: str = ""
    helper: bool = False  # a new definition of the patch file (which replacements may use too)


@dataclass(slots=True)
class ModulePlan:
    """What the patch does to one module."""

    name: str
    path: str
    imports: dict[str, Binding]
    old_imports: dict[str, Binding]
    old_names: set[str]  # module-level names the old version binds
    new_names: set[str]
    replacements: list[Replacement] = field(default_factory=list)
    helpers: list[Helper] = field(default_factory=list)
    members: list[Members] = field(default_factory=list)
    assignments: list[Assignment] = field(default_factory=list)
    class_scopes: dict[str, set[str]] = field(default_factory=dict)  # class -> its attributes

    @property
    def empty(self) -> bool:
        return not (self.replacements or self.helpers or self.members or self.assignments)


@dataclass(slots=True)
class Plan:
    """Every change between the two versions, and the modules the patch touches."""

    modules: list[ModulePlan]
    changes: list[Change]
    ignored: list[Change]

    @property
    def baseline_reasons(self) -> list[Change]:
        return [c for c in self.changes if c.verdict == "baseline"]


# -- the two trees ------------------------------------------------------------------------


def compare(old: Tree, new: Tree, roots: tuple[str, ...]) -> Plan:
    """Compare ``old`` and ``new`` file by file, then module by module."""
    changes: list[Change] = []
    ignored: list[Change] = []
    modules: list[ModulePlan] = []
    loose = _scripts(old, new, roots)
    for path in sorted(old.files.keys() | new.files.keys()):
        before, after = old.files.get(path), new.files.get(path)
        if before == after:
            continue
        place = Place("ignored", why=loose[path]) if path in loose else classify(path, roots)
        state = "added" if before is None else "removed" if after is None else "changed"
        if place.kind == "ignored":
            ignored.append(Change(path, "file", "ignored", f"{place.why} ({state})"))
        elif place.kind == "data":
            stem = PurePosixPath(path).stem
            what = (
                f"a Python file that is no module ({stem} is not a Python name)"
                if path.endswith(".py")
                else "a non-Python file"
            )
            why = (
                f"{what} under the import root {place.root} is {state}; the code "
                "may read it, and a running process cannot be given a new file: it needs a "
                "baseline"
            )
            changes.append(Change(path, "file", "baseline", why))
        elif before is None or after is None:
            why = (
                f"the module is {state}; modules are imported once, so a new or removed "
                "module needs a baseline"
            )
            changes.append(Change(f"{place.module} ({path})", "module", "baseline", why))
        else:
            plan = _ModuleDiff(place.module, path, before, after).run(changes)
            if not plan.empty:
                modules.append(plan)
    old, new = _without(old, loose), _without(new, loose)  # their imports are no one's
    _stale_imports(old, roots, modules, changes)
    _star_imports(old, new, roots, modules, changes)
    _ran_at_import(old, roots, modules)
    _stale_defaults_across(modules)
    _new_imports_across(modules, changes)
    return Plan(modules, changes, ignored)


def _scripts(old: Tree, new: Tree, roots: tuple[str, ...]) -> dict[str, str]:
    """The scripts beside the service (see ``scripts``): of each version that has them."""
    before, after = scripts(old, roots), scripts(new, roots)
    found = {p: why for p, why in before.items() if p not in new.files or p in after}
    found.update((p, why) for p, why in after.items() if p not in old.files)
    return found


def _without(tree: Tree, paths: dict[str, str]) -> Tree:
    if not paths:
        return tree
    return Tree(tree.label, {p: d for p, d in tree.files.items() if p not in paths})


def _new_imports_across(modules: list[ModulePlan], changes: list[Change]) -> None:
    """A new ``from M import X`` of a value this change adds to or sets in M: the patch file
    imports it for the new code before the migration in M has set it."""
    values = {
        (m.name, a.name) for m in modules for a in m.assignments if not a.owner and not a.helper
    }
    helpers = {(m.name, h.name) for m in modules for h in m.helpers}
    for module in modules:
        reexported = {a.name for a in module.assignments if not a.owner}
        for name, binding in sorted(module.imports.items()):
            if name in module.old_imports or name in reexported or not binding.attr:
                continue
            where = (binding.module, binding.attr)
            # A new definition under its own name is the patch file's own: imported from there.
            if where in values or (where in helpers and name != binding.attr):
                why = (
                    f"`{binding.statement}` is new, and {binding.module} gets {binding.attr} "
                    "in this change too: the patch file would import it before the migration "
                    f"in {binding.module} sets it"
                )
                changes.append(Change(f"{module.name}:{name}", "import", "baseline", why))


def _stale_defaults_across(modules: list[ModulePlan]) -> None:
    """A default reading what this change adds to or sets in another module
    (``key=keys.method_key``) would read it before the migration there: the patch file is
    imported, and its defaults computed, before any migration runs."""
    changed = {m.name: {a.name for a in m.assignments if not a.owner} for m in modules}
    for module in modules:
        readers = [(r.change, r.reads) for r in module.replacements]
        readers += [p for m in module.members for p in zip(m.changes, m.reads, strict=True)]
        for change, reads in readers:
            stale = sorted(r for r in reads if _changed_elsewhere(r, module, changed))
            if stale and change.verdict != "baseline":
                _stale_default(change, stale, " in another module")


def _changed_elsewhere(read: str, module: ModulePlan, changed: dict[str, set[str]]) -> bool:
    head, _, rest = read.partition(".")
    binding = module.imports.get(head)
    if binding is None:
        return False
    if binding.attr:  # from M import A (as head): M.A, a module or a name of M
        full = f"{binding.module}.{binding.attr}"
    elif binding.asname:  # import M as head
        full = binding.module
    else:  # import a.b binds a
        full = head
    full = f"{full}.{rest}" if rest else full
    return any(
        full.startswith(f"{name}.") and full[len(name) + 1 :].partition(".")[0] in names
        for name, names in changed.items()
        if name != module.name
    )


def _stale_imports(
    old: Tree, roots: tuple[str, ...], modules: list[ModulePlan], changes: list[Change]
) -> None:
    """Constants another module copied at import (``from m import RATE``) would go stale."""
    changed = {(m.name, a.name) for m in modules for a in m.assignments if not a.owner and a.old}
    if not changed:
        return
    for path, data in sorted(old.files.items()):
        place = classify(path, roots)
        if place.kind != "module":
            continue
        try:
            tree = ast.parse(data)
        except (SyntaxError, ValueError):
            continue
        is_package = path.endswith("__init__.py")
        for binding in bindings(tree, place.module, is_package).values():
            if (binding.module, binding.attr) in changed:
                why = (
                    f"{place.module} copies {binding.attr} from {binding.module} when it is "
                    "imported; the copy would keep the old value after a migration"
                )
                changes.append(Change(f"{place.module}:{binding.name}", "import", "baseline", why))


def _ran_at_import(old: Tree, roots: tuple[str, ...], modules: list[ModulePlan]) -> None:
    """A replaced function that ran when a module was imported (``TABLE = rates.build()``,
    ``builder = Builder()`` then ``builder.build_table()``, a hook run for each class made),
    or a value another module read then (``DOUBLE = rates.RATE * 2``), or the module itself
    other than in a value the migration computes again (``log.setLevel(LEVEL)``, a function
    run at import reading it): what was made, computed or handed on then keeps the old
    result, where a restart computes it anew. What make cannot follow counts as running it
    (see _runs)."""
    changed = _changed_names(modules)
    if not changed:
        return
    sources: list[Source] = []
    for path, data in sorted(old.files.items()):
        place = classify(path, roots)
        if place.kind != "module":
            continue
        try:
            tree = ast.parse(data)
        except (SyntaxError, ValueError):
            continue
        lines = data.decode("utf-8", "replace").splitlines()
        sources.append(Source(place.module, tree, lines, path.endswith("__init__.py")))
    found = import_runs(sources)
    for full, (change, how, owner) in changed.items():
        if change.verdict not in ("replace", "migration"):
            continue
        if how == "reads":
            read = found.reads.get(full)
            if read is not None and read[0] != owner:
                change.verdict = "baseline"
                change.why = (
                    f"{read[0]} reads it {read[1]}: what it computed from it keeps the old "
                    "value after a migration"
                )
            elif (own := found.own.get(full)) is not None:
                said = "the module reads it" if own[0] == owner else f"{own[0]} reads it"
                change.verdict = "baseline"
                change.why = (
                    f"{said} {own[1]}: what that code computed, made or handed on with it (a "
                    "value, an object, an argument a library keeps) keeps the old value after "
                    "a migration, where a restart reads the new one"
                )
            continue
        why = _ran(found, full, owner)
        if why:
            change.verdict, change.why = "baseline", why


def _ran(found: ImportRuns, full: str, owner: str) -> str:
    """Why the function ``full`` of the module ``owner`` ran, or may have run, at import
    ("": it did not)."""
    kept = "what it made or set then keeps the old code's result, and a restart would run the "
    run = found.runs.get(full)
    if run is not None:
        said = "it runs" if run[0] == owner else f"{run[0]} runs it"
        return f"{said} {run[1]}: {kept}new code there"
    if full in found.escapes and found.blind is not None:
        start, where = found.blind
        said = "it may run" if start == owner else f"{start} may run it"
        return (
            f"{said} {where}: a call of something make cannot name, and the code "
            f"run at import hands this function on ({found.escapes[full][1]}); {kept}new code "
            "there if it ran"
        )
    if found.handed is not None and (full in found.escapes or full in found.exposed):
        start, where = found.handed
        said = "it may run" if start == owner else f"{start} may run it"
        if full in found.escapes:
            handed_on = found.escapes[full][1]
            what = f"this function, which the code run at import hands on ({handed_on})"
        else:
            cls, made = found.exposed[full]
            what = f"a {cls.rpartition('.')[2]}, made {made}, and call any method of it"
        return (
            f"{said} {where}: code not the project's is handed something make cannot name, "
            f"which may be {what}; {kept}new code there if it ran"
        )
    return ""


def _changed_names(modules: list[ModulePlan]) -> dict[str, tuple[Change, str, str]]:
    """Dotted name -> (change, "runs" for a replaced function or "reads" for a value set
    again, its module)."""
    changed: dict[str, tuple[Change, str, str]] = {}
    for module in modules:
        for r in module.replacements:
            if "<locals>" not in r.qualname and r.change.verdict == "replace":
                changed[f"{module.name}.{r.qualname}"] = (r.change, "runs", module.name)
        for a in module.assignments:
            if not a.owner and not a.helper and a.old is not None:
                changed[f"{module.name}.{a.name}"] = (a.change, "reads", module.name)
    return changed


@dataclass(slots=True)
class _Offer:
    """What a module newly offers to a module taking every name of it (``from M import *``),
    after a restart, as this change leaves it."""

    origin: str  # the module that has the names (M, or the module M takes them from)
    new: dict[str, str]  # name -> "helper" (a new definition), "value", or "existing"
    stale: set[str]  # offered before and after, and a migration sets a new value
    computed: str = ""  # "NAME's __all__ is computed (line N: `...`)": which names, unknown
    unknown: set[str] = field(default_factory=set)  # the names it may offer, then


def _star_imports(
    old: Tree, new: Tree, roots: tuple[str, ...], modules: list[ModulePlan], changes: list[Change]
) -> None:
    """A module that takes every name of another (``from .more import *``) gets, after a
    restart, what that one newly offers (``__all__``, or else its public names), and copies
    of its values. A new definition, or a name newly offered, is set on it by the migration
    too; a value the patch file could only read after a migration, a copy that would keep
    an old value, or an ``__all__`` computed when the module is imported, is a baseline
    naming the star import."""
    offers = [(m.name, offer) for m in modules if (offer := _offer(m, old, new)) is not None]
    if not offers:
        return
    _computed_alls(new, roots, offers, changes)
    takers = _Takers(old, new, modules)
    for path, data in sorted(new.files.items()):
        place = classify(path, roots)
        if place.kind != "module":
            continue
        takers.paths[place.module] = path
        if path not in old.files or not re.search(rb"import\s+\*", data):
            continue  # a new module is a baseline already
        try:
            tree = ast.parse(data)
        except (SyntaxError, ValueError):
            continue
        lines = data.decode("utf-8", "replace").splitlines()
        for star in stars(tree, place.module, path.endswith("__init__.py"), lines):
            takers.of.setdefault(star.module, []).append((place.module, star))
    decided: set[str] = set()
    seen: set[tuple[str, str]] = set()
    while offers:
        source, offer = offers.pop(0)
        for taker, star in takers.of.get(source, []):
            if (taker, source) in seen:
                continue
            seen.add((taker, source))
            made, onward = takers.take(taker, star, source, offer)
            for change in made:
                if change.name not in decided:
                    decided.add(change.name)
                    changes.append(change)
            if onward is not None:
                offers.append((taker, onward))


def _computed_alls(
    new: Tree, roots: tuple[str, ...], offers: list[tuple[str, _Offer]], changes: list[Change]
) -> None:
    """A module whose ``__all__`` is computed when it is imported (``__all__ =
    more.__all__ + other.__all__``, or in a loop), and which imports a module that now
    offers new names: a restart computes it anew, the running module keeps the old one (and
    ``from pkg import *`` misses the new names). Which names a restart lists is not read
    from the code: a baseline naming the line."""
    offered = {
        source: sorted({*offer.new, *offer.unknown})
        for source, offer in offers
        if offer.new or offer.unknown
    }
    if not offered:
        return
    for path, data in sorted(new.files.items()):
        place = classify(path, roots)
        if place.kind != "module" or b"__all__" not in data:
            continue
        try:
            tree = ast.parse(data)
        except (SyntaxError, ValueError):
            continue
        _, computed = all_names(tree)
        if computed is None:
            continue
        package = path.endswith("__init__.py")
        lines = data.decode("utf-8", "replace").splitlines()
        imported = {b.module for b in bindings(tree, place.module, package).values()}
        imported |= {f"{b.module}.{b.attr}" for b in bindings(tree, place.module, package).values()}
        imported |= {star.module for star in stars(tree, place.module, package, lines)}
        for source in sorted(imported & set(offered) - {place.module}):
            names = ", ".join(offered[source])
            line = lines[computed.lineno - 1].strip()[:_SHOWN]
            why = (
                f"{place.module}'s __all__ is computed (line {computed.lineno}: `{line}`) when "
                f"it is imported, and it imports {source}, which now offers {names}: a restart "
                f"would compute it anew, the running {place.module} keeps its old __all__ (a "
                f"`from {place.module} import *` would miss them)"
            )
            changes.append(Change(f"{place.module}:__all__", "import", "baseline", why))
            break


def _offer(module: ModulePlan, old: Tree, new: Tree) -> _Offer | None:
    """What ``module`` newly offers to a star import of it (None: nothing)."""
    trees = []
    for version in (old, new):
        try:
            trees.append(ast.parse(version.files[module.path]))
        except (SyntaxError, ValueError):
            return None
    (before, why_before), (after, why_after) = all_names(trees[0]), all_names(trees[1])
    values = {a.name: a for a in module.assignments if not a.owner}
    helpers = {h.name for h in module.helpers}
    offer = _Offer(module.name, {}, set())
    changed = {n for n, a in values.items() if a.old is not None and not a.helper}
    computed = why_after or why_before
    if computed is not None:
        text = (new if why_after else old).files[module.path].decode("utf-8", "replace")
        line = text.splitlines()[computed.lineno - 1].strip()
        offer.computed = (
            f"{module.name}'s __all__ is computed (line {computed.lineno}: `{line[:_SHOWN]}`)"
        )
        offer.unknown = (module.new_names - module.old_names) | changed
        return offer if offer.unknown else None

    def offers(listed: frozenset[str] | None, names: set[str], name: str) -> bool:
        return name in listed if listed is not None else name in names and name[:1] != "_"

    for name in sorted(module.new_names | (after or set())):
        now = offers(after, module.new_names, name)
        if now and not offers(before, module.old_names, name):
            if name in helpers:
                offer.new[name] = "helper"
            elif name in values:
                offer.new[name] = "value"
            elif name in module.old_names:
                offer.new[name] = "existing"
        elif now and name in changed:
            offer.stale.add(name)
    return offer if offer.new or offer.stale else None


class _Takers:
    """The modules that take every name of another, and what each gets from an offer."""

    def __init__(self, old: Tree, new: Tree, modules: list[ModulePlan]) -> None:
        self.old, self.new, self.modules = old, new, modules
        self.by_name = {m.name: m for m in modules}
        self.paths: dict[str, str] = {}  # module -> its file, in the new version
        self.of: dict[str, list[tuple[str, Star]]] = {}  # module -> (who takes all, where)

    def take(
        self, taker: str, star: Star, source: str, offer: _Offer
    ) -> tuple[list[Change], _Offer | None]:
        """``taker`` takes every name of ``source`` (``star``), which offers ``offer``: the
        changes that makes (migrations set on its plan, baselines), and what ``taker``
        itself now offers to a star import of it (None: nothing)."""
        path = self.paths[taker]
        before = _parse(taker, path, self.old.files[path], "old")
        after = _parse(taker, path, self.new.files[path], "new")
        where = f"{taker} takes every name of {source} ({star.said()})"
        made: list[Change] = []
        for name in sorted(offer.unknown):
            why = (
                f"{where}, and {offer.computed}: which of its new names a restart would copy "
                f"into {taker} cannot be read from the code"
            )
            made.append(Change(f"{taker}:{name}", "import", "baseline", why))
        for name in sorted(offer.stale):
            why = (
                f"{taker} copies {name} from {source} when it is imported ({star.said()}); "
                "the copy would keep the old value after a migration"
            )
            made.append(Change(f"{taker}:{name}", "import", "baseline", why))
        lines = [line.rstrip("\n") for line in after.lines]
        others = [
            s
            for s in stars(after.tree, taker, path.endswith("__init__.py"), lines)
            if s.module != source
        ]
        taken: dict[str, str] = {}
        for name, kind in sorted(offer.new.items()):
            offered = f"{where}, which now offers {name}"
            if offer.origin != source:
                offered += f" (from {offer.origin})"
            plan = self.by_name.get(taker)
            if plan is not None and any(a.name == name and not a.owner for a in plan.assignments):
                continue  # the module's own change sets it (a new `from M import name`)
            why = self._refused(name, kind, offered, offer, versions=(before, after), others=others)
            if why:
                made.append(Change(f"{taker}:{name}", "import", "baseline", why))
                continue
            why = (
                f"a new name of {taker}: {offered}; set by the migration, as a restart would "
                "(deleted on rollback)"
            )
            change = Change(f"{taker}:{name}", "import", "migration", why)
            made.append(change)
            plan = plan or self._plan(taker, path, before, after)
            statement = f"from {offer.origin} import {name}"
            plan.imports[name] = Binding(name, statement, offer.origin, name, "")
            value = ast.Name(id=name, ctx=ast.Load())
            plan.assignments.append(Assignment("", name, value, None, change, name))
            taken[name] = kind
        return made, _onward(taker, after, offer, taken)

    def _refused(
        self,
        name: str,
        kind: str,
        offered: str,
        offer: _Offer,
        *,
        versions: tuple[_Version, _Version],
        others: list[Star],
    ) -> str:
        """Why ``name`` cannot be set on the module taking it ("" if it can)."""
        if any(name in v.names | v.blocks for v in versions):
            return (
                f"{offered}, and binds {name} itself too: which of the two a restart gives "
                "depends on their order"
            )
        also = [s for s in others if self._offers(s.module, name)]
        if also:
            return (
                f"{offered}, and {also[0].module} ({also[0].said()}) offers it too: a restart "
                "gives the one imported last"
            )
        if kind == "value":
            return (
                f"{offered}, a new value: the patch file would read it before the migration "
                f"in {offer.origin} sets it"
            )
        return ""

    def _plan(self, taker: str, path: str, before: _Version, after: _Version) -> ModulePlan:
        plan = ModulePlan(
            taker,
            path,
            after.imports,
            before.imports,
            before.names | before.blocks,
            after.names | after.blocks,
        )
        self.by_name[taker] = plan
        self.modules.append(plan)
        return plan

    def _offers(self, module: str, name: str) -> bool:
        """Does ``module`` (another star import's source, in this tree) offer ``name``?"""
        path = self.paths.get(module)
        if path is None:
            return False
        try:
            version = _parse(module, path, self.new.files[path], "new")
        except MakeError:
            return False
        listed, _ = all_names(version.tree)
        if listed is not None:
            return name in listed
        return name in (version.names | version.blocks) and name[:1] != "_"


def _onward(taker: str, after: _Version, offer: _Offer, taken: dict[str, str]) -> _Offer | None:
    """What ``taker`` offers in turn, of what it took (None: nothing)."""
    listed, computed = all_names(after.tree)
    onward = _Offer(offer.origin, {}, set())
    if computed is not None and (taken or offer.stale):
        line = after.lines[computed.lineno - 1].strip()[:_SHOWN]
        onward.computed = f"{taker}'s __all__ is computed (line {computed.lineno}: `{line}`)"
        onward.unknown = set(taken) | offer.stale
        return onward
    for name in [*taken, *offer.stale]:
        if (name in listed) if listed is not None else name[:1] != "_":
            if name in taken:
                onward.new[name] = taken[name]
            else:
                onward.stale.add(name)
    return onward if onward.new or onward.stale else None


# -- one module ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Version:
    """One version of a module, split into what the comparison needs."""

    tree: ast.Module
    lines: list[str]
    keep: set[int]
    defs: dict[str, list[ast.stmt]] = field(default_factory=dict)
    assigns: dict[str, ast.stmt] = field(default_factory=dict)
    statements: list[ast.stmt] = field(default_factory=list)
    script: list[ast.stmt] = field(default_factory=list)  # under `if __name__ == "__main__":`
    imports: dict[str, Binding] = field(default_factory=dict)
    blocks: set[str] = field(default_factory=set)  # bound under try/if/with... at import

    @property
    def names(self) -> set[str]:
        return set(self.defs) | set(self.assigns) | set(self.imports)

    def text(self, node: ast.expr | None) -> str:
        """The source of an expression as written (one line), or ""."""
        if node is None or node.end_lineno != node.lineno or node.end_col_offset is None:
            return ""
        return self.lines[node.lineno - 1][node.col_offset : node.end_col_offset]


def _deleted(version: _Version, name: str) -> ast.Delete | None:
    """The module body's ``del NAME`` (a factory called once at import, then deleted)."""
    for node in version.tree.body:
        if isinstance(node, ast.Delete) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return node
    return None


def _parse(module: str, path: str, data: bytes, which: str) -> _Version:
    try:
        text = data.decode("utf-8")
        with warnings.catch_warnings():  # the project's own warnings (escapes...) are not ours
            warnings.simplefilter("ignore", SyntaxWarning)
            tree = ast.parse(text, filename=path)
    except UnicodeDecodeError:
        msg = f"the {which} version of {path} is not UTF-8 text"
        raise MakeError(msg) from None
    except SyntaxError as exc:
        msg = f"the {which} version of {path} does not parse (line {exc.lineno}: {exc.msg})"
        raise MakeError(msg) from None
    version = _Version(tree, text.splitlines(True), string_lines(text, tree))
    version.imports = bindings(tree, module, path.endswith("__init__.py"))
    version.blocks = block_names(tree)
    body = list(tree.body)
    typing = typing_names(tree)
    if body and _is_docstring(body[0]):
        body = body[1:]
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            version.defs.setdefault(node.name, []).append(node)
        elif isinstance(node, ast.Import | ast.ImportFrom) and not _star(node):
            continue  # in version.imports
        elif (target := assigned_name(node)) is not None and target not in version.assigns:
            version.assigns[target] = node
        elif isinstance(node, ast.If) and typing_only(node.test, typing):
            continue  # typing only: never runs
        elif isinstance(node, ast.If) and main_guard(node.test):
            version.script.append(node)
        elif isinstance(node, ast.AnnAssign) and node.value is None:
            continue  # an annotation only
        else:
            version.statements.append(node)
    for name in [n for n in version.assigns if n in version.defs]:
        version.statements.append(version.assigns.pop(name))
    return version


def _is_docstring(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


def _star(node: ast.Import | ast.ImportFrom) -> bool:
    return any(alias.name == "*" for alias in node.names)


def _value(node: ast.stmt) -> ast.expr:
    assert isinstance(node, ast.Assign | ast.AnnAssign)
    assert node.value is not None
    return node.value


def _dump(node: ast.AST) -> str:
    return ast.dump(node)


def _first_line(version: _Version, node: ast.stmt) -> str:
    text = version.lines[node.lineno - 1].strip()
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


class _ModuleDiff:
    """The comparison of one module's two versions."""

    def __init__(self, module: str, path: str, old: bytes, new: bytes) -> None:
        self.module = module
        self.path = path
        self.old = _parse(module, path, old, "old")
        self.new = _parse(module, path, new, "new")
        self.plan = ModulePlan(
            module,
            path,
            self.new.imports,
            self.old.imports,
            self.old.names | self.old.blocks,
            self.new.names | self.new.blocks,
        )
        self.changes: list[Change] = []
        self.replaced: set[str] = set()  # module-level functions this patch replaces
        names = self.old.names | self.new.names
        self.closures = NestedTargets(self.old.lines, self.new.lines, self.new.keep, names)

    def name(self, qualname: str) -> str:
        return f"{self.module}:{qualname}"

    def add(self, qualname: str, what: str, verdict: str, why: str) -> Change:
        change = Change(self.name(qualname), what, verdict, why)
        self.changes.append(change)
        return change

    def baseline(self, qualname: str, what: str, why: str) -> None:
        self.add(qualname, what, "baseline", why)

    def run(self, out: list[Change]) -> ModulePlan:
        self._imports()
        self._statements()
        self._constants()
        self._definitions()
        # In the new code's order: a new class's bases or a default may read an earlier one.
        self.plan.helpers.sort(key=lambda h: h.line)
        self.plan.members.sort(key=lambda m: m.line)
        self._names()
        self._defaults()
        out.extend(self.changes)
        return self.plan

    # -- module-level statements ----------------------------------------------------------

    def _imports(self) -> None:
        for name, binding in sorted(self.new.imports.items()):
            before = self.old.imports.get(name)
            if before is not None and _same_package(before, binding):
                why = (
                    f"`{before.statement}` becomes `{binding.statement}`: both bind {name} to "
                    "the same package, and what the old import loaded stays loaded"
                )
                self.add(name, "import", "left", why)
            elif before is not None and before.statement != binding.statement:
                why = (
                    f"the import changes from `{before.statement}` to `{binding.statement}`; "
                    "the module keeps the object it imported"
                )
                self.baseline(name, "import", why)
            elif before is None and name in self.old.names:
                why = (
                    f"{name} was defined in the module; now it is imported (`{binding.statement}`)"
                )
                self.baseline(name, "import", why)

    def _statements(self) -> None:
        old = Counter(_dump(n) for n in self.old.statements)
        new = Counter(_dump(n) for n in self.new.statements)
        for version, other, state in ((self.new, old, "added"), (self.old, new, "removed")):
            seen = Counter(other)
            for node in version.statements:
                dump = _dump(node)
                if seen[dump] > 0:
                    seen[dump] -= 1
                    continue
                where = f"line {node.lineno}"
                why = (
                    f"module body statement {state} ({where}: `{_first_line(version, node)}`): "
                    "it runs when the module is imported, which a running process did long ago"
                )
                self.baseline(f"<module body, {where}>", "statement", why)
        if [_dump(n) for n in self.old.script] != [_dump(n) for n in self.new.script]:
            why = "runs only when the module is run as a script, never in the service"
            self.add("<if __name__ == '__main__'>", "statement", "left", why)

    def _constants(self) -> None:
        changed: set[str] = set()
        for name, node in self.new.assigns.items():
            before = self.old.assigns.get(name)
            value = _value(node)
            if before is not None and _dump(_value(before)) == _dump(value):
                if not (_names_in(value) & changed):
                    continue
                read = ", ".join(sorted(_names_in(value) & changed))
                why = f"its value is computed from {read}, which change"
            elif before is None:
                why = "a new module-level value, set by the migration (deleted on rollback)"
            else:
                why = "the module-level value changes; the migration sets it (and back on rollback)"
            if name in self.old.defs or name in self.old.imports:
                self.baseline(name, "constant", f"{name} changes from a definition to a value")
                continue
            old_value = _value(before) if before is not None else None
            if not is_pure(value) or (old_value is not None and not is_pure(old_value)):
                text = _first_line(self.new, node)
                self.baseline(
                    name,
                    "statement",
                    f"module body statement `{text}` calls code when the module is imported "
                    "(not a plain value a migration can set again)",
                )
                continue
            changed.add(name)
            change = self.add(name, "constant", "migration", why)
            self.plan.assignments.append(
                Assignment(
                    "",
                    name,
                    value,
                    old_value,
                    change,
                    self.new.text(value),
                    self.old.text(old_value),
                )
            )
        for name in self.old.assigns.keys() - self.new.assigns.keys():
            if name not in self.new.defs:
                self.add(name, "constant", "left", "removed in the new code; left in the process")

    # -- definitions ------------------------------------------------------------------------

    def _definitions(self) -> None:  # noqa: PLR0912 - one case per branch reads best
        for name in sorted(self.old.defs.keys() | self.new.defs.keys()):
            olds, news = self.old.defs.get(name, []), self.new.defs.get(name, [])
            if not news:
                if name not in self.new.assigns and name not in self.new.imports:
                    self.add(
                        name,
                        _what(olds[-1]),
                        "left",
                        "removed in the new code; left in the process",
                    )
                else:
                    self.baseline(name, _what(olds[-1]), "changes from a definition to a value")
                continue
            if not olds:
                if name in self.old.assigns or name in self.old.imports:
                    self.baseline(name, _what(news[-1]), "changes from a value to a definition")
                else:
                    self._helper(news[-1])
                continue
            if [_dump(n) for n in olds[:-1]] != [_dump(n) for n in news[:-1]] and not all(
                _overload(n) for n in olds[:-1] + news[:-1]
            ):
                self.baseline(
                    name, _what(news[-1]), "defined more than once, and a definition changes"
                )
                continue
            old, new = olds[-1], news[-1]
            if _dump(old) == _dump(new):
                continue
            gone = _deleted(self.old, name)
            if gone is not None:
                why = (
                    f"the module deletes it when imported (line {gone.lineno}: "
                    f"`{_first_line(self.old, gone)}`): the running module has no {name} to "
                    "patch, and what it made before that keeps the old code"
                )
                self.baseline(name, _what(new), why)
                continue
            if isinstance(old, ast.ClassDef) and isinstance(new, ast.ClassDef):
                self._class(old, new, name)
            elif isinstance(old, _Def) and isinstance(new, _Def):
                if self._function(old, new, name, name, "function"):
                    self.replaced.add(name)
            else:
                why = f"changes from a {_what(old)} to a {_what(new)}"
                self.baseline(name, _what(new), why)

    def _helper(self, node: ast.stmt) -> None:
        assert isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        source = segment(self.new.lines, node, self.new.keep, decorators=True)
        names = call_names(source) | def_time_names(node)
        what = _what(node)
        why = f"a new {what}, defined in the patch file and set on the module by the migration"
        change = self.add(node.name, what, "added", why)
        self.plan.helpers.append(Helper(node.name, source, names, change, node.lineno))
        value = ast.Name(id=node.name, ctx=ast.Load())
        self.plan.assignments.append(
            Assignment("", node.name, value, None, change, node.name, helper=True)
        )
        if any(isinstance(n, ast.Global) for n in ast.walk(node)):
            why = (
                f"the new {what} assigns module globals (`global`); defined in the patch file, "
                "it would assign the patch file's globals, not the module's"
            )
            change.verdict, change.why = "baseline", why

    def _function(
        self,
        old: _Def,
        new: _Def,
        qualname: str,
        target: str,
        what: str,
        *,
        body: _ClassBody | None = None,
    ) -> bool:
        """Compare two versions of a function (a method: with its class's new ``body``);
        True when it becomes a replacement."""
        why = _decorated_change(old, new)
        if why:
            self.baseline(target, what, why)
            return False
        kinds = function_kind(old), function_kind(new)
        if kinds[0] != kinds[1]:
            why = f"it changes from a {kinds[0]} to a {kinds[1]}; its callers would break"
            self.baseline(target, what, why)
            return False
        if what == "method" and new.name == "__hash__":
            self.baseline(target, what, HASH_REASON.format("changes"))
            return False
        problems = signature_problems(signature(old.args), signature(new.args))
        if problems:
            why = f"its signature changes so that old callers cannot call it: {'; '.join(problems)}"
            self.baseline(target, what, why)
            return False
        inner = escaping(old, new, qualname)
        if inner:
            self._nested(old, new, qualname, target, inner)
            return False
        source = segment(self.new.lines, new, self.new.keep)
        owner = qualname.rpartition(".")[0] if what != "function" else ""
        # defaults reading the class body's names (n=LIMIT) are computed in a holder class
        # binding each to the running class's, as are private names (self.__x) mangled there
        in_class = _class_names(new, body) if body is not None else set()
        mangled = ""  # the class whose name mangles its private names (self.__x)
        if owner and (private_names(new) or in_class):
            mangled = owner.rpartition(".")[2]
            source = segment(self.new.lines, new, self.new.keep, indent=4)
        defaults = (
            def_time_names(new)
            - in_class
            - {n.id for d in new.decorator_list for n in ast.walk(d) if isinstance(n, ast.Name)}
        )
        change = self.add(target, what, "replace", "changed; replaced")
        self.plan.replacements.append(
            Replacement(
                self.name(target),
                qualname,
                source,
                new.name,
                defaults,
                change,
                mangled,
                reads=default_reads(new) | {f"{owner}.{n}" for n in in_class},
                class_names=in_class,
                owner=owner,
            )
        )
        return True

    def _nested(self, old: _Def, new: _Def, qualname: str, target: str, escaping: str) -> None:
        """A nested function that may outlive a call changed: when nothing but nested
        functions' own code changed, each is a nested target (see _closures), else a baseline."""
        found = self.closures.changes(old, new, qualname) if target == qualname else None
        if found is None:
            why = (
                f"the nested function {escaping} changes and may outlive a call of {qualname} "
                "(it is returned, stored, passed on or decorated): function objects already "
                "made from it would keep the old code; "
                + (
                    f"{qualname} changes around it too"
                    if target == qualname
                    else f"no target names code nested in {target}"
                )
            )
            self.baseline(escaping, "nested function", why)
            return
        for change in found:
            if change.why:
                self.baseline(change.qualname, "nested function", change.why)
        for change in found if not any(c.why for c in found) else ():
            why = f"changed inside {change.outer}; replaced in every function made from it"
            made = self.add(change.qualname, "nested function", "replace", why)
            self.plan.replacements.append(
                Replacement(
                    self.name(change.qualname),
                    change.qualname,
                    change.source,
                    change.def_name,
                    set(change.defaults),
                    made,
                    change.mangled,
                    change.note,
                )
            )

    def _class(self, old: ast.ClassDef, new: ast.ClassDef, qualname: str) -> None:
        checks = (
            (old.decorator_list, new.decorator_list, "its decorators change"),
            (
                [*old.bases, *old.keywords],
                [*new.bases, *new.keywords],
                "its bases or metaclass change",
            ),
        )
        for before, after, why in checks:
            if [_dump(n) for n in before] != [_dump(n) for n in after]:
                self.baseline(
                    qualname,
                    "class",
                    f"class layout: {why} (instances and subclasses keep the old layout)",
                )
                return
        layout = bool(new.decorator_list or new.keywords) or any(
            dotted(b).rpartition(".")[2] in _LAYOUT_BASES for b in new.bases
        )
        old_body, new_body = _ClassBody(old), _ClassBody(new)
        self.plan.class_scopes[qualname] = set(new_body.assigns) | set(new_body.members)
        if _dump_slots(old_body) != _dump_slots(new_body):
            self.baseline(
                f"{qualname}.__slots__",
                "class",
                "class layout: __slots__ change (instance layout cannot change hot)",
            )
            return
        for node in _diff_statements(old_body.statements, new_body.statements):
            why = f"class layout: class body statement `{ast.unparse(node)[:60]}` changes"
            self.baseline(qualname, "class", why)
            return
        added: list[tuple[str, ast.stmt]] = []
        for name in sorted(old_body.members.keys() | new_body.members.keys()):
            self._member(
                qualname,
                name,
                old_body.members.get(name),
                new_body.members.get(name),
                added,
                body=new_body,
            )
        for name in sorted(old_body.assigns.keys() | new_body.assigns.keys()):
            self._class_value(
                qualname, name, old_body.assigns.get(name), new_body.assigns.get(name), layout
            )
        if added:
            header = (
                f"class {new.name}"
                + (
                    "(" + ", ".join(ast.unparse(n) for n in [*new.bases, *new.keywords]) + ")"
                    if new.bases or new.keywords
                    else ""
                )
                + ":"
            )
            names = {
                n.id
                for part in (*new.bases, *(k.value for k in new.keywords))
                for n in ast.walk(part)
                if isinstance(n, ast.Name)
            }
            sources = [
                segment(self.new.lines, node, self.new.keep, decorators=True, indent=4)
                for _, node in added
            ]
            # What the patch class's body reads when the patch file is imported: the methods'
            # decorators and defaults, the slots.
            names |= {n for _, node in added for n in def_time_names(node)}
            if new_body.slots is not None:  # the same slots (checked above), declared again:
                # a patch class without them would be another layout to the registry
                sources.insert(0, segment(self.new.lines, new_body.slots, self.new.keep, indent=4))
                names |= _names_in(new_body.slots)
            if any(dotted(b).rpartition(".")[2] in _RECORD_BASES for b in new.bases):
                # The same members or fields (unchanged: checked above), declared again: a
                # patch class without them would be another enum or tuple to the registry.
                data = self._record_data(new, new_body, qualname, [n for n, _ in added])
                if data is None:
                    return
                declared = [segment(self.new.lines, n, self.new.keep, indent=4) for n in data]
                sources.insert(0, "\n".join(text.rstrip("\n") for text in declared) + "\n")
                bound = {assigned_name(n) or _annotated_name(n) for n in data}
                names |= {n for node in data for n in _names_in(node)} - bound
            changes = [
                self.add(
                    f"{qualname}.{name}",
                    "method",
                    "added",
                    f"a new method of {qualname}, added by replace_class",
                )
                for name, _ in added
            ]
            for change in changes:
                if change.name.endswith(".__hash__"):
                    change.verdict, change.why = "baseline", HASH_REASON.format("is added")
            reads = [default_reads(node) if isinstance(node, _Def) else set() for _, node in added]
            self.plan.members.append(
                Members(self.name(qualname), header, sources, names, changes, new.lineno, reads)
            )

    def _record_data(
        self, node: ast.ClassDef, body: _ClassBody, qualname: str, added: list[str]
    ) -> list[ast.stmt] | None:
        """The statements declaring an enum's members or a named tuple's fields, in order;
        ``None`` (each new method a baseline saying why) where declaring them again in the
        patch class would not give the same ones without calling code."""
        data: list[ast.stmt] = []
        why = ""
        statements = [n for n in body.statements if not _no_op(n)]
        for item in statements + list(body.assigns.values()):
            if not isinstance(item, ast.Assign | ast.AnnAssign):
                why = f"its class body statement `{ast.unparse(item)[:_SHOWN]}` is not one"
                break
        else:
            for item in sorted(statements + list(body.assigns.values()), key=_position):
                data.append(item)
                parts = [p for p in (getattr(item, "value", None), _annotation(item)) if p]
                problems = [(p, _record_problem(p)) for p in parts]
                bad = [(p, problem) for p, problem in problems if problem]
                if bad:
                    name = assigned_name(item) or _annotated_name(item)
                    shown = ast.unparse(bad[0][0])[:_SHOWN]
                    why = f"{node.name}.{name} is made by `{shown}`, {bad[0][1]}"
                    break
            else:
                return data
        for name in added:
            self.baseline(
                f"{qualname}.{name}",
                "method",
                f"a new method of {node.name} is added by a patch class declaring its members "
                f"or fields again, and {why}",
            )
        return None

    def _member(
        self,
        cls: str,
        name: str,
        old: list[ast.stmt] | None,
        new: list[ast.stmt] | None,
        added: list[tuple[str, ast.stmt]],
        *,
        body: _ClassBody,
    ) -> None:
        qual = f"{cls}.{name}"
        if new is None:
            self.add(qual, "method", "left", "removed in the new code; left in the class")
            return
        if old is None:
            if (
                len(new) == 1
                and isinstance(new[0], _Def)
                and accessor(new[0])[0] != "cached_property"
            ):
                added.append((name, new[0]))
            else:
                self.baseline(
                    qual,
                    "member",
                    "a new member that is not a plain method, classmethod or staticmethod",
                )
            return
        old_kinds = [_member_kind(n) for n in old]
        new_kinds = [_member_kind(n) for n in new]
        if old_kinds != new_kinds:
            kinds = ", ".join(k for k, _ in old_kinds), ", ".join(k for k, _ in new_kinds)
            why = f"class layout: a member changes kind ({kinds[0]} -> {kinds[1]})"
            self.baseline(qual, "member", why)
            return
        for (kind, acc), before, after in zip(new_kinds, old, new, strict=True):
            if _dump(before) == _dump(after):
                continue
            if isinstance(before, ast.ClassDef) and isinstance(after, ast.ClassDef):
                self._class(before, after, qual)
                continue
            assert isinstance(before, _Def)
            assert isinstance(after, _Def)
            target = qual if acc in ("", "getter") else f"{qual}.{acc}"
            what = {"property": f"property {acc}", "function": "method"}.get(kind, kind)
            self._function(before, after, qual, target, what, body=body)

    def _class_value(
        self, cls: str, name: str, old: ast.stmt | None, new: ast.stmt | None, layout: bool
    ) -> None:
        qual = f"{cls}.{name}"
        if old is not None and new is not None and _dump(old) == _dump(new):
            return
        if new is None:
            self.add(qual, "class attribute", "left", "removed in the new code; left in the class")
            return
        if layout:
            why = "class layout: a field or member of a dataclass, enum or similar class changes"
            self.baseline(qual, "class attribute", why)
            return
        value, before = _value(new), _value(old) if old is not None else None
        if not is_pure(value) or (before is not None and not is_pure(before)):
            self.baseline(
                qual,
                "class attribute",
                "class body statement that calls code when the class is made",
            )
            return
        why = (
            "a new class attribute, set by the migration"
            if old is None
            else "the class attribute changes; the migration sets it (and back on rollback)"
        )
        change = self.add(qual, "class attribute", "migration", why)
        self.plan.assignments.append(
            Assignment(
                cls, name, value, before, change, self.new.text(value), self.old.text(before)
            )
        )

    # -- names the patch file must provide --------------------------------------------------

    def _names(self) -> None:
        """Refuse what the patch file's own namespace cannot serve faithfully."""
        migrated = {a.name for a in self.plan.assignments if not a.owner and not a.helper}
        helpers = {h.name for h in self.plan.helpers}
        for helper in self.plan.helpers:
            stale = sorted(helper.names & (migrated | self.replaced) - helpers)
            if stale and helper.change.verdict != "baseline":
                helper.change.verdict = "baseline"
                helper.change.why = (
                    f"the new {helper.change.what} reads {', '.join(stale)}, which this change "
                    "also changes; defined in the patch file, it would see the old one"
                )
        for name, nodes in self.new.defs.items():
            if name in helpers:
                continue
            stale = sorted(_definition_reads(nodes[-1]) & migrated)
            if stale:
                why = (
                    f"its definition reads {', '.join(stale)} (a default, a decorator or the "
                    "class body) when it is made; a migration would not reach that copy"
                )
                self.baseline(name, _what(nodes[-1]), why)
        for name, binding in self.new.imports.items():
            if name in self.old.imports or self._used(name):
                continue
            if binding.attr and name not in self.old.names:  # a name the module now offers
                why = (
                    f"a new name of the module (`{binding.statement}`, a re-export), set by the "
                    "migration (deleted on rollback)"
                )
                change = self.add(name, "import", "migration", why)
                value = ast.Name(id=name, ctx=ast.Load())
                self.plan.assignments.append(Assignment("", name, value, None, change, name))
                continue
            why = (
                f"`{binding.statement}` is new and nothing in the module uses {name}: it is "
                "imported for its side effects, which happen at import"
            )
            self.baseline(name, "import", why)

    def _defaults(self) -> None:
        """Defaults read what this change changes: computed when the patch file is imported,
        before the migrations run and the running classes get their new members."""
        migrated = {a.name for a in self.plan.assignments if not a.owner and not a.helper}
        new_values = {
            a.name for a in self.plan.assignments if not a.owner and a.old is None and not a.helper
        }
        # Class members this change adds or sets: a default reading one (`Pool.empty`) is
        # computed when the patch file is imported, before the running class has it.
        members = {c.name.partition(":")[2] for m in self.plan.members for c in m.changes} | {
            f"{a.owner}.{a.name}" for a in self.plan.assignments if a.owner
        }
        for replacement in self.plan.replacements:
            stale = sorted(
                replacement.defaults & (migrated | new_values | self.replaced)
                | replacement.reads & members
            )
            if stale:
                _stale_default(replacement.change, stale)
        for added in self.plan.members:
            for change, reads in zip(added.changes, added.reads, strict=True):
                stale = sorted(reads & (migrated | new_values | self.replaced | members))
                if stale:
                    _stale_default(change, stale)

    def _used(self, name: str) -> bool:
        tree = self.new.tree
        return any(
            (isinstance(n, ast.Name) and n.id == name)
            or (isinstance(n, ast.Attribute) and dotted(n).partition(".")[0] == name)
            for n in ast.walk(tree)
        )


def _same_package(old: Binding, new: Binding) -> bool:
    """``import os.path`` becoming ``import os``: each binds the package ``os``, and the
    running process has loaded ``os.path`` already (the other way, ``import a`` becoming
    ``import a.b``, the new code may use ``a.b``, which the running process may lack)."""
    plain = not (old.attr or old.asname or new.attr or new.asname)
    return plain and new.module == new.name and old.module.startswith(f"{new.module}.")


def _class_names(node: _Def, body: _ClassBody) -> set[str]:
    """The names a method's defaults read that its class body binds before it
    (``def pop(self, key, default=__not_given)``): Python computes a default in the class
    body, where those names are the class's."""
    defaults = [*node.args.defaults, *(d for d in node.args.kw_defaults if d is not None)]
    read = {n.id for d in defaults for n in ast.walk(d) if isinstance(n, ast.Name)}
    bound = {name for name, item in body.assigns.items() if item.lineno < node.lineno}
    bound |= {
        name
        for name, items in body.members.items()
        if any(item.lineno < node.lineno for item in items)
    }
    return read & bound


def _stale_default(change: Change, stale: list[str], where: str = "") -> None:
    change.verdict = "baseline"
    change.why = (
        f"a default value reads {', '.join(stale)}, which this change also changes{where}; "
        "defaults are computed when the function is defined (the patch file's, before the "
        "patch goes in)"
    )


class _ClassBody:
    """A class body split into members (by name), plain values, and other statements."""

    def __init__(self, node: ast.ClassDef) -> None:
        self.members: dict[str, list[ast.stmt]] = {}
        self.assigns: dict[str, ast.stmt] = {}
        self.statements: list[ast.stmt] = []
        self.slots: ast.stmt | None = None
        body = node.body[1:] if node.body and _is_docstring(node.body[0]) else node.body
        for item in body:
            if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                self.members.setdefault(item.name, []).append(item)
            elif (name := assigned_name(item)) == "__slots__":
                self.slots = item
            elif name is not None and name not in self.assigns:
                self.assigns[name] = item
            elif isinstance(item, ast.Pass) or (
                isinstance(item, ast.AnnAssign) and item.value is None
            ):
                self.statements.append(item)  # a field declaration (dataclass) or nothing
            else:
                self.statements.append(item)
        for name in [n for n in self.assigns if n in self.members]:
            self.statements.append(self.assigns.pop(name))


def _annotated_name(node: ast.stmt) -> str | None:
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return node.target.id
    return None


def _annotation(node: ast.stmt) -> ast.expr | None:
    return node.annotation if isinstance(node, ast.AnnAssign) else None


def _position(node: ast.stmt) -> tuple[int, int]:
    return node.lineno, node.col_offset


def _record_problem(node: ast.expr) -> str:
    """Why declaring a member's value or a field's annotation or default again would not
    give it again ("" if it would): a call with effects (``enum.auto()`` has none), or a
    value no second one equals (``object()``, a sentinel)."""
    if isinstance(node, ast.Call) and dotted(node.func) in _ENUM_AUTO and not node.args:
        return ""
    if any(
        isinstance(n, ast.Call) and dotted(n.func) in ("object", "builtins.object")
        for n in ast.walk(node)
    ):
        return "a new object each time, which no second declaration equals"
    return "" if is_pure(node) else "which calls code when the class is made"


def _no_op(node: ast.stmt) -> bool:
    """``pass``, or a string under a member (its docstring, for documentation tools)."""
    return isinstance(node, ast.Pass) or (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


def _dump_slots(body: _ClassBody) -> str:
    return _dump(body.slots) if body.slots is not None else ""


def _diff_statements(old: list[ast.stmt], new: list[ast.stmt]) -> list[ast.stmt]:
    before = Counter(_dump(n) for n in old)
    out: list[ast.stmt] = []
    for node in new:
        if before[_dump(node)] > 0:
            before[_dump(node)] -= 1
        else:
            out.append(node)
    after = Counter(_dump(n) for n in new)
    for node in old:
        if after[_dump(node)] > 0:
            after[_dump(node)] -= 1
        else:
            out.append(node)
    return out


def _member_kind(node: ast.stmt) -> tuple[str, str]:
    if isinstance(node, ast.ClassDef):
        return "class", ""
    assert isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    return accessor(node)


def _definition_reads(node: ast.AST) -> set[str]:
    """Names a definition reads when it is made (not when its functions are called)."""
    reads: set[str] = set()
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        return def_time_names(node)
    if isinstance(node, ast.ClassDef):
        reads |= def_time_names(node)
        for item in node.body:
            reads |= _definition_reads(item)
        return reads
    return _names_in(node)


def _names_in(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _what(node: ast.stmt) -> str:
    if isinstance(node, ast.ClassDef):
        return "class"
    return "function"


def _overload(node: ast.stmt) -> bool:
    return isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and any(
        dotted(d) in ("overload", "typing.overload") for d in node.decorator_list
    )


def _annotations_of(node: _Def) -> list[str]:
    """A function's annotations, each dumped (an empty string where there is none)."""
    args = node.args
    every = [*args.posonlyargs, *args.args, args.vararg, *args.kwonlyargs, args.kwarg]
    found = [a.annotation for a in every if a is not None] + [node.returns]
    return [_dump(a) if a is not None else "" for a in found]


def _decorated_change(old: _Def, new: _Def) -> str:
    """Why a change of a function's decorators, or of what they may have read when they ran
    (its annotations), needs a baseline ("": it does not)."""
    if [_dump(d) for d in old.decorator_list] != [_dump(d) for d in new.decorator_list]:
        before = ", ".join("@" + ast.unparse(d) for d in old.decorator_list) or "none"
        after = ", ".join("@" + ast.unparse(d) for d in new.decorator_list) or "none"
        return (
            f"its decorators change ({before} -> {after}); a decorator runs when the "
            "function is defined, which a running process did long ago"
        )
    readers = [
        d
        for d in new.decorator_list
        if dotted(d.func if isinstance(d, ast.Call) else d).rpartition(".")[2]
        not in _BLIND_TO_ANNOTATIONS
    ]
    if readers and _annotations_of(old) != _annotations_of(new):
        shown = ", ".join("@" + ast.unparse(d) for d in readers)
        return (
            f"its annotations change, and {shown} ran when it was defined, which may have "
            "read them then (singledispatch's register takes the type it dispatches on "
            "from them): a running process did that long ago, with the old ones"
        )
    return ""
