"""What of a project's own code runs when its modules are imported.

A function a module body calls (``TABLE = _table()``), a class it makes an instance of
(``DEFAULT = Config()``), a decorator it applies, and what each of them calls in turn,
ran in the running process long ago: replacing it hot leaves what it made or set then
as the old code made it, where a restart would run the new code. So does a hook that
runs for each class made (``__init_subclass__``, ``__set_name__``, a metaclass's
``__new__`` and ``__init__``), and what it calls.

Calls are followed through names as well as written ones: a name given to a function or
an object (``make = rates.build``, ``builder = Builder()``, a class body's ``pick =
price``), another module's names (its imports, its own such names), a method of an
instance of a class of the project, and the functions the project's code hands to code
it does not own (``sorted(items, key=_key)``). What cannot be followed is counted, not
guessed: a method called on an object of no known class may be any function of that name
(``by_name``), and a call of something make cannot name at all (a parameter, an item of
a table, what a call returned) may be any function the code running at import handed
on or stored (``escapes``, run if there is a ``blind`` call). So may code not the project's
handed something make cannot name (``Thread(target=pick())``, ``log.addFilter(FILTERS[k])``):
it may call it, or any method of it, so every function handed on and every method of a
class the import made an instance of counts then (``handed``, ``exposed``). The values of
a module that code run at import reads (``log.setLevel(LEVEL)``) are named too (``own``):
what it made or handed on with them keeps what it read. Everything here reads the
``ast``; nothing is imported or run.
"""

from __future__ import annotations

import ast
import builtins
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from hotpatch.make._implicit import BUILTIN_CALLS, implicit
from hotpatch.make._syntax import (
    Binding,
    accessor,
    assigned_name,
    bindings,
    dotted,
    main_guard,
    stars,
    typing_names,
    typing_only,
)

__all__ = ["ImportRuns", "Source", "import_runs"]

_Def = ast.FunctionDef | ast.AsyncFunctionDef
_SHOWN = 60
_DEPTH = 20  # names followed through names: past this, unknown
_CLASS_HOOKS = frozenset({"__init_subclass__", "__set_name__"})
_META_HOOKS = frozenset({"__new__", "__init__", "__prepare__"})
_METACLASSES = frozenset({"type", "ABCMeta", "abc.ABCMeta", "EnumMeta", "enum.EnumMeta"})
_ENUMS = frozenset(
    f"{m}{e}" for m in ("", "enum.") for e in ("Enum", "IntEnum", "StrEnum", "Flag", "IntFlag")
)
_ENUM_HOOKS = frozenset({"__new__", "__init__", "_generate_next_value_"})
# what making an instance runs (and, were it dropped at import, ``__del__``)
_MADE = ("__new__", "__init__", "__post_init__", "__del__")
# Code we do not own that, handed an object, calls none of its methods.
_INERT = frozenset(
    {
        *("append", "insert", "id", "type", "isinstance", "issubclass", "callable", "cast"),
        *("super", "vars", "ref", "getattr_static", "len"),
    }
)
# Bases not the project's whose __new__, __init__ and __call__ call no method of the instance.
_PLAIN_BASES = frozenset(
    {
        *(n for n in dir(builtins) if isinstance(getattr(builtins, n), type)),
        *("Generic", "Protocol", "NamedTuple", "TypedDict", "ABC", "ABCMeta"),
        *("Enum", "IntEnum", "StrEnum", "Flag", "IntFlag", "EnumMeta", "EnumType"),
    }
)
# Decorators not the project's that hand the arguments on untouched.
_PLAIN_DECORATORS = frozenset(
    {
        *("staticmethod", "classmethod", "abstractmethod", "overload", "final", "override"),
        *("property", "cached_property", "contextmanager", "asynccontextmanager", "wraps"),
    }
)
# Class decorators not the project's whose added methods call none of the class's own
# but those counted anyway (a dataclass's __init__ calls __post_init__).
_PLAIN_CLASS_DECORATORS = frozenset(
    {"dataclass", "final", "runtime_checkable", "unique", "add_metaclass"}
)
_MATCHED = (
    *("__eq__", "__ne__", "__len__", "__getitem__", "__iter__", "__contains__", "keys"),
    *("get", "__getattr__", "__getattribute__"),
)
# What every class's name is read as: a string (type.__name__ and its kin)
_TYPE_NAMES = frozenset({"__name__", "__qualname__", "__module__"})
# Modules whose abstract base classes' register is a class decorator adding nothing
_ABC_MODULES = frozenset({"abc", "numbers", "typing", "typing_extensions"})
# Where a subscript of a name gives a typing alias (or, for os.environ, a string).
_ALIASING_MODULES = frozenset(
    {"typing", "typing_extensions", "collections", "os", "builtins", "re"}  # re.Pattern[str]
)
_BUILTIN_TYPES = frozenset({"list", "dict", "tuple", "set", "frozenset", "type"})
_ACCESSORS = {"getattr": ast.Load, "hasattr": ast.Load, "setattr": ast.Store, "delattr": ast.Del}
_RECEIVERS = frozenset({"cls", "self", "mcs", "metacls", "mcls"})
_BUILTINS = frozenset(dir(builtins))
# Code we do not own that keeps a function it is given, or reads it, without calling it.
_KEEPS = frozenset(
    {
        *("property", "staticmethod", "classmethod", "partial", "partialmethod", "wraps"),
        *("update_wrapper", "register", "lru_cache", "cache", "cached_property"),
        *("singledispatch", "singledispatchmethod", "total_ordering", "setattr", "getattr"),
        *("hasattr", "isinstance", "issubclass", "len", "id", "dict", "list", "tuple", "set"),
        *("frozenset", "cast", "contextmanager", "asynccontextmanager", "abstractmethod"),
        *("ref", "WeakMethod", "append", "extend", "add", "update", "insert", "setdefault"),
        *("signal", "overload", "final", "type", "super", "repr", "str", "format", "vars"),
        *("callable", "getattr_static", "signature", "getdoc", "getmodule", "dataclass"),
        *("deprecated", "override", "runtime_checkable", "NewType", "TypeVar"),
    }
)
# ... and of those, what hands back a wrapper of the function (which calls it when called).
_WRAPS = frozenset(
    {
        *("property", "staticmethod", "classmethod", "partial", "partialmethod", "wraps"),
        *("update_wrapper", "lru_cache", "cache", "cached_property", "singledispatch"),
        *("singledispatchmethod", "contextmanager", "asynccontextmanager", "ref"),
        *("WeakMethod", "total_ordering"),
    }
)
_LITERALS = (
    ast.Constant,
    ast.JoinedStr,
    ast.List,
    ast.Tuple,
    ast.Dict,
    ast.Set,
    ast.ListComp,
    ast.SetComp,
    ast.DictComp,
    ast.GeneratorExp,
)


@dataclass(frozen=True, slots=True)
class Source:
    """One module of the project as the old version has it."""

    name: str
    tree: ast.Module
    lines: list[str]
    package: bool


@dataclass(slots=True)
class ImportRuns:
    """What runs when the project's modules are imported. Each place is (the module whose
    import starts it, where: words for a reason)."""

    runs: dict[str, tuple[str, str]] = field(default_factory=dict)  # "pkg.mod.Cls.m"
    reads: dict[str, tuple[str, str]] = field(default_factory=dict)  # "pkg.mod.RATE"
    # a module-level value of the module read by code run at import, other than where the
    # diff judges it (a module-level value computed from it, a definition made with it)
    own: dict[str, tuple[str, str]] = field(default_factory=dict)  # "pkg.mod.RATE"
    escapes: dict[str, tuple[str, str]] = field(default_factory=dict)  # "pkg.mod.f"
    blind: tuple[str, str] | None = None  # the first call of something not followed
    # the first call of code not the project's handed something make cannot name (it may call
    # it, or any method of it), and the methods of the classes code run at import makes an
    # instance of: "pkg.mod.Cls.m" -> (the class, where one is made)
    handed: tuple[str, str] | None = None
    exposed: dict[str, tuple[str, str]] = field(default_factory=dict)


# What an expression may be: ("fn" | "cls" | "inst" | "mod" | "ref", full dotted name),
# ("attr", name) for a member of an object of no known class, ("ext", "") for what is not
# the project's, ("unknown", "").
_Value = tuple[str, str]
_Args = dict[str, tuple[_Value, ...]]  # what each parameter of a function holds
_Key = tuple[tuple[str, tuple[_Value, ...]], ...]
_VARIANTS = 4  # walks of one function for what its parameters hold: past this, anything
_EXT: _Value = ("ext", "")
_UNKNOWN: _Value = ("unknown", "")
_UNNAMED = frozenset({"unknown", "attr", "ref"})  # what make cannot name
# Builtins that call a function they are handed (the others: only special methods, which
# _builtin follows)
_CALLERS = frozenset({"map", "filter", "sorted", "min", "max", "iter"})
# Names Python gives each module: strings and lists, never an object of the project
_MODULE_NAMES = frozenset({"__file__", "__path__", "__cached__", "__builtins__"})


@dataclass(slots=True)
class _Scope:
    """The names one body binds: simple ones (``n = value``, ``a, b = x, y``) with their
    values, the rest (parameters, loop targets, other unpacking) opaque."""

    names: dict[str, list[ast.expr]] = field(default_factory=dict)
    opaque: set[str] = field(default_factory=set)
    kept: set[int] = field(default_factory=set)  # ids of the values of simple names
    imports: list[ast.stmt] = field(default_factory=list)  # its own import statements
    defs: dict[str, _Def | ast.ClassDef] = field(default_factory=dict)  # defined inside
    binds: dict[str, Binding] = field(default_factory=dict)
    loops: dict[str, list[ast.expr]] = field(default_factory=dict)  # bound by loops only
    augmented: set[str] = field(default_factory=set)  # simple names also augmented
    plain_params: dict[str, list[ast.expr]] = field(default_factory=dict)  # and their values
    params: dict[str, tuple[_Value, ...]] = field(default_factory=dict)  # what they hold

    @classmethod
    def of(cls, body: list[ast.stmt], args: ast.arguments | None = None) -> _Scope:
        scope = cls()
        if args is not None:
            every = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
            scope.opaque |= {a.arg for a in every if a is not None}
        todo: list[ast.AST] = list(body)
        bound: Counter[str] = Counter()  # how often each opaque name is bound
        seen: list[ast.AST] = []
        augmented: dict[str, list[ast.expr]] = {}  # n += value
        while todo:
            node = todo.pop()
            seen.append(node)
            if isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
                augmented.setdefault(node.target.id, []).append(node.value)
                todo.append(node.value)
                continue
            if isinstance(node, _Def | ast.ClassDef):
                scope.defs.setdefault(node.name, node)
                continue  # its body runs when it is called (a class's: when it is made)
            if isinstance(node, ast.Lambda):
                continue
            if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                pairs = _assigned(targets, node.value)
                if pairs:  # ``A = a``, ``A, B = a, b``: each name its own value
                    scope.assign(pairs)
                    todo.append(node.value)
                    continue
            if isinstance(node, ast.Import | ast.ImportFrom):
                scope.imports.append(node)
            for sub in ast.iter_child_nodes(node):
                names = _bound_names(sub)
                bound.update(names)
                scope.opaque |= names
                todo.append(sub)
        scope.builtin_loops(seen, bound)
        scope.augment(augmented)
        scope.fill(seen)
        if args is not None:  # parameters bound only by the call and simple assignments
            every = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
            scope.plain_params = {
                a.arg: scope.names.get(a.arg, [])
                for a in every
                if a is not None and not bound[a.arg] and a.arg not in augmented
            }
        for name in scope.opaque:
            scope.names.pop(name, None)
            scope.defs.pop(name, None)
        for name in scope.names:
            scope.defs.pop(name, None)
        return scope

    def assign(self, pairs: list[tuple[str, ast.expr]]) -> None:
        for name, value in pairs:
            self.names.setdefault(name, []).append(value)
            self.kept.add(id(value))

    def builtin_loops(self, nodes: list[ast.AST], bound: Counter[str]) -> None:
        """The names only ever bound by loops (``for name in NAMES``), with what each
        loops over: a name that holds only what a range or a tuple of constants gives is
        a builtin value (see ``_Walk._looped``)."""
        loops: dict[str, list[ast.expr]] = {}
        for node in nodes:
            if isinstance(node, ast.For | ast.comprehension) and isinstance(node.target, ast.Name):
                loops.setdefault(node.target.id, []).append(node.iter)
        self.loops = {n: iters for n, iters in loops.items() if bound[n] == len(iters)}

    def augment(self, augmented: dict[str, list[ast.expr]]) -> None:
        """A name set simply and then augmented (``count = 1``, ``count += 1``) holds a
        builtin value if each of its values is one; else what an operator returned."""
        for name, values in augmented.items():
            if name in self.names and name not in self.opaque:
                self.names[name] += values
                self.augmented.add(name)
            else:
                self.opaque.add(name)

    def fill(self, nodes: list[ast.AST]) -> None:
        """A name bound to a container and filled after (``ITEMS = []``,
        ``ITEMS.append(Box())``) holds what was put in too: a literal of it is one more
        of its values, so what it holds is found where it is handed on."""
        filled: dict[str, list[ast.expr]] = {}
        for node in nodes:
            if (added := _filled(node)) is not None:
                filled.setdefault(added[0], []).append(added[1])
        for name, values in filled.items():
            if name in self.names and name not in self.opaque:
                self.names[name].append(ast.copy_location(ast.List(elts=values), values[0]))

    def bind(self, source: Source) -> _Scope:
        """Its own imports, resolved (a function's ``import re``)."""
        if self.imports:
            tree = ast.Module(body=self.imports, type_ignores=[])
            self.binds = bindings(tree, source.name, source.package)
            for name in self.binds:
                self.names.pop(name, None)
                self.opaque.discard(name)
        return self


# Methods that put their last argument into the container they are called on
_FILLS = frozenset({"append", "add", "insert", "appendleft", "setdefault"})
# and those that put in what their argument holds
_FILLS_FROM = frozenset({"extend", "update", "extendleft"})


def _filled(node: ast.AST) -> tuple[str, ast.expr] | None:
    """``(name, value)`` for a statement putting ``value`` into the container ``name``
    (``ITEMS.append(x)``, ``ITEMS.extend(xs)``: each of ``xs``, ``ITEMS[k] = x``)."""
    if isinstance(node, ast.Expr) and isinstance(call := node.value, ast.Call):
        func = call.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and call.args:
            if func.attr in _FILLS:
                return func.value.id, call.args[-1]
            if func.attr in _FILLS_FROM:
                return func.value.id, ast.Starred(value=call.args[0], ctx=ast.Load())
    if isinstance(node, ast.Assign):
        for target in node.targets:
            if isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name):
                return target.value.id, node.value
    return None


class _Module:
    """One module: its functions, classes, names and imports."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.name = source.name
        self.funcs: dict[str, _Def] = {}
        # every def of a name defined more than once (a property's getter and setter,
        # ``if``/``else`` branches): a run of the name may run any of them
        self.alike: dict[str, list[_Def]] = {}
        self.classes: dict[str, ast.ClassDef] = {}
        self.class_scopes: dict[str, _Scope] = {}
        flat = _flat(source.tree.body)
        for node in flat:
            if isinstance(node, _Def):
                self._def(node.name, node)
            elif isinstance(node, ast.ClassDef):
                self.classes[node.name] = node
                self.class_scopes[node.name] = _Scope.of(node.body)
                for item in _flat(node.body):
                    if isinstance(item, _Def):
                        self._def(f"{node.name}.{item.name}", item)
        self.binds: dict[str, Binding] = bindings(
            ast.Module(body=flat, type_ignores=[]), source.name, source.package
        )
        self.typing = typing_names(source.tree)  # what names typing (``t``)
        self.stars = [
            s.module for s in stars(source.tree, source.name, source.package, source.lines)
        ]
        self.scope = _Scope.of(source.tree.body)
        self.lazy = any(  # from __future__ import annotations: not evaluated
            isinstance(n, ast.ImportFrom)
            and n.module == "__future__"
            and any(a.name == "annotations" for a in n.names)
            for n in source.tree.body
        )
        for name in (*self.binds, *(n for n in self.funcs if "." not in n), *self.classes):
            self.scope.names.pop(name, None)
            self.scope.opaque.discard(name)

    def _def(self, qualname: str, node: _Def) -> None:
        if qualname in self.funcs:
            self.alike.setdefault(qualname, [self.funcs[qualname]]).append(node)
        self.funcs[qualname] = node


def _flat(body: list[ast.stmt]) -> list[ast.stmt]:
    """The module-level statements, those in ``if``/``try``/``with`` blocks too."""
    out: list[ast.stmt] = []
    for node in body:
        if isinstance(node, ast.If | ast.Try | ast.With | ast.For | ast.While):
            parts = [node.body, node.orelse] if not isinstance(node, ast.With) else [node.body]
            if isinstance(node, ast.Try):
                parts += [h.body for h in node.handlers] + [node.finalbody]
            for part in parts:
                out += _flat(part)
        else:
            out.append(node)
    return out


@dataclass(slots=True)
class _Place:
    """Code that runs at import: the module it is in, the class whose method it is (if
    any), its own scope (a function's or a class body's), and where that started."""

    module: _Module
    owner: str
    scope: _Scope | None
    start: str  # the module whose import starts it
    where: str
    # its reads of the module's own values are the diff's to judge: a module-level value
    # computed from them (set again by the migration, or a baseline), a definition made
    # with them (a default, a decorator, a class body: a baseline)
    judged: bool = False


def import_runs(sources: list[Source]) -> ImportRuns:
    """What runs when the modules of ``sources`` are imported (see ``ImportRuns``)."""
    return _Walk(sources).result


class _Walk:
    def __init__(self, sources: list[Source]) -> None:
        self.modules = {s.name: _Module(s) for s in sources}
        self.result = ImportRuns()
        # module, qualname, start, where, what its parameters hold (None: not known)
        self.todo: list[tuple[_Module, str, str, str, _Args | None]] = []
        self.variants: dict[str, set[_Key | None]] = {}  # the walks of each function
        self.nested: dict[str, tuple[_Def | ast.ClassDef, _Module]] = {}  # id -> a def inside
        self.walked: set[tuple[int, str]] = set()
        self.stored = _stored(sources)
        self.members: dict[str, list[str]] = {}  # "name" -> each class with such a member
        self.subclasses: dict[str, list[str]] | None = None  # "pkg.m.Cls" -> its subclasses
        self.attached: dict[str, list[str]] = {}  # "pkg.m.show" -> what @show.register gave
        self.methods: dict[str, list[tuple[_Module, str]]] = {}  # "m" -> each Cls.m
        self.made: dict[str, str] = {}  # "pkg.m.Cls" -> where code run at import makes one
        for module in self.modules.values():
            for qualname in module.funcs:
                if "." in qualname:
                    self.methods.setdefault(qualname.rpartition(".")[2], []).append(
                        (module, qualname)
                    )
        self.literal = _literal(sources, self.stored, self.methods)
        for module in self.modules.values():
            self._module(module)
        while self.todo:
            module, qualname, start, where, args = self.todo.pop()
            owner = qualname.partition(".")[0] if "." in qualname else ""
            for func in module.alike.get(qualname, [module.funcs[qualname]]):
                scope = _Scope.of(func.body, func.args).bind(module.source)
                scope.params = {n: v for n, v in (args or {}).items() if n in scope.plain_params}
                place = _Place(module, owner, scope, start, where)
                for statement in func.body:
                    self._code(statement, place)
            for impl in self.attached.get(f"{module.name}.{qualname}", []):
                found = self._lookup(impl, 0)
                if found is not None:
                    said = f"{where}, through {qualname}, which dispatches to {found[1]}"
                    self._run(found[0], found[1], start, said)
        self._expose()

    def _expose(self) -> None:
        """When code not the project's was handed something make cannot name, any object
        made at import may be what it got, and any method of it may run."""
        if self.result.handed is None:
            return
        for cls, made in self.made.items():
            for kind, method in self._methods_of(cls, 0):
                if kind == "fn":
                    self.result.exposed.setdefault(method, (cls, made))

    # -- where code starts running ------------------------------------------------------

    def _module(self, module: _Module) -> None:
        lines = module.source.lines
        defined = {n for n in module.funcs if "." not in n} | set(module.classes)
        assigned: set[str] = set()
        for node in module.source.tree.body:
            # the first plain assignment of a name and a definition: what they read of the
            # module's values is the diff's to judge (see _Place.judged)
            target = assigned_name(node)
            judged = isinstance(node, _Def) or (
                target is not None and target not in assigned and target not in defined
            )
            assigned.add(target or "")
            where = f"when the module is imported (line {node.lineno}: `{_line(lines, node)}`)"
            if isinstance(node, ast.If) and typing_only(node.test, module.typing):
                continue
            if isinstance(node, ast.If) and main_guard(node.test):
                continue
            if isinstance(node, ast.ClassDef):
                self._class(module, node)
                continue
            self._code(node, _Place(module, "", None, module.name, where, judged=judged))

    def _class(self, module: _Module, node: ast.ClassDef) -> None:
        """What making the class runs, and the hooks it runs for each class made."""
        name = module.name
        made = f"when the module is imported, making {node.name} (line {node.lineno})"
        outside = _Place(module, "", None, name, made, judged=True)
        for part in (*node.decorator_list, *node.bases, *(k.value for k in node.keywords)):
            self._code(part, outside)
        for base in node.bases:  # a base not a class gives the bases it stands for
            self._special(base, ("__mro_entries__",), "a class statement", base, outside)
        self._decorated(node, node.name, outside)
        meta = self._is_meta(module, node, 0)
        enum = self._is_enum(module, node, 0)
        body = module.class_scopes[node.name]
        for item in node.body:
            if isinstance(item, _Def):
                hooks = _CLASS_HOOKS | (_META_HOOKS if meta else frozenset())
                hooks |= _ENUM_HOOKS if enum else frozenset()
                if item.name in hooks:
                    made_by = (
                        f"each class made with the metaclass {node.name}"
                        if meta and item.name in _META_HOOKS
                        else f"each member of the enum {node.name}"
                        if enum and item.name in _ENUM_HOOKS
                        else f"each subclass of {node.name} made"
                        if item.name == "__init_subclass__"
                        else f"each class made holding a {node.name}"
                    )
                    where = (
                        f"from {node.name}.{item.name} (line {item.lineno}), which runs for "
                        f"{made_by}, those made at import too"
                    )
                    self._run(module, f"{node.name}.{item.name}", name, where)
                self._code(item, _Place(module, node.name, body, name, made, judged=True))
            else:
                where = (
                    f"when the module is imported (line {item.lineno}: "
                    f"`{_line(module.source.lines, item)}`)"
                )
                self._code(item, _Place(module, node.name, body, name, where, judged=True))

    def _is_meta(self, module: _Module, node: ast.ClassDef, depth: int) -> bool:
        """Is the class a metaclass: ``type``'s subclass, or a metaclass's of the project?"""
        return self._derives(module, node, _METACLASSES, depth)

    def _member_of_enum(self, module: _Module, cls: str, attr: str, depth: int) -> bool:
        """Is ``attr`` of the class ``cls`` a member of an enum (``RED = 1``, ``auto()``):
        a public name its body sets to values not the project's?"""
        if attr.startswith("_") or not self._is_enum(module, module.classes[cls], depth):
            return False
        body = module.class_scopes[cls]
        place = _Place(module, cls, body, module.name, "")
        return all(
            not isinstance(v, ast.Lambda) and kind == "ext"
            for v in body.names[attr]
            for kind, _ in self._resolve(v, place, depth + 1)
        )

    def _is_enum(self, module: _Module, node: ast.ClassDef, depth: int) -> bool:
        """Is the class an enum (its members made, by its ``__new__`` and ``__init__``,
        when the class is)?"""
        return self._derives(module, node, _ENUMS, depth)

    def _derives(
        self, module: _Module, node: ast.ClassDef, roots: frozenset[str], depth: int
    ) -> bool:
        """Does the class derive from one of ``roots`` (directly or through the project's
        classes)?"""
        if depth > _DEPTH:
            return False
        if any(dotted(base) in roots for base in node.bases):
            return True
        for kind, full in self._bases(module, node, depth):
            found = self._lookup(full, depth + 1) if kind == "cls" else None
            if (
                found is not None
                and found[1] in found[0].classes
                and self._derives(found[0], found[0].classes[found[1]], roots, depth + 1)
            ):
                return True
        return False

    def _run(
        self, module: _Module, qualname: str, start: str, where: str, args: _Args | None = None
    ) -> None:
        """Walk the function ``qualname`` of ``module`` (once for each thing its parameters
        may hold, ``args``, up to a few; once for anything)."""
        full = f"{module.name}.{qualname}"
        if qualname not in module.funcs:
            return
        self.result.runs.setdefault(full, (start, where))
        walked = self.variants.setdefault(full, set())
        if None in walked:
            return  # walked with its parameters holding anything: that covers every call
        key = None if args is None or len(walked) >= _VARIANTS else _key(args)
        if key not in walked:
            walked.add(key)
            self.todo.append((module, qualname, start, where, args if key is not None else None))

    # -- one piece of running code -----------------------------------------------------

    def _code(self, code: ast.AST, place: _Place) -> None:
        inner: set[int] = set()  # a call's function, an attribute's object: not values
        called: set[int] = set()  # a call's function
        for node, decorator in _running(code, annotations=not place.module.lazy):
            for operand, names, said in implicit(node):
                self._special(operand, names, said, node, place)
            if isinstance(node, ast.Call):
                inner.add(id(node.func))
                called.add(id(node.func))
                self._call(node, node.func, node.args + [k.value for k in node.keywords], place)
                self._builtin(node, place)
            if isinstance(node, ast.Attribute) and id(node) not in called:
                self._attribute(node, place)
            elif decorator and isinstance(node, ast.expr):
                inner.add(id(node))
                self._call(node, node, [], place)
            if isinstance(node, _Def | ast.ClassDef):
                self._decorated(node, node.name, place)
            if isinstance(node, ast.ClassDef):  # a class statement this code runs
                for base in node.bases:  # a base not a class gives the bases it stands for
                    self._special(base, ("__mro_entries__",), "a class statement", base, place)
            if isinstance(node, ast.ImportFrom):
                self._imported(node, place)
            if isinstance(node, ast.Match):
                self._matched(node, place)
            self._own(node, place)
            if isinstance(node, ast.Attribute):
                inner.add(id(node.value))
            if (
                isinstance(node, ast.Name | ast.Attribute)
                and isinstance(node.ctx, ast.Load)
                and id(node) not in inner
            ):
                kept = place.scope or place.module.scope
                self._value(node, place, alias=id(node) in kept.kept)

    def _decorated(self, node: _Def | ast.ClassDef, name: str, place: _Place) -> None:
        """A function handed to a decorator of the project, or one make cannot follow,
        may be called by it."""
        for decorator in node.decorator_list:
            func = decorator.func if isinstance(decorator, ast.Call) else decorator
            qualname = f"{place.owner}.{name}" if place.owner else name
            if isinstance(func, ast.Attribute) and qualname in place.module.funcs:
                # @show.register: what calls show may call it (singledispatch)
                for kind, full in self._resolve(func.value, place):
                    if kind == "fn":
                        impl = f"{place.module.name}.{qualname}"
                        self.attached.setdefault(full, []).append(impl)
            if any(kind != "ext" for kind, _ in self._resolve(func, place)):
                qualname = f"{place.owner}.{name}" if place.owner else name
                if qualname in place.module.funcs:
                    self._escape(f"{place.module.name}.{qualname}", node, place)
                break

    def _call(self, node: ast.AST, func: ast.expr, args: list[ast.expr], place: _Place) -> None:
        for kind, full in self._resolve(func, place):
            if kind == "fn":
                self._run_full(full, place, node if isinstance(node, ast.Call) else None)
                if isinstance(node, ast.Call) and self._wrapped_outside(full, place):
                    said = f"a decorator of {full.rpartition('.')[2]} not the project's"
                    self._given(node, place, f"{said}, handed its arguments,")
                    if isinstance(node.func, ast.Attribute):  # obj.cost(): obj too
                        said = f"{said}, handed its arguments,"
                        self._objects(node.func.value, node, place, said, direct=True)
            elif kind in ("nested", "nestedcls", "nestedinst"):
                self._run_nested(kind, full, place)
            elif kind in ("cls", "inst"):
                self._made(kind, full, node, place)
            elif kind == "ext":
                if _name(func) not in _KEEPS:
                    self._handed(args, place, node, func)
                if isinstance(node, ast.Call):
                    self._given(node, place)
            else:
                self._unfollowed(kind, full, node, place)

    def _handed(self, args: list[ast.expr], place: _Place, node: ast.AST, func: ast.expr) -> None:
        """Code we do not own, handed a function of ours (``sorted(items, key=_key)``):
        it may call it. Handed something make cannot name (what a call returned, an item
        of a table), it may call that, or any method of it: see ``ImportRuns.handed``."""
        plain = (
            _name(func) in _INERT
            or (isinstance(func, ast.Name) and func.id in BUILTIN_CALLS.keys() - _CALLERS)
            or (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Constant))
        )  # a string's method (",".join(parts)) calls only special methods of its arguments
        for arg in args:
            for kind, full in self._resolve(arg, place):
                if kind == "fn":
                    self._run_full(full, place)
                elif kind == "cls":
                    self._made(kind, full, arg, place)
                elif kind in _UNNAMED and not plain and self.result.handed is None:
                    self.result.handed = (place.start, self._at(node, place))

    def _wrapped_outside(self, full: str, place: _Place) -> bool:
        """Is the function ``full`` under a decorator not the project's that gets its
        arguments first (``lru_cache`` hashes them, ``singledispatch`` reads their
        class)?"""
        found = self._lookup(full, 0)
        if found is None or found[1] not in found[0].funcs:
            return False
        module, qualname = found
        top = _Place(module, "", None, module.name, "")
        for decorator in module.funcs[qualname].decorator_list:
            func = decorator.func if isinstance(decorator, ast.Call) else decorator
            if _name(func) in _PLAIN_DECORATORS:
                continue
            if all(kind == "ext" for kind, _ in self._resolve(func, top)):
                return True
        return False

    def _given(self, node: ast.Call, place: _Place, said: str = "") -> None:
        """Code we do not own handed an object of the project (``copy.copy(box)``,
        ``",".join(parts)``, ``range(Pos())``, ``pickle.dumps(box)``) may call any method
        of it; ``getattr(obj, "name")`` and its kin access that attribute."""
        name = _name(node.func)
        if name in _INERT:
            return
        named = node.args[1] if len(node.args) > 1 else None
        if (
            isinstance(node.func, ast.Name)
            and name in _ACCESSORS
            and isinstance(named, ast.Constant)
            and isinstance(named.value, str)
        ):
            attr = ast.Attribute(value=node.args[0], attr=named.value, ctx=_ACCESSORS[name]())
            self._attribute(ast.copy_location(attr, node), place)
            return
        # a builtin's own special methods on its arguments are _builtin's
        builtin = isinstance(node.func, ast.Name) and name in BUILTIN_CALLS
        said = said or f"code not the project's, `{name}()`, handed an object of it,"
        for arg in node.args:
            self._objects(arg, node, place, said, direct=not builtin)
        for keyword in node.keywords:
            self._objects(keyword.value, node, place, said, direct=True)

    def _objects(
        self, arg: ast.expr, node: ast.Call, place: _Place, said: str, *, direct: bool
    ) -> None:
        """The objects of the project ``arg`` is (or a literal ``[a, b]`` holds): any of
        their methods runs."""
        if isinstance(arg, ast.Starred):
            arg = arg.value
        while isinstance(arg, ast.Subscript) and isinstance(arg.slice, ast.Slice):
            arg = arg.value  # a slice (``ITEMS[:2]``) holds what the sliced value held
        if isinstance(arg, ast.List | ast.Tuple | ast.Set | ast.Dict):
            parts = arg.elts if not isinstance(arg, ast.Dict) else [*arg.keys, *arg.values]
            for part in parts:
                if part is not None:
                    self._objects(part, node, place, said, direct=True)
            return
        if isinstance(arg, ast.Name | ast.Attribute):  # ITEMS = [Box()]; sorted(ITEMS)
            for value, where in self._expressions(arg, place, 0) or []:
                if isinstance(value, ast.List | ast.Tuple | ast.Set | ast.Dict):
                    self._objects(value, node, where, said, direct=True)
        if not direct or isinstance(arg, (*_LITERALS, ast.Lambda)):
            return
        for kind, full in self._resolve(arg, place):
            if kind == "inst":
                self._ran_special(self._methods_of(full, 0), said, node, place)
            elif kind == "nestedinst":
                nested, module = self.nested[full]
                methods = [self._nested(i, module) for i in nested.body if isinstance(i, _Def)]
                self._ran_special(methods, said, node, place)

    def _methods_of(self, full: str, depth: int) -> list[_Value]:
        """Every method of the class ``full``: its own and its bases' (of the project)."""
        found = self._lookup(full, depth)
        if depth > _DEPTH or found is None or found[1] not in found[0].classes:
            return []
        module, cls = found
        out: list[_Value] = [
            ("fn", f"{module.name}.{q}") for q in module.funcs if q.startswith(f"{cls}.")
        ]
        for kind, base in self._bases(module, module.classes[cls], depth):
            if kind == "cls":
                out += self._methods_of(base, depth + 1)
        return out

    def _made(self, kind: str, full: str, node: ast.AST, place: _Place) -> None:
        """What making an instance of the class ``full`` runs (its ``__new__``,
        ``__init__``, ``__post_init__``, its metaclass's ``__call__``: its own or its
        bases'), or calling an instance (``__call__``)."""
        said = f"making a {full.rpartition('.')[2]}" if kind == "cls" else "calling an instance"
        if kind == "cls" and full not in self.made:
            self.made[full] = self._at(node, place)
        own = False
        for method in _MADE if kind == "cls" else ("__call__",):
            found = self._class_special(full, method, 0)
            own = own or (method != "__del__" and bool(found))
            self._ran_special(found, said, node, place)
        if kind == "cls":
            self._ran_special(self._special_of("cls", full, "__call__", 0), said, node, place)
        if not own and self._outside_base(full, 0):
            # a base's __init__ or __call__ not the project's (contextlib.ContextDecorator,
            # logging.Handler) is handed the instance: any method of it may run
            said = f"{said} (of a class whose base is not the project's)"
            self._ran_special(self._methods_of(full, 0), said, node, place)

    def _outside_base(self, full: str, depth: int) -> bool:
        """Does the class ``full`` derive from a class not the project's, other than a
        builtin or a typing construct whose making and calling run none of its methods?"""
        found = self._lookup(full, depth)
        if depth > _DEPTH or found is None or found[1] not in found[0].classes:
            return False
        module, cls = found
        top = _Place(module, "", None, module.name, "")
        for base in module.classes[cls].bases:
            named = base.value if isinstance(base, ast.Subscript) else base
            for kind, base_full in self._resolve(named, top, depth + 1):
                if kind == "cls" and self._outside_base(base_full, depth + 1):
                    return True
                if kind == "ext" and dotted(named).rpartition(".")[2] not in _PLAIN_BASES:
                    return True
        return False

    def _unfollowed(self, kind: str, full: str, node: ast.AST, place: _Place) -> None:
        """A call make cannot follow: a method of an object of no known class (any method
        of that name), or something it cannot name (any function handed on)."""
        if kind == "attr":
            where = (
                f"{self._at(node, place)}, a method named {full} of an object make does not "
                "follow (any method of that name counts)"
            )
            for module, qualname in self.methods.get(full, []):
                self._run(module, qualname, place.start, where)
        blind = kind != "attr" or full in self.stored
        if blind and self.result.blind is None:
            self.result.blind = (place.start, self._at(node, place))

    def _run_nested(self, kind: str, key: str, place: _Place) -> None:
        """Run a function defined inside another (or what making, or calling, an instance
        of a class defined there runs)."""
        node, module = self.nested[key]
        if isinstance(node, ast.ClassDef):
            names = _MADE if kind == "nestedcls" else ("__call__",)
            for item in node.body:
                if isinstance(item, _Def) and item.name in names:
                    self._run_nested("nested", self._nested(item, module)[1], place)
            return
        if (id(node), place.start) in self.walked or isinstance(node, ast.ClassDef):
            return
        self.walked.add((id(node), place.start))
        scope = _Scope.of(node.body, node.args).bind(module.source)
        inner = _Place(module, "", scope, place.start, place.where)
        for statement in node.body:
            self._code(statement, inner)

    # -- what Python calls where no call is written ---------------------------------------

    def _special(
        self, operand: ast.expr, names: tuple[str, ...], said: str, node: ast.AST, place: _Place
    ) -> None:
        """``names``, special methods of ``operand``, called implicitly by ``node``: those
        of its class if make knows it, else any method of each name (a builtin's: none)."""
        anchor = node if isinstance(node, ast.expr) and node is not operand else operand
        anchor = operand if isinstance(anchor, ast.FormattedValue) else anchor
        # what the method is called with: Table()[key] is __getitem__(table, key),
        # a + b is __add__(a, b) (or __radd__(b, a))
        given: list[ast.expr] | None = None
        if isinstance(node, ast.Subscript) and operand is node.value:
            given = [operand, node.slice]
        elif isinstance(node, ast.BinOp) and operand in (node.left, node.right):
            given = [operand, node.right if operand is node.left else node.left]
        for kind, full in self._resolve(operand, place):
            for name in names:
                values = self._special_of(kind, full, name, 0)
                self._ran_special(values, said, anchor, place, given)

    def _ran_special(
        self,
        values: list[_Value],
        said: str,
        node: ast.AST,
        place: _Place,
        given: list[ast.expr] | None = None,
    ) -> None:
        for kind, full in values:
            if kind == "fn":
                found = self._lookup(full, 0)
                if found is not None and found[1] in found[0].funcs:
                    where = f"{self._at(node, place)}, where {said} calls {found[1]} implicitly"
                    args = None
                    func = found[0].funcs[found[1]]
                    if given is not None:
                        call = ast.Call(func=ast.Name("_", ast.Load()), args=given, keywords=[])
                        args = self._arguments(found[0], func, call, place)
                    receiver = [*func.args.posonlyargs, *func.args.args][:1]
                    if args is not None and receiver:  # self holds what _local says
                        args.pop(receiver[0].arg, None)
                    self._run(found[0], found[1], place.start, where, args)
            elif kind == "nested":
                self._run_nested(kind, full, place)
            elif kind == "attr" and self.methods.get(full):
                where = (
                    f"{self._at(node, place)}, where {said} calls {full} of an object make "
                    "does not follow (any method of that name counts)"
                )
                for module, qualname in self.methods[full]:
                    self._run(module, qualname, place.start, where)

    def _special_of(self, kind: str, full: str, name: str, depth: int) -> list[_Value]:
        """The special method ``name`` Python calls on what ``(kind, full)`` is."""
        if kind == "inst":
            return self._class_special(full, name, depth)
        if kind == "cls":  # its own __class_getitem__, else its metaclass's methods
            if name == "__class_getitem__":
                return self._class_special(full, name, depth)
            return [  # a class is an instance of its metaclass
                v
                for kind_, meta in self._metaclass(full, depth)
                for v in self._special_of(
                    "inst" if kind_ == "cls" else kind_, meta, name, depth + 1
                )
            ]
        if kind in ("nestedinst", "nestedcls"):
            node, module = self.nested[full]
            return [
                self._nested(item, module)
                for item in node.body
                if isinstance(item, _Def) and item.name == name
            ]
        if kind in ("attr", "unknown", "ref"):
            return [("attr", name)]
        return []  # a function, a module, what is not the project's

    def _class_special(self, full: str, name: str, depth: int) -> list[_Value]:
        """The method ``name`` of the class ``full`` or of its bases ([]: none of the
        project's; any of that name if a base is not known)."""
        found = self._lookup(full, depth)
        if depth > _DEPTH or found is None or found[1] not in found[0].classes:
            return [("attr", name)] if depth > _DEPTH or found is not None else []
        module, cls = found
        if f"{cls}.{name}" in module.funcs:
            return [("fn", f"{full}.{name}")]
        body = module.class_scopes[cls]
        if name in body.names:
            place = _Place(module, cls, body, module.name, "")
            return self._all(body.names[name], place, depth + 1)
        if self._decorated_outside(module, module.classes[cls], depth):
            # functools.total_ordering's __ge__ calls __lt__ and __eq__: what a class
            # decorator not the project's added may call any method of the class
            return self._methods_of(full, depth)
        return self._base_special(module, cls, name, depth)

    def _base_special(self, module: _Module, cls: str, name: str, depth: int) -> list[_Value]:
        """``_class_special`` of the bases of the class ``cls`` of ``module``."""
        for kind, base_full in self._bases(module, module.classes[cls], depth):
            if kind == "cls":
                got = self._class_special(base_full, name, depth + 1)
                if got:
                    return got
            elif kind != "ext":
                return [("attr", name)]
        return []

    def _decorated_outside(self, module: _Module, node: ast.ClassDef, depth: int) -> bool:
        """Has the class a decorator not the project's that may add methods calling its
        own (``total_ordering``, ``attrs.define``), other than ``dataclass``?"""
        top = _Place(module, "", None, module.name, "")
        for decorator in node.decorator_list:
            func = decorator.func if isinstance(decorator, ast.Call) else decorator
            if _name(func) in _PLAIN_CLASS_DECORATORS or _abc_register(func, module):
                continue
            if any(kind == "ext" for kind, _ in self._resolve(func, top, depth + 1)):
                return True
        return False

    def _bases(self, module: _Module, node: ast.ClassDef, depth: int) -> list[_Value]:
        """What the bases of a class of ``module`` are (of ``Base[T]``: ``Base``'s)."""
        top = _Place(module, "", None, module.name, "")
        out: list[_Value] = []
        for base in node.bases:
            named = base.value if isinstance(base, ast.Subscript) else base
            out += self._resolve(named, top, depth + 1)
        return out

    def _metaclass(self, full: str, depth: int) -> list[_Value]:
        """What the class ``full``'s metaclass may be: ("cls", a class of the project),
        ("attr", "") for one make cannot name; [] for ``type`` or one not the project's."""
        found = self._lookup(full, depth)
        if depth > _DEPTH or found is None or found[1] not in found[0].classes:
            return [_UNKNOWN] if depth > _DEPTH else []
        module, cls = found
        node = module.classes[cls]
        top = _Place(module, "", None, module.name, "")
        given = [k.value for k in node.keywords if k.arg == "metaclass"]
        given += [  # @six.add_metaclass(Meta): the class is made again with Meta
            d.args[0]
            for d in node.decorator_list
            if isinstance(d, ast.Call) and _name(d.func) == "add_metaclass" and d.args
        ]
        values = [v for g in given for v in self._resolve(g, top, depth + 1)]
        out: list[_Value] = []
        for kind, meta in values or self._bases(module, node, depth):
            if kind == "cls" and given:
                out.append((kind, meta))
            elif kind == "cls":
                out += self._metaclass(meta, depth + 1)
            elif kind != "ext":
                out.append(_UNKNOWN)
        return out

    def _builtin(self, node: ast.Call, place: _Place) -> None:
        """A builtin called on an object (``str(money)``, ``sorted(items)``) calls its
        special methods."""
        name = node.func.id if isinstance(node.func, ast.Name) else ""
        if name not in BUILTIN_CALLS:
            return
        if all(kind == "ext" for kind, _ in self._resolve(node.func, place)):
            for arg in node.args:
                self._special(arg, BUILTIN_CALLS[name], f"`{name}()`", node, place)
            if name in ("isinstance", "issubclass") and len(node.args) > 1:
                self._checked(node.args[1], name, node, place)

    def _checked(self, classes: ast.expr, name: str, node: ast.AST, place: _Place) -> None:
        """``isinstance(x, (A, B))`` runs each class's metaclass's check; ABCMeta's asks
        the ``__subclasshook__`` of the class and of each of its subclasses."""
        said = f"`{name}()`"
        parts = classes.elts if isinstance(classes, ast.Tuple) else [classes]
        for part in parts:
            if isinstance(classes, ast.Tuple):
                check = "__instancecheck__" if name == "isinstance" else "__subclasscheck__"
                self._special(part, (check,), said, node, place)
            for kind, full in self._resolve(part, place):
                if kind == "cls":
                    for cls in self._family(full):
                        hook = self._class_special(cls, "__subclasshook__", 0)
                        self._ran_special(hook, said, node, place)
                elif kind in ("attr", "unknown", "ref"):
                    self._ran_special([("attr", "__subclasshook__")], said, node, place)

    def _attribute(self, node: ast.Attribute, place: _Place) -> None:
        """An attribute read, set or deleted: a property's accessor, a descriptor's
        ``__get__``/``__set__``/``__delete__``, the class's ``__getattr__`` and the like."""
        how = (
            "get"
            if isinstance(node.ctx, ast.Load)
            else "set"
            if isinstance(node.ctx, ast.Store)
            else "delete"
        )
        hooks = {
            "get": ("__getattribute__", "__getattr__"),
            "set": ("__setattr__",),
            "delete": ("__delattr__",),
        }[how]
        said = f"the attribute {'read' if how == 'get' else how} `{ast.unparse(node)}`"
        said = said if len(said) <= _SHOWN else said[: _SHOWN - 4] + "...`"
        values: list[_Value] = []
        for kind, full in self._resolve(node.value, place):
            if kind == "inst":
                values += self._member_access(full, node.attr, how, 0)
                values += [v for hook in hooks for v in self._class_special(full, hook, 0)]
            elif kind == "cls":
                values += [
                    v
                    for v in self._member_access(full, node.attr, how, 0)
                    if v[1].rpartition(".")[2] in ("__get__", "__set__", "__delete__")
                    or v[0] == "attr"
                ]
            elif kind == "mod" and how == "get":
                values += self._module_getattr(full, node.attr)
            elif kind in ("attr", "unknown", "ref"):
                values += [("attr", hook) for hook in hooks]
                values += self._any_access(node.attr, how)
        self._ran_special(values, said, node, place)

    def _member_access(self, full: str, attr: str, how: str, depth: int) -> list[_Value]:
        """What reading (``how``: "get", "set", "delete") ``attr`` of an instance of the
        class ``full`` runs: a property's accessor, a descriptor's method."""
        found = self._lookup(full, depth)
        if depth > _DEPTH or found is None or found[1] not in found[0].classes:
            return [("attr", f"__{how}__")] if depth > _DEPTH else []
        module, cls = found
        own = self._own_access(module, cls, attr, how, depth)
        if own is not None:
            return own
        for kind, base_full in self._bases(module, module.classes[cls], depth):
            if kind == "cls":
                got = self._member_access(base_full, attr, how, depth + 1)
                if got:
                    return got
            elif kind != "ext":
                return [("attr", f"__{how}__")]
        return []

    def _own_access(
        self, module: _Module, cls: str, attr: str, how: str, depth: int
    ) -> list[_Value] | None:
        """``_member_access`` for what the class's own body defines (None: nothing)."""
        top = _Place(module, "", None, module.name, "")
        for item in module.classes[cls].body:
            if isinstance(item, _Def) and item.name == attr:
                if accessor(item)[0] in ("property", "cached_property"):
                    return [("fn", f"{module.name}.{cls}.{attr}")]
                return self._described(item.decorator_list, how, top, depth, decorators=True)
        body = module.class_scopes[cls]
        if attr in body.names:
            return self._described(body.names[attr], how, top, depth, decorators=False)
        if attr in body.opaque:
            return [("attr", f"__{how}__")]
        return None

    def _described(
        self, values: list[ast.expr], how: str, place: _Place, depth: int, *, decorators: bool
    ) -> list[_Value]:
        """What accessing a class member made by ``values`` (its values, or a function's
        decorators) runs: a descriptor's method, the functions ``property(...)`` holds."""
        out: list[_Value] = []
        for value in values:
            if isinstance(value, ast.Call) and _name(value.func) in ("property", "cached_property"):
                for arg in value.args:
                    out += [v for v in self._resolve(arg, place, depth + 1) if v[0] == "fn"]
                continue
            named = decorators and isinstance(value, ast.Name | ast.Attribute)
            for kind, full in self._resolve(value, place, depth + 1):
                # a decorator's member is what it gave: an instance of a class, what a
                # function returned
                made = {"cls": "inst", "fn": "unknown"}.get(kind, kind) if named else kind
                out += self._special_of(made, full, f"__{how}__", depth + 1)
        return out

    def _any_access(self, attr: str, how: str) -> list[_Value]:
        """What accessing ``attr`` of an object of no known class may run: any property of
        that name, any descriptor a class of the project holds under that name."""
        if not self.members:
            for module in self.modules.values():
                for cls, scope in module.class_scopes.items():
                    own = [q.partition(".")[2] for q in module.funcs if q.startswith(f"{cls}.")]
                    for name in {*own, *scope.names}:
                        self.members.setdefault(name, []).append(f"{module.name}.{cls}")
        return [
            v for cls in self.members.get(attr, []) for v in self._member_access(cls, attr, how, 0)
        ]

    def _matched(self, node: ast.Match, place: _Place) -> None:
        """A ``match`` compares its subject with value patterns, checks its class and
        reads its attributes for class patterns, and reads it as a sequence or a
        mapping."""
        said = "a `match`"
        subject = node.subject
        self._special(subject, _MATCHED, said, subject, place)
        for case in node.cases:
            for pattern in ast.walk(case.pattern):
                if isinstance(pattern, ast.MatchValue):
                    self._special(pattern.value, ("__eq__",), said, pattern.value, place)
                elif isinstance(pattern, ast.MatchClass):
                    self._checked(pattern.cls, "isinstance", pattern.cls, place)
                    for attr in pattern.kwd_attrs:
                        read = ast.Attribute(value=subject, attr=attr, ctx=ast.Load())
                        self._attribute(ast.copy_location(read, pattern), place)
                    if pattern.patterns:  # by __match_args__: any attribute of it
                        for kind, full in self._resolve(pattern.cls, place):
                            for cls in self._family(full) if kind == "cls" else []:
                                values = self._methods_of(cls, 0)
                                self._ran_special(values, said, pattern.cls, place)

    def _imported(self, node: ast.ImportFrom, place: _Place) -> None:
        """``from M import name`` reads ``name`` of M: M's ``__getattr__`` runs if M does
        not have it (for a package, before a submodule of that name is imported)."""
        source = place.module.source
        tree = ast.Module(body=[node], type_ignores=[])
        for binding in bindings(tree, source.name, source.package).values():
            module = self.modules.get(binding.module)
            if module is None or "__getattr__" not in module.funcs:
                continue
            has = (module.funcs, module.classes, module.binds, module.scope.names)
            if not any(binding.attr in names for names in has):
                said = f"reading {binding.attr}, which {module.name} does not define,"
                self._ran_special([("fn", f"{module.name}.__getattr__")], said, node, place)

    def _module_getattr(self, full: str, attr: str) -> list[_Value]:
        """A module's ``__getattr__`` runs for a name it does not have."""
        module = self.modules.get(full)
        if module is None or "__getattr__" not in module.funcs:
            return []
        has = (module.funcs, module.classes, module.binds, module.scope.names, module.scope.opaque)
        if any(attr in names for names in has) or f"{full}.{attr}" in self.modules:
            return []
        return [("fn", f"{full}.__getattr__")]

    def _value(self, node: ast.expr, place: _Place, *, alias: bool) -> None:
        """A name or dotted name read, not called: a value of another module read through
        its imports (``rates.RATE``), or a function kept (and perhaps called later by what
        keeps it)."""
        head, _, rest = dotted(node).partition(".")
        scope = place.scope
        local = scope is not None and (head in scope.names or head in scope.opaque)
        binding = None if local else (scope.binds if scope else {}).get(head)
        binding = binding or (None if local else place.module.binds.get(head))
        if binding is not None:
            full = _full(binding, head)
            full = f"{full}.{rest}" if rest else full
            self.result.reads.setdefault(full, (place.start, place.where))
        for kind, full in self._resolve(node, place):
            if kind in ("fn", "cls") and not alias:
                self._escape(full, node, place)

    def _own(self, node: ast.AST, place: _Place) -> None:
        """A value of the module read (``LEVEL``, and ``COUNT`` of ``COUNT += 1``): what the
        code made or handed on with it keeps the value it read."""
        if place.judged:
            return
        if isinstance(node, ast.AugAssign):
            node = node.target
        elif not isinstance(node, ast.Name) or not isinstance(node.ctx, ast.Load):
            return
        if not isinstance(node, ast.Name):
            return
        scope = place.scope
        local = (scope.names, scope.opaque, scope.binds) if scope is not None else ()
        if any(node.id in names for names in local):
            return
        self.result.own.setdefault(f"{place.module.name}.{node.id}", (place.start, place.where))

    def _escape(self, full: str, node: ast.AST, place: _Place) -> None:
        if full not in self.result.escapes:
            self.result.escapes[full] = (place.start, self._at(node, place))

    def _run_full(self, full: str, place: _Place, call: ast.Call | None = None) -> None:
        found = self._lookup(full, 0)
        if found is not None and found[1]:
            module, qualname = found
            args = None
            if call is not None and "." not in qualname and qualname in module.funcs:
                args = self._arguments(module, module.funcs[qualname], call, place)
            self._run(module, qualname, place.start, place.where, args)

    def _arguments(
        self, module: _Module, func: _Def, call: ast.Call, place: _Place
    ) -> _Args | None:
        """What each parameter of the function ``func`` of ``module`` holds when ``call``
        calls it (its argument, else its default; ``*args`` a tuple, ``**kw`` a dict), or
        None when that is not read from the call (``f(*items)``)."""
        if any(isinstance(a, ast.Starred) for a in call.args) or any(
            k.arg is None for k in call.keywords
        ):
            return None
        spec = func.args
        positional = [*spec.posonlyargs, *spec.args]
        if len(call.args) > len(positional) and spec.vararg is None:
            return None
        given: dict[str, ast.expr] = {p.arg: v for p, v in zip(positional, call.args, strict=False)}
        given.update((k.arg, k.value) for k in call.keywords if k.arg is not None)
        top = _Place(module, "", None, module.name, "")
        defaults: dict[str, ast.expr] = dict(
            zip(
                [p.arg for p in positional][len(positional) - len(spec.defaults) :],
                spec.defaults,
                strict=True,
            )
        )
        defaults.update(
            (p.arg, d)
            for p, d in zip(spec.kwonlyargs, spec.kw_defaults, strict=True)
            if d is not None
        )
        out: _Args = {}
        for param in [*positional, *spec.kwonlyargs]:
            if param.arg in given:
                out[param.arg] = tuple(self._resolve(given[param.arg], place))
            elif param.arg in defaults:
                out[param.arg] = tuple(self._resolve(defaults[param.arg], top))
            else:
                return None
        for rest in (spec.vararg, spec.kwarg):
            if rest is not None:
                out[rest.arg] = (_EXT,)
        return out

    def _at(self, node: ast.AST, place: _Place) -> str:
        """``where``, and the call in it when that is another line or a part of it."""
        text = (
            _shown(node, place.module.source.lines)
            if isinstance(node, ast.expr)
            else ast.unparse(node)
            if isinstance(node, ast.ImportFrom)
            else ""
        )
        line = getattr(node, "lineno", 0)
        if isinstance(node, _Def | ast.ClassDef):
            text = f"{'class' if isinstance(node, ast.ClassDef) else 'def'} {node.name}"
        text = text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."
        return f"{place.where}, through `{text}` (line {line} of {place.module.name})"

    # -- what an expression may be -------------------------------------------------------

    def _resolve(self, node: ast.expr, place: _Place, depth: int = 0) -> list[_Value]:
        out: list[_Value] = []
        if depth > _DEPTH:
            out.append(_UNKNOWN)
        elif isinstance(node, _LITERALS) or self._type_name(node, place, depth):
            out.append(_EXT)  # a literal, or a string: type(x).__name__
        elif isinstance(node, ast.Name):
            local = self._local(node.id, place, depth)
            out += local if local is not None else self._global(place.module, node.id, depth)
        elif isinstance(node, ast.Attribute) and self._is_super(node.value, place):
            out += self._super(f"{place.module.name}.{place.owner}", node.attr, depth)
        elif isinstance(node, ast.Attribute):
            for kind, full in self._resolve(node.value, place, depth + 1):
                out += self._member(kind, full, node.attr, depth)
        elif isinstance(node, ast.IfExp | ast.BoolOp):
            parts = [node.body, node.orelse] if isinstance(node, ast.IfExp) else node.values
            for part in parts:
                out += self._resolve(part, place, depth + 1)
        elif isinstance(node, ast.BinOp | ast.UnaryOp | ast.Compare):
            out.append(self._operated(node, place, depth))
        elif isinstance(node, ast.Subscript):
            out.append(self._subscripted(node, place, depth))
        elif isinstance(node, ast.Call):
            out += self._returned(node, place, depth)
        else:
            out.append(_UNKNOWN)
        return out

    def _type_name(self, node: ast.expr, place: _Place, depth: int) -> bool:
        """Is ``node`` the name of an object's class (``self.__class__.__name__``,
        ``type(x).__qualname__``, ``__module__``): a string, whatever the object is?"""
        if not isinstance(node, ast.Attribute) or node.attr not in _TYPE_NAMES:
            return False
        owner = node.value
        if isinstance(owner, ast.Attribute):
            return owner.attr == "__class__"
        return (
            isinstance(owner, ast.Call)
            and isinstance(owner.func, ast.Name)
            and owner.func.id == "type"
            and len(owner.args) == 1
            and not owner.keywords
            and all(v == _EXT for v in self._resolve(owner.func, place, depth + 1))
        )

    def _is_super(self, node: ast.expr, place: _Place) -> bool:
        """Is ``node`` ``super()`` (or ``super(Cls, self)``) in a method of a class?"""
        return (
            bool(place.owner)
            and isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "super"
            and all(kind == "ext" for kind, _ in self._resolve(node.func, place))
        )

    def _super(self, owner: str, attr: str, depth: int) -> list[_Value]:
        """``super().attr`` in a method of the class ``owner``: the next class in the MRO
        of ``self``'s class that has it, which for an instance of a subclass with several
        bases may be any ancestor of that subclass: each of those of the project that
        defines ``attr`` (none: code not the project's, ``object.__init__``)."""
        family = self._family(owner)
        ancestors: list[str] = []
        todo = list(family)
        unknown = False
        while todo:
            found = self._lookup(todo.pop(), depth)
            if found is None or found[1] not in found[0].classes:
                continue
            module, cls = found
            for kind, base in self._bases(module, module.classes[cls], depth):
                got = self._lookup(base, depth) if kind == "cls" else None
                if got is not None and got[1] in got[0].classes:
                    full = f"{got[0].name}.{got[1]}"
                    if full not in ancestors:
                        ancestors.append(full)
                        todo.append(full)
                elif kind != "ext":
                    unknown = True
        out: list[_Value] = []
        for full in ancestors:
            if full in family:
                continue
            got = self._lookup(full, depth)
            if got is None:
                continue
            module, cls = got
            if f"{cls}.{attr}" in module.funcs:
                out.append(("fn", f"{full}.{attr}"))
            elif attr in module.class_scopes[cls].names:
                body = module.class_scopes[cls]
                place = _Place(module, cls, body, module.name, "")
                out += self._all(body.names[attr], place, depth + 1)
        if unknown:
            out.append(("attr", attr))
        return out or [_EXT]

    def _subscripted(self, node: ast.Subscript, place: _Place, depth: int) -> _Value:
        """What a subscript gives: a slice of a builtin value (``M31[:7]``) is one too, as
        is a typing alias (``os.PathLike[str]``, ``dict[str, int]``); an item may be
        anything."""
        if isinstance(node.slice, ast.Slice):
            bounds = (node.slice.lower, node.slice.upper, node.slice.step)
            parts = [node.value, *(b for b in bounds if b is not None)]
            values = [v for p in parts for v in self._resolve(p, place, depth + 1)]
            return _EXT if all(v == _EXT for v in values) else _UNKNOWN
        return _EXT if self._typing_alias(node.value, place) else _UNKNOWN

    def _typing_alias(self, node: ast.expr, place: _Place) -> bool:
        """Is ``node`` a class or a name of ``typing``, ``collections``, ``os`` or the
        builtins, whose subscript is a typing alias or a builtin value (never an object of
        the project)?"""
        head, _, rest = dotted(node).partition(".")
        if not head or any(kind != "ext" for kind, _ in self._resolve(node, place)):
            return False
        scope = place.scope
        if scope is not None and (head in scope.names or head in scope.opaque):
            return False
        binding = (scope.binds if scope is not None else {}).get(head)
        binding = binding or place.module.binds.get(head)
        if binding is None:  # a builtin: dict[str, int]
            return not rest and head in _BUILTIN_TYPES and head not in place.module.scope.names
        full = _full(binding, head)
        return full.partition(".")[0] in _ALIASING_MODULES

    def _returned(self, node: ast.Call, place: _Place, depth: int) -> list[_Value]:
        """What a call gives: an instance of a class it makes, what code not the project's
        gives (a wrapper of a function of ours is not followed), else unknown."""
        wraps = _name(node.func) in _WRAPS
        out: list[_Value] = []
        for kind, full in self._resolve(node.func, place, depth + 1):
            if kind in ("cls", "nestedcls"):
                out.append(("inst" if kind == "cls" else "nestedinst", full))
            else:
                out.append(_EXT if kind == "ext" and not wraps else _UNKNOWN)
        return out

    def _operated(
        self, node: ast.BinOp | ast.UnaryOp | ast.Compare, place: _Place, depth: int
    ) -> _Value:
        """What an operator gives: a builtin's value for builtin operands (``RATE * 2``), a
        bool for ``not``, ``is`` and ``in``, a union of types for ``|`` of classes whose
        metaclass is not the project's (``Left | Right | None``, an annotation); else what
        a special method returned. A chain (``M31 + M29 + ... + M31[:7]``, 13 terms in
        dateutil's rrule) is one step deeper for each operand, not for each operator: it is
        syntax, not names followed."""
        todo: list[tuple[ast.expr, bool]] = [(node, False)]  # an operand, and whether of |
        while todo:
            part, union = todo.pop()
            if isinstance(part, ast.UnaryOp) and isinstance(part.op, ast.Not):
                continue
            if isinstance(part, ast.Compare) and all(
                isinstance(op, ast.Is | ast.IsNot | ast.In | ast.NotIn) for op in part.ops
            ):
                continue
            if isinstance(part, ast.BinOp):
                union = isinstance(part.op, ast.BitOr)
                todo += [(part.left, union), (part.right, union)]
            elif isinstance(part, ast.UnaryOp):
                todo.append((part.operand, False))
            elif isinstance(part, ast.Compare):
                todo += [(p, False) for p in (part.left, *part.comparators)]
            elif any(
                v != _EXT and not (union and v[0] == "cls" and not self._metaclass(v[1], depth))
                for v in self._resolve(part, place, depth + 1)
            ):
                return _UNKNOWN
        return _EXT

    @staticmethod
    def _augmented(name: str, scope: _Scope, values: list[_Value]) -> list[_Value]:
        """An augmented name's values: builtin if each is, else what an operator gave."""
        if name in scope.augmented and any(v != _EXT for v in values):
            return [_UNKNOWN]
        return values

    def _looped(self, iters: list[ast.expr], place: _Place, depth: int) -> list[_Value]:
        """What a loop's name holds: a builtin value if each loop is over a range, a string,
        or a literal list, tuple or set of builtin values (``for name in Cls.__slots__``),
        else unknown."""
        if all(self._builtin_items(i, place, depth + 1) for i in iters):
            return [_EXT]
        return [_UNKNOWN]

    def _builtin_items(self, node: ast.expr, place: _Place, depth: int) -> bool:
        if depth > _DEPTH:
            return False
        if isinstance(node, ast.Call):
            return (
                isinstance(node.func, ast.Name)
                and node.func.id == "range"
                and all(v == _EXT for v in self._resolve(node.func, place, depth + 1))
            )
        if isinstance(node, ast.Constant):
            return isinstance(node.value, str | bytes)
        if isinstance(node, ast.List | ast.Tuple | ast.Set):
            return all(
                v == _EXT for e in node.elts for v in self._resolve(e, place, depth + 1)
            ) and not any(isinstance(e, ast.Starred) for e in node.elts)
        values = self._expressions(node, place, depth)
        return values is not None and all(self._builtin_items(v, p, depth + 1) for v, p in values)

    def _expressions(
        self, node: ast.expr, place: _Place, depth: int
    ) -> list[tuple[ast.expr, _Place]] | None:
        """The expressions a name (of the body ``place`` is in, or of the module) or a
        class's attribute (``Cls.NAMES``) is bound to, each with where it is (None: not
        known)."""
        scope, module = place.scope, place.module
        if isinstance(node, ast.Name):
            if scope is not None and node.id in scope.names:
                return [(v, place) for v in scope.names[node.id]]
            if scope is None or (node.id not in scope.opaque and node.id not in scope.binds):
                top = _Place(module, "", None, module.name, "")
                return [(v, top) for v in module.scope.names.get(node.id, [])] or None
            return None
        if isinstance(node, ast.Attribute):
            return self._class_expressions(node, place, depth)
        return None

    def _class_expressions(
        self, node: ast.Attribute, place: _Place, depth: int
    ) -> list[tuple[ast.expr, _Place]] | None:
        """``_expressions`` of a class's attribute (``Cls.NAMES``)."""
        out: list[tuple[ast.expr, _Place]] = []
        for kind, full in self._resolve(node.value, place, depth + 1):
            found = self._lookup(full, depth + 1) if kind == "cls" else None
            body = found[0].class_scopes.get(found[1]) if found is not None else None
            if found is None or body is None or node.attr not in body.names:
                return None
            where = _Place(found[0], found[1], body, found[0].name, "")
            out += [(v, where) for v in body.names[node.attr]]
        return out

    def _local(self, name: str, place: _Place, depth: int) -> list[_Value] | None:
        """A name of the function or class body ``place`` is in (None: not one)."""
        scope, module = place.scope, place.module
        if scope is None:
            return None
        found: list[_Value] | None = None
        if name in scope.params:
            values = scope.plain_params[name]
            found = [*scope.params[name], *self._all(values, place, depth)]
        elif name in scope.loops:
            found = self._looped(scope.loops[name], place, depth)
        elif name in scope.opaque:
            receiver = name in _RECEIVERS and place.owner
            kind = "inst" if name == "self" else "cls"
            # an instance (or class) of the method's class or of any subclass of it: a
            # subclass's override runs for ``self + x``, ``self.label()``
            family = self._family(f"{module.name}.{place.owner}") if receiver else []
            found = [(kind, full) for full in family] if receiver else [_UNKNOWN]
        elif name in scope.names:
            found = self._augmented(name, scope, self._all(scope.names[name], place, depth))
        elif name in scope.binds:
            found = self._bound(scope.binds[name], name, depth)
        elif scope is module.class_scopes.get(place.owner) and (
            f"{place.owner}.{name}" in module.funcs
        ):
            found = [("fn", f"{module.name}.{place.owner}.{name}")]
        elif name in scope.defs:
            found = [self._nested(scope.defs[name], module)]
        return found

    def _family(self, full: str) -> list[str]:
        """The class ``full`` and every class of the project deriving from it."""
        if self.subclasses is None:
            self.subclasses = {}
            for module in self.modules.values():
                for cls, node in module.classes.items():
                    for kind, base in self._bases(module, node, 0):
                        found = self._lookup(base, 0) if kind == "cls" else None
                        if found is not None and found[1] in found[0].classes:
                            key = f"{found[0].name}.{found[1]}"
                            self.subclasses.setdefault(key, []).append(f"{module.name}.{cls}")
        out, todo = [full], [full]
        while todo:
            for sub in self.subclasses.get(todo.pop(), []):
                if sub not in out:
                    out.append(sub)
                    todo.append(sub)
        return out

    def _all(self, values: list[ast.expr], place: _Place, depth: int) -> list[_Value]:
        out: list[_Value] = []
        for value in values:
            out += self._resolve(value, place, depth + 1)
        return out

    def _global(self, module: _Module, name: str, depth: int) -> list[_Value]:
        """A name of the module's own, at its top level."""
        if depth > _DEPTH:  # names naming each other round (re-exports in a cycle)
            return [_UNKNOWN]
        if name in module.funcs:
            return [("fn", f"{module.name}.{name}")]
        if name in module.classes:
            return [("cls", f"{module.name}.{name}")]
        if name in module.scope.names:
            top = _Place(module, "", None, module.name, "")
            return self._augmented(
                name, module.scope, self._all(module.scope.names[name], top, depth)
            )
        binding = module.binds.get(name)
        if binding is not None:
            return self._bound(binding, name, depth)
        return self._starred(module, name, depth)

    def _starred(self, module: _Module, name: str, depth: int) -> list[_Value]:
        """A name the module's code reads and does not bind: a star import's (of the
        project: its value; else not ours), a builtin, or unknown."""
        if name in module.scope.loops:
            top = _Place(module, "", None, module.name, "")
            return self._looped(module.scope.loops[name], top, depth)
        if name in module.scope.opaque:
            return [_UNKNOWN]
        outside = False
        for star in module.stars:
            found = self._lookup(star, depth)
            outside = outside or found is None
            if found is None or found[1]:
                continue
            source = found[0]
            if any(name in names for names in (source.funcs, source.classes, source.binds)):
                return self._global(source, name, depth + 1)
            if name in source.scope.names:
                return self._global(source, name, depth + 1)
        return [_EXT] if name in _BUILTINS or name in _MODULE_NAMES or outside else [_UNKNOWN]

    def _bound(self, binding: Binding, name: str, depth: int) -> list[_Value]:
        return self._dotted(_full(binding, name), depth)

    def _member(self, kind: str, full: str, attr: str, depth: int) -> list[_Value]:
        """``attr`` of what ``(kind, full)`` is: an attribute the project only ever sets
        to literals (``self._map = {}``) and that no class defines holds a builtin value."""
        found = self._member_of(kind, full, attr, depth)
        if found == [("attr", attr)] and attr in self.literal:
            return [_EXT]
        return found

    def _member_of(self, kind: str, full: str, attr: str, depth: int) -> list[_Value]:
        if kind == "mod":
            return self._dotted(f"{full}.{attr}", depth)
        if kind in ("fn", "ext", "nested"):
            return [_EXT]
        if kind in ("cls", "inst"):
            found = self._lookup(full, depth)
            if found is not None and found[1] in found[0].classes:
                return self._method(found[0], found[1], attr, depth)
        elif kind in ("nestedcls", "nestedinst"):
            node, module = self.nested[full]
            for item in node.body:
                if isinstance(item, _Def) and item.name == attr:
                    return [self._nested(item, module)]
        return [("attr", attr)]

    def _nested(self, node: _Def | ast.ClassDef, module: _Module) -> _Value:
        """A function or class defined inside a function."""
        self.nested[str(id(node))] = (node, module)
        return ("nestedcls" if isinstance(node, ast.ClassDef) else "nested", str(id(node)))

    def _method(self, module: _Module, cls: str, attr: str, depth: int) -> list[_Value]:
        """``attr`` of the class ``cls`` of ``module``: its own, a name its body gives, or
        its bases' (of the project); else any member of that name."""
        if depth > _DEPTH:
            return [("attr", attr)]
        if f"{cls}.{attr}" in module.funcs:
            return [("fn", f"{module.name}.{cls}.{attr}")]
        body = module.class_scopes[cls]
        if attr in body.names and self._member_of_enum(module, cls, attr, depth):
            return [("inst", f"{module.name}.{cls}")]  # Color.RED is a Color
        if attr in body.names:
            place = _Place(module, cls, body, module.name, "")
            return self._all(body.names[attr], place, depth + 1)
        for kind, full in self._bases(module, module.classes[cls], depth):
            if kind == "cls":
                found = self._lookup(full, depth + 1)
                if found is not None and found[1] in found[0].classes:
                    got = self._method(found[0], found[1], attr, depth + 1)
                    if got != [("attr", attr)]:
                        return got
        return [("attr", attr)]

    def _dotted(self, full: str, depth: int) -> list[_Value]:
        """A dotted name: of the project (a module, or a name in one), or not."""
        if depth > _DEPTH:
            return [_UNKNOWN]
        found = self._lookup(full, depth)
        if found is None:
            return [_EXT]
        module, qualname = found
        kind = "mod" if not qualname else "fn" if qualname in module.funcs else "cls"
        if kind != "cls" or qualname in module.classes:
            return [(kind, full)]
        head, _, rest = qualname.partition(".")
        if head in module.binds or head in module.scope.names or module.stars:
            values = self._global(module, head, depth + 1)
            for attr in rest.split(".") if rest else []:
                values = [v for k, f in values for v in self._member(k, f, attr, depth + 1)]
            return values
        return [("ref", full)]

    def _lookup(self, full: str, depth: int) -> tuple[_Module, str] | None:
        """The module of the project ``full`` is in, and the rest of it (None: not ours)."""
        parts = full.split(".")
        for cut in range(len(parts), 0, -1):
            module = self.modules.get(".".join(parts[:cut]))
            if module is not None:
                return module, ".".join(parts[cut:])
        return None


def _assigned(targets: Sequence[ast.expr], value: ast.expr) -> list[tuple[str, ast.expr]]:
    """``A = a`` or ``A, B = a, b`` (or in brackets): each name with its value; else none."""
    if len(targets) == 1 and isinstance(targets[0], ast.Name):
        return [(targets[0].id, value)]
    if len(targets) != 1 or not isinstance(targets[0], ast.Tuple | ast.List):
        return []
    names, values = targets[0].elts, value.elts if isinstance(value, ast.Tuple | ast.List) else []
    if len(names) != len(values) or any(isinstance(v, ast.Starred) for v in values):
        return []
    if not all(isinstance(n, ast.Name) for n in names):
        return []
    return [(n.id, v) for n, v in zip(names, values, strict=True) if isinstance(n, ast.Name)]


def _bound_names(node: ast.AST) -> set[str]:
    """The name ``node`` binds other than by a simple assignment (a loop's target, an
    unpacking, a parameter, an ``except ... as``). ``del name`` binds nothing: what it
    held before is what it held."""
    if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
        return {node.id}
    if isinstance(node, ast.arg):
        return {node.arg}
    if isinstance(node, ast.ExceptHandler) and node.name:
        return {node.name}
    return set()


def _name(node: ast.expr) -> str:
    """The last name of ``f`` or ``a.b.f``."""
    return (
        node.id
        if isinstance(node, ast.Name)
        else node.attr
        if isinstance(node, ast.Attribute)
        else ""
    )


def _stored(sources: list[Source]) -> frozenset[str]:
    """The names of the attributes the project's code sets to something not a literal
    (``self.callback = callback``): called as ``obj.callback()``, what it holds may be any
    function handed on."""
    found: set[str] = set()
    for source in sources:
        for node in ast.walk(source.tree):
            if isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if node.value is None or isinstance(node.value, _LITERALS):
                    continue
                found |= {t.attr for t in targets if isinstance(t, ast.Attribute)}
    return frozenset(found)


def _literal(
    sources: list[Source], stored: frozenset[str], methods: dict[str, list[tuple[_Module, str]]]
) -> frozenset[str]:
    """The names of the attributes the project's code only ever sets to literals
    (``self._map = {}``), which no class of it defines (a method, a class attribute, a
    field of a dataclass) nor sets another way (``setattr``, a loop's or ``with``'s
    target, an unpacking)."""
    simple: dict[int, str] = {}  # the attributes assignments set, by node
    other: set[str] = set(stored) | set(methods)
    stores: list[ast.Attribute] = []
    for source in sources:
        for node in ast.walk(source.tree):
            if isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                simple.update((id(t), t.attr) for t in targets if isinstance(t, ast.Attribute))
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store | ast.Del):
                stores.append(node)
            elif isinstance(node, ast.Call) and _name(node.func) in ("setattr", "delattr"):
                named = node.args[1] if len(node.args) > 1 else None
                if not isinstance(named, ast.Constant) or not isinstance(named.value, str):
                    return frozenset()  # an attribute make cannot name: any
                other.add(named.value)
            elif isinstance(node, ast.ClassDef):
                other |= {
                    t.id
                    for item in node.body
                    if isinstance(item, ast.Assign | ast.AnnAssign)
                    for t in (item.targets if isinstance(item, ast.Assign) else [item.target])
                    if isinstance(t, ast.Name)
                }
    other |= {n.attr for n in stores if id(n) not in simple}
    return frozenset(set(simple.values()) - other)


def _key(args: _Args) -> _Key:
    return tuple(sorted((name, tuple(sorted(set(values)))) for name, values in args.items()))


def _abc_register(func: ast.expr, module: _Module) -> bool:
    """Is the decorator an abstract base class's ``register`` (``@abc.MutableMapping.register``,
    ``@numbers.Integral.register``)? It records the class as a virtual subclass and hands it
    back as it was: no method added, none called."""
    if not isinstance(func, ast.Attribute) or func.attr != "register":
        return False
    head, _, rest = dotted(func.value).partition(".")
    binding = module.binds.get(head)
    if not head or binding is None:
        return False
    full = ".".join(filter(None, [_full(binding, head), rest]))
    return full.partition(".")[0] in _ABC_MODULES or full.startswith("collections.abc.")


def _full(binding: Binding, name: str) -> str:
    """What the name an import binds means, as a dotted name."""
    if binding.attr:  # from M import A (as name)
        return f"{binding.module}.{binding.attr}"
    return binding.module if binding.asname else name  # import a.b (binds a), import a.b as n


def _running(code: ast.AST, *, annotations: bool) -> Iterator[tuple[ast.AST, bool]]:
    """The nodes of ``code`` that run with it, each with whether it is a decorator: a
    nested function's or lambda's body does not run with it, its decorators and defaults
    do (and its annotations, unless they are not evaluated)."""
    todo: list[tuple[ast.AST, bool]] = [(code, False)]
    while todo:
        node, decorator = todo.pop()
        yield node, decorator
        parts: list[ast.AST]
        if isinstance(node, _Def | ast.ClassDef):
            todo += [(d, not isinstance(d, ast.Call)) for d in node.decorator_list]
            if isinstance(node, ast.ClassDef):
                parts = [*node.bases, *(k.value for k in node.keywords), *node.body]
            else:
                parts = [*node.args.defaults, *(d for d in node.args.kw_defaults if d)]
                if annotations:
                    parts += _annotations(node)
        elif isinstance(node, ast.Lambda):
            parts = [*node.args.defaults, *(d for d in node.args.kw_defaults if d)]
        else:
            parts = list(ast.iter_child_nodes(node))
        todo += [(p, False) for p in parts]


def _annotations(node: _Def) -> list[ast.expr]:
    args = node.args
    every = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
    found = [a.annotation for a in every if a is not None and a.annotation is not None]
    return [*found, node.returns] if node.returns is not None else found


def _shown(node: ast.expr, lines: list[str]) -> str:
    """``node`` as a reason quotes it: unparsed when its source is short, else the start of
    its source with the spaces run together. Never the whole of a long expression: the walk
    quotes each operand of ``a + b + ...`` (idna's tables add up ~1,000 lists), and
    unparsing each would take time growing with the square of its length."""
    first, last = node.lineno, min(node.end_lineno or node.lineno, len(lines))
    if first > len(lines):
        return ""
    size = sum(len(lines[n - 1]) for n in range(first, last + 1))
    if size <= 4 * _SHOWN:
        return ast.unparse(node)
    text = lines[first - 1].encode()[node.col_offset :].decode(errors="replace")
    for number in range(first + 1, last + 1):
        if len(text) > 2 * _SHOWN:
            break
        text += " " + lines[number - 1]
    return " ".join(text.split())


def _line(lines: list[str], node: ast.stmt) -> str:
    text = lines[node.lineno - 1].strip() if node.lineno <= len(lines) else ""
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."
