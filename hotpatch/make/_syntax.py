"""What the comparison needs to know of Python source: definitions, imports, names, signatures.

Everything here reads ``ast`` trees and source text; nothing is imported or run.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import io
import tokenize
import types
import warnings
from dataclasses import dataclass

from hotpatch._validate import global_names

__all__ = [
    "Binding",
    "Star",
    "accessor",
    "all_names",
    "assigned_name",
    "bindings",
    "block_names",
    "call_names",
    "def_time_names",
    "default_reads",
    "function_kind",
    "is_pure",
    "main_guard",
    "nested_functions",
    "outlives",
    "private_names",
    "segment",
    "signature",
    "string_lines",
    "typing_names",
    "typing_only",
]

BUILTINS = frozenset(dir(builtins)) | {"__name__", "__file__", "__doc__", "__spec__", "__package__"}

# Calls that build a value and do nothing else: a constant made with them can be
# set again by a migration.
_PURE_CALLS = frozenset(
    {
        "bool",
        "bytes",
        "complex",
        "dict",
        "float",
        "frozenset",
        "int",
        "list",
        "range",
        "set",
        "str",
        "tuple",
        "object",
        "re.compile",
        "Decimal",
        "decimal.Decimal",
        "Fraction",
        "fractions.Fraction",
        "timedelta",
        "datetime.timedelta",
        "Path",
        "pathlib.Path",
        "PurePosixPath",
        "logging.getLogger",
        "getLogger",
        "TypeVar",
        "typing.TypeVar",
        "MappingProxyType",
        "types.MappingProxyType",
    }
)
_PURE_NODES = (
    ast.Constant,
    ast.Tuple,
    ast.List,
    ast.Set,
    ast.Dict,
    ast.Name,
    ast.Attribute,
    ast.BinOp,
    ast.UnaryOp,
    ast.BoolOp,
    ast.Compare,
    ast.JoinedStr,
    ast.FormattedValue,
    ast.Subscript,
    ast.Slice,
    ast.IfExp,
    ast.Starred,
    ast.keyword,
    ast.expr_context,
    ast.operator,
    ast.unaryop,
    ast.boolop,
    ast.cmpop,
)


@dataclass(frozen=True, slots=True)
class Binding:
    """A name a top-level import binds, and the statement that binds it (absolute)."""

    name: str
    statement: str  # "import os.path", "from decimal import Decimal as D"
    module: str  # "os.path", "decimal"
    attr: str  # "" for ``import x``
    asname: str


def assigned_name(node: ast.stmt) -> str | None:
    """The name ``NAME = value`` (or ``NAME: T = value``) sets; else ``None``."""
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
        target = node.targets[0]
        return target.id if isinstance(target, ast.Name) else None
    if isinstance(node, ast.AnnAssign) and node.value is not None:
        return node.target.id if isinstance(node.target, ast.Name) else None
    return None


def dotted(node: ast.expr) -> str:
    """``a.b.c`` for a chain of attributes on a name, else ""."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def main_guard(test: ast.expr) -> bool:
    """Is ``test`` the ``__name__ == "__main__"`` of a block that runs only as a script?"""
    return (
        isinstance(test, ast.Compare)
        and dotted(test.left) == "__name__"
        and len(test.comparators) == 1
        and isinstance(test.comparators[0], ast.Constant)
        and test.comparators[0].value == "__main__"
    )


def is_pure(node: ast.expr) -> bool:
    """Does evaluating ``node`` only build a value (no call with effects, no lambda)?"""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call):
            if dotted(sub.func) not in _PURE_CALLS:
                return False
            continue
        if not isinstance(sub, _PURE_NODES):
            return False
    return True


def bindings(tree: ast.Module, module: str, is_package: bool) -> dict[str, Binding]:
    """The names the module's top-level imports bind (relative imports made absolute)."""
    found: dict[str, Binding] = {}
    package = module if is_package else module.rpartition(".")[0]
    for node in tree.body:
        if isinstance(node, ast.Import):
            for alias in node.names:
                name = alias.asname or alias.name.partition(".")[0]
                text = f"import {alias.name}" + (f" as {alias.asname}" if alias.asname else "")
                found[name] = Binding(name, text, alias.name, "", alias.asname or "")
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            base = _absolute(package, node.module or "", node.level)
            for alias in node.names:
                if alias.name == "*":
                    continue
                name = alias.asname or alias.name
                text = f"from {base} import {alias.name}" + (
                    f" as {alias.asname}" if alias.asname else ""
                )
                found[name] = Binding(name, text, base, alias.name, alias.asname or "")
    return found


@dataclass(frozen=True, slots=True)
class Star:
    """A ``from M import *`` of a module: M made absolute, and the line that says it."""

    module: str
    line: int
    text: str  # the statement's first line, as written

    def said(self) -> str:
        return f"line {self.line}: `{self.text}`"


def stars(tree: ast.Module, module: str, is_package: bool, lines: list[str]) -> list[Star]:
    """The module's star imports, in order (those under ``if TYPE_CHECKING:`` never run)."""
    package = module if is_package else module.rpartition(".")[0]
    typing = typing_names(tree)
    found: list[Star] = []
    todo: list[ast.stmt] = list(reversed(tree.body))
    while todo:
        node = todo.pop()
        if isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names):
            text = lines[node.lineno - 1].strip() if node.lineno <= len(lines) else ""
            base = _absolute(package, node.module or "", node.level)
            found.append(Star(base, node.lineno, text))
        elif isinstance(node, ast.If) and typing_only(node.test, typing):
            todo += reversed(node.orelse)
        elif isinstance(node, ast.If | ast.Try | ast.TryStar | ast.With):
            parts = [node.body, getattr(node, "orelse", []), getattr(node, "finalbody", [])]
            parts += [h.body for h in getattr(node, "handlers", [])]
            todo += reversed([n for part in parts for n in part])
    found.sort(key=lambda s: s.line)
    return found


_TYPING = frozenset({"typing", "typing_extensions"})


def typing_names(tree: ast.Module) -> frozenset[str]:
    """The names the module's own imports give ``typing`` (``import typing as t``)."""
    names = {"typing"}
    for node in tree.body:
        if isinstance(node, ast.Import):
            names |= {a.asname or a.name for a in node.names if a.name in _TYPING}
    return frozenset(names)


def typing_only(test: ast.expr, typing: frozenset[str]) -> bool:
    """Is ``test`` ``TYPE_CHECKING`` (or ``typing.TYPE_CHECKING``, ``t.TYPE_CHECKING``
    under ``import typing as t``): the test of a block that never runs?"""
    head, _, name = dotted(test).rpartition(".")
    return name == "TYPE_CHECKING" and (not head or head in typing)


_ALL_GROWS = frozenset({"append", "extend"})
_ALL_READS = frozenset({"sort", "index", "count", "copy"})


def all_names(tree: ast.Module) -> tuple[frozenset[str] | None, ast.stmt | None]:
    """What the module's ``__all__`` lists: ``(names, None)`` when its statements say it
    with string literals only, ``(None, None)`` when it has none (a star import then takes
    every public name), ``(None, statement)`` when that statement computes it."""
    names: set[str] | None = None
    for node in tree.body:
        if not _changes_all(node):
            continue  # reads it, at most
        value: ast.expr | None = None
        grows = False
        if isinstance(node, ast.Assign | ast.AnnAssign) and [
            dotted(t) for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
        ] == ["__all__"]:
            value = node.value
        elif isinstance(node, ast.AugAssign) and dotted(node.target) == "__all__":
            value, grows = node.value, isinstance(node.op, ast.Add)
        elif (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Call)
            and dotted(node.value.func) in {f"__all__.{m}" for m in _ALL_GROWS}
        ):
            call = node.value
            value = call.args[0] if len(call.args) == 1 and not call.keywords else None
            if dotted(call.func).endswith(".append") and value is not None:
                value = ast.List(elts=[value], ctx=ast.Load())
            grows = True
        listed = _strings(value)
        if listed is None or (grows and names is None):
            return None, node
        names = (names or set()) | listed if grows else set(listed)
    return (frozenset(names) if names is not None else None), None


def _changes_all(node: ast.stmt) -> bool:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and sub.id == "__all__" and not isinstance(sub.ctx, ast.Load):
            return True
        called = dotted(sub.func) if isinstance(sub, ast.Call) else ""
        if called.startswith("__all__.") and called.partition(".")[2] not in _ALL_READS:
            return True
    return False


def _strings(node: ast.expr | None) -> set[str] | None:
    if isinstance(node, ast.List | ast.Tuple):
        found = [e.value for e in node.elts if isinstance(e, ast.Constant)]
        listed = [v for v in found if isinstance(v, str)]
        return set(listed) if len(listed) == len(node.elts) else None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _strings(node.left), _strings(node.right)
        return left | right if left is not None and right is not None else None
    return None


def block_names(tree: ast.Module) -> set[str]:
    """The names the module's compound statements bind at import (``try: from x import y``,
    ``if ...: NAME = ...``), which a plain scan of its top-level statements misses; not those
    under ``if TYPE_CHECKING:``, which never runs."""
    found: set[str] = set()
    typing = typing_names(tree)
    todo: list[ast.AST] = [
        n
        for n in tree.body
        if isinstance(n, ast.If | ast.Try | ast.TryStar | ast.With | ast.For | ast.While)
    ]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and typing_only(node.test, typing):
            todo += node.orelse
            continue
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            found.add(node.name)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            found |= {a.asname or a.name.partition(".")[0] for a in node.names if a.name != "*"}
            continue
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.stmt | ast.excepthandler | ast.match_case):
                todo.append(child)
            elif isinstance(child, ast.expr):
                found |= {
                    n.id
                    for n in ast.walk(child)
                    if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
                }
    return found


def _absolute(package: str, name: str, level: int) -> str:
    if level == 0:
        return name
    parts = package.split(".") if package else []
    if level > 1:
        parts = parts[: len(parts) - (level - 1)]
    return ".".join([*parts, name] if name else parts)


def accessor(node: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple[str, str]:
    """(member kind, accessor) from a method's decorators: ("property", "setter"), ..."""
    for deco in node.decorator_list:
        name = dotted(deco)
        if name in ("property", "builtins.property"):
            return "property", "getter"
        if name in (f"{node.name}.setter", f"{node.name}.deleter", f"{node.name}.getter"):
            return "property", name.rpartition(".")[2]
        if name in ("classmethod", "staticmethod"):
            return name, ""
        if name in ("cached_property", "functools.cached_property"):
            return "cached_property", ""
    return "function", ""


def function_kind(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    """ "function", "generator", "coroutine" or "async generator" (its own body only)."""
    yields = any(isinstance(n, ast.Yield | ast.YieldFrom) for n in _own_scope(node))
    if isinstance(node, ast.AsyncFunctionDef):
        return "async generator" if yields else "coroutine"
    return "generator" if yields else "function"


def _own_scope(node: ast.AST) -> list[ast.AST]:
    """The nodes of ``node``'s body, not descending into nested functions, lambdas or classes."""
    out: list[ast.AST] = []
    stack = list(ast.iter_child_nodes(node))
    while stack:
        sub = stack.pop()
        out.append(sub)
        if isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            continue
        stack.extend(ast.iter_child_nodes(sub))
    return out


_HAS_DEFAULT = object()


def signature(args: ast.arguments) -> inspect.Signature:
    """The call signature an ``ast.arguments`` declares (defaults stand for "optional")."""
    p = inspect.Parameter
    params: list[inspect.Parameter] = []
    positional = [*args.posonlyargs, *args.args]
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    for index, (arg, default) in enumerate(zip(positional, defaults, strict=True)):
        kind = p.POSITIONAL_ONLY if index < len(args.posonlyargs) else p.POSITIONAL_OR_KEYWORD
        params.append(p(arg.arg, kind, default=p.empty if default is None else _HAS_DEFAULT))
    if args.vararg:
        params.append(p(args.vararg.arg, p.VAR_POSITIONAL))
    for arg, kw_default in zip(args.kwonlyargs, args.kw_defaults, strict=True):
        optional = p.empty if kw_default is None else _HAS_DEFAULT
        params.append(p(arg.arg, p.KEYWORD_ONLY, default=optional))
    if args.kwarg:
        params.append(p(args.kwarg.arg, p.VAR_KEYWORD))
    return inspect.Signature(params)


def nested_functions(node: ast.FunctionDef | ast.AsyncFunctionDef) -> dict[str, list[ast.AST]]:
    """Nested functions of ``node`` by qualname (``outer.<locals>.inner``): every one of that
    name (a def in each branch), in the order they are found.

    Whether one may outlive a call of the function (returned, stored, passed
    on, decorated) is ``outlives``'s to say.
    """
    found: dict[str, list[ast.AST]] = {}

    def visit(scope: ast.AST, prefix: str) -> None:
        for sub in _own_scope(scope):
            if isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef):
                qual = f"{prefix}.<locals>.{sub.name}"
                found.setdefault(qual, []).append(sub)
                visit(sub, qual)

    visit(node, node.name)
    return found


def outlives(scope: ast.FunctionDef | ast.AsyncFunctionDef, name: str) -> bool:
    """May the nested function ``name`` defined in ``scope`` outlive a call of it?"""
    calls: set[int] = set()
    for sub in ast.walk(scope):
        if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name):
            calls.add(id(sub.func))
        if (
            isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef)
            and sub.name == name
            and sub.decorator_list
        ):
            return True  # the decorator is given it
    return any(
        isinstance(sub, ast.Name) and sub.id == name and id(sub) not in calls
        for sub in ast.walk(scope)
    )


def private_names(node: ast.AST) -> bool:
    """Does ``node`` use a name Python mangles in a class body (``__x``, not ``__x__``)?"""

    def private(name: str) -> bool:
        return name.startswith("__") and not name.endswith("__")

    return any(
        (isinstance(sub, ast.Attribute) and private(sub.attr))
        or (isinstance(sub, ast.Name) and private(sub.id))
        or (isinstance(sub, ast.arg) and private(sub.arg))
        for sub in ast.walk(node)
    )


def def_time_names(node: ast.AST) -> set[str]:
    """Names read when a definition is made: decorators, defaults, bases, keywords."""
    parts: list[ast.AST] = []
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        parts += node.decorator_list + node.args.defaults
        parts += [d for d in node.args.kw_defaults if d is not None]
    elif isinstance(node, ast.ClassDef):
        parts += node.decorator_list + node.bases + [k.value for k in node.keywords]
    return {n.id for part in parts for n in ast.walk(part) if isinstance(n, ast.Name)}


def default_reads(node: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    """What the defaults read when the function is made: ``MISSING``, ``keys.method_key``,
    ``Pool.empty`` (each chain of attributes on a name, and its every start)."""
    defaults = [*node.args.defaults, *(d for d in node.args.kw_defaults if d is not None)]
    return {
        chain
        for default in defaults
        for sub in ast.walk(default)
        if isinstance(sub, ast.Name | ast.Attribute) and (chain := dotted(sub))
    }


def call_names(source: str) -> set[str]:
    """Global names the code of a definition's functions (and a class body) reads."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        code = compile("from __future__ import annotations\n" + source, "<hotpatch make>", "exec")
    names: set[str] = set()
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= global_names(const)
    return names


def string_lines(text: str, tree: ast.Module) -> set[int]:
    """Line numbers that continue a string literal started on an earlier line."""
    lines: set[int] = set()
    try:
        starts: list[int] = []  # open f-strings (3.12+ tokenizes their parts)
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            kind = tokenize.tok_name[token.type]
            if kind == "FSTRING_START":
                starts.append(token.start[0])
            elif kind == "FSTRING_END" and starts:
                lines.update(range(starts.pop() + 1, token.end[0] + 1))
            elif kind == "STRING" and token.end[0] > token.start[0]:
                lines.update(range(token.start[0] + 1, token.end[0] + 1))
    except (tokenize.TokenError, SyntaxError):
        pass
    else:
        return lines
    for node in ast.walk(tree):  # a conservative fallback: whole implicit concatenations
        if not isinstance(node, ast.Constant | ast.JoinedStr) or not node.end_lineno:
            continue
        if isinstance(node, ast.JoinedStr) or isinstance(node.value, str | bytes):
            lines.update(range(node.lineno + 1, node.end_lineno + 1))
    return lines


def segment(
    lines: list[str], node: ast.stmt, keep: set[int], *, decorators: bool = False, indent: int = 0
) -> str:
    """The source of ``node`` moved to column ``indent``, string contents exactly as they are."""
    first = node.lineno
    if decorators and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        first = min([first, *(d.lineno for d in node.decorator_list)])
    last = node.end_lineno or node.lineno
    col = node.col_offset
    out: list[str] = []
    for number in range(first, last + 1):
        line = lines[number - 1]
        if number in keep:
            out.append(line)  # inside a string: as it is
        elif not line.strip():
            out.append("\n")
        elif col and not line[:col].isspace():
            out.append(line)  # less indented: inside brackets, where it does not matter
        else:
            out.append(" " * indent + line[col:])
    return "".join(out).rstrip() + "\n"
