"""What of a module's own code runs when the module is imported.

A function the module body calls (``TABLE = _table()``), a class it makes an
instance of (``DEFAULT = Config()``), a decorator it applies, and what each of
them calls in turn, ran in the running process long ago: replacing it hot
leaves what it made or set then as the old code made it, where a restart
would run the new code. So does a hook that runs for each class made
(``__init_subclass__``, ``__set_name__``, a metaclass's ``__new__`` and
``__init__``), and what it calls. Everything here reads the ``ast``; nothing is
imported or run.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator

from hotpatch.make._syntax import dotted, main_guard

__all__ = ["import_reads", "import_runs"]

_Def = ast.FunctionDef | ast.AsyncFunctionDef
_SHOWN = 60
_CLASS_HOOKS = frozenset({"__init_subclass__", "__set_name__"})
_META_HOOKS = frozenset({"__new__", "__init__", "__prepare__"})
_METACLASSES = frozenset({"type", "ABCMeta", "abc.ABCMeta", "EnumMeta", "enum.EnumMeta"})
_MADE = ("__new__", "__init__", "__post_init__")  # what making an instance runs
_RECEIVERS = frozenset({"cls", "self", "mcs", "metacls", "mcls"})
_TYPING_ONLY = frozenset({"TYPE_CHECKING", "typing.TYPE_CHECKING"})


def import_runs(tree: ast.Module, lines: list[str]) -> dict[str, str]:
    """Each module-level function and method (``f``, ``Cls.m``) of ``tree`` that runs
    when the module is imported, and where that starts (words for a reason)."""
    return _walk(tree, lines)[0]


def import_reads(tree: ast.Module, lines: list[str]) -> dict[str, tuple[str, bool]]:
    """Each name and dotted name (``rates.RATE``, ``r.build``) the code of ``tree`` that
    runs when the module is imported reads, where that starts, and whether it calls it
    (or decorates with it)."""
    reads: dict[str, tuple[str, bool]] = {}
    for code, where in _walk(tree, lines)[1]:
        called: set[int] = set()
        for node, decorator in _running(code):
            if isinstance(node, ast.Call):
                called.add(id(node.func))
            elif decorator:
                called.add(id(node))
            if isinstance(node, ast.Name | ast.Attribute) and isinstance(node.ctx, ast.Load):
                name = dotted(node)
                if name and not reads.get(name, ("", False))[1]:
                    reads[name] = (reads.get(name, (where, False))[0], id(node) in called)
    return reads


def _walk(tree: ast.Module, lines: list[str]) -> tuple[dict[str, str], list[tuple[ast.AST, str]]]:
    """What runs at import: the module's own functions and methods (with where that
    starts), and every piece of code that runs (with the same)."""
    funcs: dict[str, _Def] = {}
    classes: dict[str, ast.ClassDef] = {}
    for node in tree.body:
        if isinstance(node, _Def):
            funcs[node.name] = node
        elif isinstance(node, ast.ClassDef):
            classes[node.name] = node
            for item in node.body:
                if isinstance(item, _Def):
                    funcs[f"{node.name}.{item.name}"] = item
    found: dict[str, str] = {}
    todo: list[tuple[str, str]] = []
    pieces: list[tuple[ast.AST, str]] = []

    def called(code: ast.AST, owner: str, where: str) -> None:
        pieces.append((code, where))
        for name in _called(code, owner, funcs, classes):
            if name not in found:
                found[name] = where
                todo.append((name, where))

    for node in tree.body:
        where = f"when the module is imported (line {node.lineno}: `{_line(lines, node)}`)"
        if isinstance(node, ast.If) and dotted(node.test) in _TYPING_ONLY:
            continue
        if isinstance(node, ast.If) and main_guard(node.test):
            continue
        if isinstance(node, ast.ClassDef):
            _class(node, lines, called)
            continue
        called(node, "", where)
    while todo:
        name, where = todo.pop()
        owner = name.partition(".")[0] if "." in name else ""
        for statement in funcs[name].body:
            called(statement, owner, where)
    return found, pieces


def _class(
    node: ast.ClassDef, lines: list[str], called: Callable[[ast.AST, str, str], None]
) -> None:
    """What making the class runs, and the hooks it runs for each class made."""
    made = f"when the module is imported, making {node.name} (line {node.lineno})"
    for part in (*node.decorator_list, *node.bases, *(k.value for k in node.keywords)):
        called(part, "", made)
    meta = any(dotted(b) in _METACLASSES for b in node.bases)
    for item in node.body:
        if isinstance(item, _Def):
            hooks = _CLASS_HOOKS | (_META_HOOKS if meta else frozenset())
            if item.name in hooks:
                made_by = (
                    f"each class made with the metaclass {node.name}"
                    if meta and item.name in _META_HOOKS
                    else f"each subclass of {node.name} made"
                    if item.name == "__init_subclass__"
                    else f"each class made holding a {node.name}"
                )
                where = (
                    f"from {node.name}.{item.name} (line {item.lineno}), which runs for "
                    f"{made_by}, those made at import too"
                )
                for statement in item.body:
                    called(statement, node.name, where)
            called(item, node.name, made)  # its decorators and defaults
        else:
            where = f"when the module is imported (line {item.lineno}: `{_line(lines, item)}`)"
            called(item, node.name, where)


def _called(
    code: ast.AST, owner: str, funcs: dict[str, _Def], classes: dict[str, ast.ClassDef]
) -> Iterator[str]:
    """The module's functions and methods ``code`` calls as it runs (not the bodies of the
    functions it defines, which run when those are called)."""
    for node, decorator in _running(code):
        target: ast.AST
        if isinstance(node, ast.Call):
            target = node.func
        elif decorator:
            target = node  # a decorator is called with what it decorates
        else:
            continue
        if isinstance(target, ast.Name):
            if target.id in funcs:
                yield target.id
            elif target.id in classes:
                yield from (f"{target.id}.{m}" for m in _MADE if f"{target.id}.{m}" in funcs)
        elif isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name):
            base = target.value.id
            cls = owner if base in _RECEIVERS and owner else base
            if cls in classes and f"{cls}.{target.attr}" in funcs:
                yield f"{cls}.{target.attr}"


def _running(code: ast.AST) -> Iterator[tuple[ast.AST, bool]]:
    """The nodes of ``code`` that run with it, each with whether it is a decorator: a
    nested function's or lambda's body does not run with it, its decorators and defaults
    do."""
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
        elif isinstance(node, ast.Lambda):
            parts = [*node.args.defaults, *(d for d in node.args.kw_defaults if d)]
        else:
            parts = list(ast.iter_child_nodes(node))
        todo += [(p, False) for p in parts]


def _line(lines: list[str], node: ast.stmt) -> str:
    text = lines[node.lineno - 1].strip() if node.lineno <= len(lines) else ""
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."
