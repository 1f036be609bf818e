"""A change only inside nested functions' bodies -> nested targets (``mod:outer.<locals>.inner``).

A nested function's code is a constant of its enclosing function's code. The
registry can put new code into every function object already made from it (a
closure, the wrapper a decorator returned at import) and into the enclosing
code, so that those made later run it too -- if each object made before can
run the new code as it is: the same parameters and defaults, the same closure
cells, one nested function of that name. Here two versions of a function are
compared with their nested functions' (and lambdas') bodies left out: when
nothing else changed, each nested function whose own code changed is a
target, unless one of those conditions does not hold, which is then the
reason for a baseline. A lambda is a target too, written as a ``def``, when
it is the only one of its scope (the registry cannot tell two apart).
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import types
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

from hotpatch.make._syntax import (
    BUILTINS,
    function_kind,
    nested_functions,
    outlives,
    private_names,
    segment,
)

__all__ = ["NestedChange", "NestedTargets", "escaping"]

_Def = ast.FunctionDef | ast.AsyncFunctionDef
_Fn = ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda


@dataclass(frozen=True, slots=True)
class NestedChange:
    """A nested function whose own code changed, and what its replacement needs."""

    qualname: str  # its code's qualname: "retry.<locals>.deco.<locals>.wrapper"
    outer: str  # the function it is nested in: "retry.<locals>.deco"
    old: _Fn
    new: _Fn
    cls: str  # the nearest class around it, which mangles its private names, or ""
    why: str = ""  # why it cannot be a target ("" when it can)
    source: str = ""  # the replacement's source (a nonlocal declared global), when it can
    mangled: str = ""  # the class its source is indented in, for its private names
    defaults: frozenset[str] = frozenset()  # the names its defaults read (in the patch file)
    note: str = ""  # a comment for the reader of the patch file

    @property
    def def_name(self) -> str:
        """The replacement's name in the patch file (a lambda's: ``make_key_lambda``)."""
        if isinstance(self.new, ast.Lambda):
            return self.outer.rpartition(".")[2].strip("<>") + "_lambda"
        return self.new.name


class NestedTargets:
    """The nested targets between two versions of one module."""

    def __init__(self, old: list[str], new: list[str], keep: set[int], names: set[str]) -> None:
        """``old``/``new``: the two versions' lines; ``keep``: the new version's lines inside
        strings (see ``segment``); ``names``: the module's own names."""
        self._lines, self._keep = new, keep
        self._texts = {"old": "".join(old), "new": "".join(new)}
        self._codes: dict[str, dict[str, list[types.CodeType]] | None] = {}
        self._module_names = names | BUILTINS

    def changes(self, old: _Fn, new: _Fn, qualname: str) -> list[NestedChange] | None:
        """The changed nested functions of ``qualname`` (a function, or a method
        ``Class.name``), each with ``why`` it cannot be a target or with its source; None
        when ``qualname``'s own code changed too."""
        cls = qualname.rpartition(".")[0].rpartition(".")[2]  # a method's class mangles
        found = _body_changes(old, new, qualname, cls)
        if found is None:
            return None
        return [self._judge(change) for change in found]

    def _judge(self, change: NestedChange) -> NestedChange:
        why = self._refusal(change)
        if why:
            return dataclasses.replace(change, why=why)
        mangled = change.cls if private_names(change.new) else ""
        indent = 4 if mangled else 0
        if isinstance(change.new, ast.Lambda):
            plain = source = _as_def(change.new, change.def_name, indent)
        else:
            plain = segment(self._lines, change.new, self._keep, indent=indent)
            source = _with_global(plain, change.new, indent)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", SyntaxWarning)
                compile(("class _:\n" if indent else "") + source, "<hotpatch make>", "exec")
        except SyntaxError as exc:
            why = (
                f"its code cannot stand on its own in a patch file ({exc.msg}): a nested "
                f"function in it reaches into {change.outer}"
            )
            return dataclasses.replace(change, why=why)
        defaults = [*change.new.args.defaults, *change.new.args.kw_defaults]
        names = {n.id for d in defaults if d for n in ast.walk(d) if isinstance(n, ast.Name)}
        code = self._code("new", change.qualname)
        cells = ", ".join(code.co_freevars) if isinstance(code, types.CodeType) else ""
        note = (
            f"Nested in {change.outer}: every function already made from it (found in memory) "
            "and every one made later runs this code"
            + (f"; it reads its closure ({cells}) by name" if cells else "")
            + ("; `global` assigns the closure's `nonlocal`" if source != plain else "")
            + "."
        )
        return dataclasses.replace(
            change, source=source, mangled=mangled, defaults=frozenset(names), note=note
        )

    def _refusal(self, change: NestedChange) -> str:  # noqa: PLR0911 - one reason per return
        old, new, outer = change.old, change.new, change.outer
        made = "every function already made from it keeps its own"
        if isinstance(old, ast.Lambda) or isinstance(new, ast.Lambda):
            if _dump(old.args) != _dump(new.args):
                return f"its parameters or defaults change; {made}"
        elif _dumps(old.decorator_list) != _dumps(new.decorator_list):
            return (
                f"its decorators change; they ran when {outer} made each function already "
                "made from it"
            )
        elif _dump(old.args) != _dump(new.args) or _dumps([old.returns]) != _dumps([new.returns]):
            return f"its signature changes (parameters, defaults or annotations); {made}"
        elif (kinds := (function_kind(old), function_kind(new)))[0] != kinds[1]:
            return f"it changes from a {kinds[0]} to a {kinds[1]}; {made} kind"
        codes = self._code("old", change.qualname), self._code("new", change.qualname)
        if isinstance(codes[0], str) or isinstance(codes[1], str):
            return codes[0] if isinstance(codes[0], str) else str(codes[1])
        if codes[0].co_freevars != codes[1].co_freevars:
            before = ", ".join(codes[0].co_freevars) or "none"
            after = ", ".join(codes[1].co_freevars) or "none"
            return (
                f"its closure changes (the variables of {outer} it reads: {before} -> {after}); "
                "the functions already made hold only the old cells"
            )
        defaults = [*new.args.defaults, *(d for d in new.args.kw_defaults if d is not None)]
        local = sorted(
            {
                n.id
                for d in defaults
                for n in ast.walk(d)
                if isinstance(n, ast.Name) and n.id not in self._module_names
            }
        )
        if local:
            return (
                f"a default value reads {', '.join(local)}, local to {outer}: a patch file "
                f"cannot compute it, and {made} defaults"
            )
        inner = ""
        if isinstance(old, _Def) and isinstance(new, _Def):
            inner = escaping(old, new, change.qualname)
        if inner:
            return (
                f"the nested function {inner} in it changes too and may outlive a call of it: "
                "function objects already made from it would keep the old code"
            )
        through = _nested_reads(new, set(codes[1].co_freevars))
        if through:
            return (
                f"code nested in it (a function, lambda, class body, generator expression or "
                f"comprehension) reads {', '.join(through)} from the closure it has from "
                f"{outer}; the registry gives the closure to the replaced function's own code "
                "only, so that nested code would not find it when it runs"
            )
        return ""

    def _code(self, which: str, qualname: str) -> types.CodeType | str:
        """The one code named ``qualname`` in that version, or why there is not one."""
        if which not in self._codes:
            self._codes[which] = _compiled(self._texts[which])
        codes = self._codes[which]
        if codes is None:
            return f"the {which} version of the module does not compile"
        found = codes.get(qualname, [])
        if len(found) != 1:
            return (
                f"the {which} version makes {len(found) or 'no'} nested functions named "
                f"{qualname} (a def in each branch?): a target name must say which, so more "
                "than one cannot be a nested target"
            )
        return found[0]


def escaping(old: _Def, new: _Def, qualname: str) -> str:
    """The first nested function or lambda of ``qualname`` that changes and may outlive a
    call of it (returned, stored, passed on, decorated): its qualname, or ""."""
    before, after = nested_functions(old), nested_functions(new)
    for inner, nodes in after.items():
        earlier = before.get(inner, [])
        if [_dump(n) for n in earlier] == [_dump(n) for n in nodes]:
            continue
        name = inner.rpartition(".")[2]
        if outlives(new, name) or (earlier and outlives(old, name)):
            return f"{qualname}.<locals>.{inner.partition('.<locals>.')[2]}"
    lambdas = _lambdas(old, qualname), _lambdas(new, qualname)
    for inner, made in lambdas[1].items():
        before_made = lambdas[0].get(inner, [])
        if [_dump(n) for n, _ in before_made] == [_dump(n) for n, _ in made]:
            continue
        if any(kept for _, kept in made) or any(kept for _, kept in before_made):
            return inner
    return ""


def _lambdas(node: _Def, qualname: str) -> dict[str, list[tuple[ast.Lambda, bool]]]:
    """The lambdas in ``node`` by qualname, each with whether it may outlive the call of
    ``node`` that made it: returned by ``node`` itself, stored (in an attribute or an item),
    bound to a name that is, or part of such a value. One passed to a call (``sorted(key=
    lambda ...)``, or through a name) is taken to be used there; one returned by a nested
    function is that function's to outlive (a changed nested function is judged by name)."""
    found: dict[str, list[tuple[ast.Lambda, bool]]] = {}
    parents = {id(c): p for p in ast.walk(node) for c in ast.iter_child_nodes(p)}

    def walk(sub: ast.AST, prefix: str, top: bool) -> None:
        if isinstance(sub, ast.Lambda):
            qual = f"{prefix}.<locals>.<lambda>"
            found.setdefault(qual, []).append((sub, _kept(sub, node, parents, top, set())))
            for child in ast.iter_child_nodes(sub):
                walk(child, qual, False)
        elif isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef):
            for part in (*sub.decorator_list, sub.args):
                walk(part, prefix, top)
            for stmt in sub.body:
                walk(stmt, f"{prefix}.<locals>.{sub.name}", False)
        elif not isinstance(sub, ast.ClassDef):  # a class in a function: a baseline anyway
            for child in ast.iter_child_nodes(sub):
                walk(child, prefix, top)

    for stmt in node.body:
        walk(stmt, qualname, True)
    return found


def _kept(
    value: ast.AST, func: _Def, parents: dict[int, ast.AST], top: bool, seen: set[str]
) -> bool:
    """Does ``value`` (an expression in ``func``) outlive the call that computes it?"""
    parent = parents.get(id(value))
    if isinstance(parent, ast.Return | ast.Yield | ast.YieldFrom):
        return top
    if isinstance(
        parent, ast.Tuple | ast.List | ast.Set | ast.Dict | ast.IfExp | ast.BoolOp | ast.Starred
    ):
        return _kept(parent, func, parents, top, seen)
    if isinstance(parent, ast.Assign | ast.AnnAssign | ast.NamedExpr) and parent.value is value:
        targets = parent.targets if isinstance(parent, ast.Assign) else [parent.target]
        for target in targets:
            if not isinstance(target, ast.Name):
                return True  # an attribute, an item: stored
            if target.id in seen:
                continue
            seen.add(target.id)
            uses = [
                n
                for n in ast.walk(func)
                if isinstance(n, ast.Name) and n.id == target.id and isinstance(n.ctx, ast.Load)
            ]
            if any(_kept(use, func, parents, top, seen) for use in uses):
                return True
    return False


def _body_changes(old: _Fn, new: _Fn, qualname: str, cls: str) -> list[NestedChange] | None:
    """Each nested function whose own code changed (the innermost such), or None when
    ``old`` and ``new`` differ in more than their nested functions."""
    if _own_dump(old) != _own_dump(new):
        return None
    found: list[NestedChange] = []
    pairs = zip(_children(old, qualname, cls), _children(new, qualname, cls), strict=True)
    for (qual, inner_cls, before), (_, _, after) in pairs:
        if _dump(before) == _dump(after):
            continue
        deeper = _body_changes(before, after, qual, inner_cls)
        if deeper is None:
            found.append(NestedChange(qual, qualname, before, after, inner_cls))
        else:
            found.extend(deeper)
    return found


def _children(scope: ast.AST, prefix: str, cls: str) -> Iterator[tuple[str, str, _Fn]]:
    """(qualname, nearest class, node) of the functions and lambdas defined in ``scope``'s
    own code, in order: directly, or as methods of classes defined there."""
    sep = "." if isinstance(scope, ast.ClassDef) else ".<locals>."

    def walk(node: ast.AST) -> Iterator[tuple[str, str, _Fn]]:
        for sub in ast.iter_child_nodes(node):
            if isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef):
                yield f"{prefix}{sep}{sub.name}", cls, sub
            elif isinstance(sub, ast.Lambda):
                yield f"{prefix}{sep}<lambda>", cls, sub
            elif isinstance(sub, ast.ClassDef):
                yield from _children(sub, f"{prefix}{sep}{sub.name}", sub.name)
            else:
                yield from walk(sub)

    yield from walk(scope)


class _Stub(ast.NodeTransformer):
    """Each nested function (below the root) reduced to its name: its own code is its own."""

    def __init__(self, root: ast.AST) -> None:
        self.root = root

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        return self._stub(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> ast.AST:
        return self._stub(node)

    def visit_Lambda(self, node: ast.Lambda) -> ast.AST:
        return self._stub(node)

    def _stub(self, node: _Fn) -> ast.AST:
        if node is self.root:
            self.generic_visit(node)
            return node
        return ast.Name(id=f"<def {getattr(node, 'name', '<lambda>')}>", ctx=ast.Load())


def _nested_reads(node: _Fn, cells: set[str]) -> list[str]:
    """The names of ``cells`` that code nested in ``node`` reads (its own code aside).

    Comprehensions count as nested code whatever the Python (before 3.12 they are);
    what a nested scope evaluates in ``node``'s own code does not: decorators,
    defaults, bases, a comprehension's first iterable.
    """
    found: set[str] = set()

    def visit(sub: ast.AST, inside: bool) -> None:
        if isinstance(sub, ast.Name):
            if inside and sub.id in cells:
                found.add(sub.id)
            return
        outer: list[ast.AST] = []
        inner: list[ast.AST] = []
        if isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            outer = [*sub.args.defaults, *(d for d in sub.args.kw_defaults if d is not None)]
            if isinstance(sub, ast.Lambda):
                inner = [sub.body]
            else:
                outer += sub.decorator_list
                inner = list(sub.body)
        elif isinstance(sub, ast.ClassDef):
            outer = [*sub.decorator_list, *sub.bases, *(k.value for k in sub.keywords)]
            inner = list(sub.body)
        elif isinstance(sub, ast.GeneratorExp | ast.ListComp | ast.SetComp | ast.DictComp):
            first = sub.generators[0]
            outer = [first.iter]
            inner = [first.target, *first.ifs, *sub.generators[1:]]
            inner += [sub.key, sub.value] if isinstance(sub, ast.DictComp) else [sub.elt]
        else:
            for child in ast.iter_child_nodes(sub):
                visit(child, inside)
            return
        for part in outer:
            visit(part, inside)
        for part in inner:
            visit(part, True)

    for part in [node.body] if isinstance(node, ast.Lambda) else node.body:
        visit(part, False)
    return sorted(found)


def _own_dump(node: _Fn) -> str:
    """``node`` dumped with its nested functions reduced to their names."""
    copied = copy.deepcopy(node)
    return ast.dump(_Stub(copied).visit(copied))


def _as_def(node: ast.Lambda, name: str, indent: int) -> str:
    """A lambda written as the ``def`` that replaces it."""
    pad = " " * indent
    return f"{pad}def {name}({ast.unparse(node.args)}):\n{pad}    return {ast.unparse(node.body)}\n"


def _with_global(source: str, node: _Def, indent: int) -> str:
    """``source`` with the ``nonlocal`` statements of ``node``'s own code made ``global``:
    in the patch file the function stands alone; the registry makes them its cells again."""
    lines = source.splitlines(True)
    for sub in _own(node):
        if isinstance(sub, ast.Nonlocal):
            row = sub.lineno - node.lineno
            col = sub.col_offset - node.col_offset + indent
            line = lines[row]
            if line[col : col + 8] == "nonlocal":
                lines[row] = f"{line[:col]}global{line[col + 8 :]}"
    return "".join(lines)


def _own(node: ast.AST) -> Iterator[ast.AST]:
    for sub in ast.iter_child_nodes(node):
        yield sub
        if not isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            yield from _own(sub)


def _compiled(text: str) -> dict[str, list[types.CodeType]] | None:
    """Every code object of the module by its qualname (None: it does not compile)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)
            code = compile(text, "<hotpatch make>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return None
    found: dict[str, list[types.CodeType]] = {}
    stack = [code]
    while stack:
        for const in stack.pop().co_consts:
            if isinstance(const, types.CodeType):
                found.setdefault(const.co_qualname, []).append(const)
                stack.append(const)
    return found


def _dump(node: ast.AST) -> str:
    return ast.dump(node)


def _dumps(nodes: list[ast.expr] | list[ast.expr | None]) -> list[str]:
    return [ast.dump(n) if n is not None else "" for n in nodes]
