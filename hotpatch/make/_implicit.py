"""The special methods Python calls where no call is written.

``TOTAL = Money(1) + Money(2)`` runs ``Money.__add__`` (and, were it refused,
``Money.__radd__``); ``for x in Table()`` runs ``__iter__`` and ``__next__``; ``f"{a}"``
runs ``__format__``; ``{key: 1}`` runs ``key.__hash__``; ``with Lock():`` runs
``__enter__`` and ``__exit__``. ``implicit`` says, for one node of running code, which
operands have which methods called on them. Which class each operand is, and so which
function runs, is for the caller to find (see _runs). Attribute access (a property's
getter, a descriptor's ``__get__``) is the caller's too: it needs the class's members.
Everything here reads the ``ast``; nothing is imported or run.
"""

from __future__ import annotations

import ast
from collections.abc import Callable

__all__ = ["BUILTIN_CALLS", "Implicit", "implicit"]

# (an operand, the methods that may run on it, the words saying what runs them)
Implicit = tuple[ast.expr, tuple[str, ...], str]

_BINARY: dict[type[ast.operator], str] = {
    ast.Add: "add",
    ast.Sub: "sub",
    ast.Mult: "mul",
    ast.MatMult: "matmul",
    ast.Div: "truediv",
    ast.FloorDiv: "floordiv",
    ast.Mod: "mod",
    ast.Pow: "pow",
    ast.LShift: "lshift",
    ast.RShift: "rshift",
    ast.BitOr: "or",
    ast.BitXor: "xor",
    ast.BitAnd: "and",
}
# a comparison's method on its left operand, and the reflected one on its right
_COMPARE: dict[type[ast.cmpop], tuple[tuple[str, ...], tuple[str, ...]]] = {
    ast.Eq: (("__eq__",), ("__eq__",)),
    ast.NotEq: (("__ne__", "__eq__"), ("__ne__", "__eq__")),
    ast.Lt: (("__lt__",), ("__gt__",)),
    ast.LtE: (("__le__",), ("__ge__",)),
    ast.Gt: (("__gt__",), ("__lt__",)),
    ast.GtE: (("__ge__",), ("__le__",)),
}
_UNARY: dict[type[ast.unaryop], tuple[str, ...]] = {
    ast.USub: ("__neg__",),
    ast.UAdd: ("__pos__",),
    ast.Invert: ("__invert__",),
    ast.Not: ("__bool__", "__len__"),
}
_TRUTH = ("__bool__", "__len__")
_ITER = ("__iter__", "__next__", "__getitem__", "__len__")
_CONTAINS = ("__contains__", *_ITER)
_HASH = ("__hash__", "__eq__")
_STR = ("__str__", "__repr__")
_FORMAT = ("__format__", *_STR)
_ORDER = ("__lt__", "__gt__")
# A builtin called on an object of the project runs these of its methods.
BUILTIN_CALLS: dict[str, tuple[str, ...]] = {
    "str": _STR,
    "repr": ("__repr__",),
    "ascii": ("__repr__",),
    "format": _FORMAT,
    "print": _STR,
    "int": ("__int__", "__index__", "__trunc__"),
    "float": ("__float__", "__index__"),
    "complex": ("__complex__", "__float__", "__index__"),
    "bool": _TRUTH,
    "len": ("__len__",),
    "hash": ("__hash__",),
    "abs": ("__abs__",),
    "round": ("__round__",),
    "divmod": ("__divmod__", "__rdivmod__"),
    "pow": ("__pow__", "__rpow__"),
    "bytes": ("__bytes__", "__index__", *_ITER),
    "hex": ("__index__",),
    "oct": ("__index__",),
    "bin": ("__index__",),
    "iter": _ITER,
    "next": ("__next__",),
    "reversed": ("__reversed__", "__len__", "__getitem__"),
    "list": _ITER,
    "tuple": _ITER,
    "enumerate": _ITER,
    "zip": _ITER,
    "map": _ITER,
    "filter": _ITER,
    "any": (*_ITER, *_TRUTH),
    "all": (*_ITER, *_TRUTH),
    "sum": (*_ITER, "__add__", "__radd__"),
    "sorted": (*_ITER, *_ORDER),
    "min": (*_ITER, *_ORDER),
    "max": (*_ITER, *_ORDER),
    "set": (*_ITER, *_HASH),
    "frozenset": (*_ITER, *_HASH),
    "dict": (*_ITER, *_HASH, "keys"),
    "dir": ("__dir__",),
    "isinstance": ("__instancecheck__",),
    "issubclass": ("__subclasscheck__",),
}


def implicit(node: ast.AST) -> list[Implicit]:
    """The operands of ``node`` that Python calls special methods of, and which: the
    node's own doing only (its parts are nodes of their own)."""
    rule = _RULES.get(type(node))
    if rule is None:  # most nodes: a name, a constant, a call, an attribute
        return []
    return [(operand, names, said) for operand, names, said in rule(node) if _may_run(operand)]


def _operators(node: ast.AST) -> list[Implicit]:
    out: list[Implicit] = []
    if isinstance(node, ast.BinOp):
        name = _BINARY[type(node.op)]
        out.append((node.left, (f"__{name}__",), "an operator"))
        right: tuple[str, ...] = (f"__r{name}__",)
        if isinstance(node.op, ast.Mod):  # "%s" % obj formats obj
            right += _FORMAT
            out += _formatted(node.right)
        out.append((node.right, right, "an operator"))
    elif isinstance(node, ast.AugAssign):
        name = _BINARY[type(node.op)]
        said = "an augmented assignment"
        out.append((node.target, (f"__i{name}__", f"__{name}__"), said))
        out.append((node.value, (f"__r{name}__",), said))
        if isinstance(node.target, ast.Subscript):
            out.append((node.target.value, ("__getitem__", "__missing__"), said))
    elif isinstance(node, ast.Compare):
        left = node.left
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            said = "a comparison"
            if isinstance(op, ast.In | ast.NotIn):
                out.append((comparator, _CONTAINS, said))
                out.append((left, ("__eq__",), said))
                if isinstance(comparator, ast.List | ast.Tuple | ast.Set):
                    out += [(e, _HASH, said) for e in comparator.elts]
            elif type(op) in _COMPARE:
                mine, theirs = _COMPARE[type(op)]
                out += [(left, mine, said), (comparator, theirs, said)]
            left = comparator
    elif isinstance(node, ast.UnaryOp):
        out.append((node.operand, _UNARY[type(node.op)], "an operator"))
    elif isinstance(node, ast.BoolOp):
        out += [(v, _TRUTH, "a truth test") for v in node.values]
    return out


def _formatted(values: ast.expr) -> list[Implicit]:
    """``"%s %s" % (a, b)`` formats a and b; ``"%(a)s" % {"a": a}`` formats a."""
    if isinstance(values, ast.Tuple):
        return [(e, _FORMAT, "an operator") for e in values.elts]
    if isinstance(values, ast.Dict):
        return [(v, _FORMAT, "an operator") for v in values.values]
    return []


def _containers(node: ast.AST) -> list[Implicit]:
    out: list[Implicit] = []
    if isinstance(node, ast.Subscript):
        said = "a subscript"
        names: tuple[str, ...] = (
            ("__getitem__", "__missing__", "__class_getitem__")
            if isinstance(node.ctx, ast.Load)
            else ("__setitem__",)
            if isinstance(node.ctx, ast.Store)
            else ("__delitem__",)
        )
        out += [(node.value, names, said), (node.slice, ("__hash__", "__index__"), said)]
    elif isinstance(node, ast.Dict):
        said = "a dict's key"
        out += [(k, _HASH, said) for k in node.keys if k is not None]
        unpacked = [v for k, v in zip(node.keys, node.values, strict=True) if k is None]
        out += [(v, ("keys", "__getitem__"), "an unpacking") for v in unpacked]
    elif isinstance(node, ast.Set):
        out += [(e, _HASH, "a set's item") for e in node.elts]
    elif isinstance(node, ast.DictComp):
        out.append((node.key, _HASH, "a dict's key"))
    elif isinstance(node, ast.SetComp):
        out.append((node.elt, _HASH, "a set's item"))
    elif isinstance(node, ast.FormattedValue):
        conversion = chr(node.conversion) if node.conversion > 0 else ""
        names = {"r": ("__repr__",), "s": _STR, "a": ("__repr__",)}.get(conversion, _FORMAT)
        out.append((node.value, names, "an f-string"))
    elif isinstance(node, ast.Slice):  # items[Pos():] runs Pos.__index__
        bounds = (node.lower, node.upper, node.step)
        out += [(b, ("__index__",), "a slice") for b in bounds if b is not None]
    elif isinstance(node, ast.Starred) and isinstance(node.ctx, ast.Load):
        out.append((node.value, _ITER, "an unpacking"))
    elif isinstance(node, ast.keyword) and node.arg is None:
        out.append((node.value, ("keys", "__getitem__"), "an unpacking"))
    return out


def _statements(node: ast.AST) -> list[Implicit]:
    out: list[Implicit] = []
    if isinstance(node, ast.For | ast.comprehension):
        out.append((node.iter, _ITER, "a loop"))
        if isinstance(node, ast.comprehension):
            out += [(test, _TRUTH, "a truth test") for test in node.ifs]
    elif isinstance(node, ast.Assign | ast.AnnAssign):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        if node.value is not None and any(isinstance(t, ast.Tuple | ast.List) for t in targets):
            out.append((node.value, _ITER, "an unpacking"))
    elif isinstance(node, ast.With):
        out += [(i.context_expr, ("__enter__", "__exit__"), "a `with`") for i in node.items]
    elif isinstance(node, ast.If | ast.While | ast.IfExp | ast.Assert):
        out.append((node.test, _TRUTH, "a truth test"))
    return out


_RULES: dict[type[ast.AST], Callable[[ast.AST], list[Implicit]]] = {
    **dict.fromkeys((ast.BinOp, ast.AugAssign, ast.Compare, ast.UnaryOp, ast.BoolOp), _operators),
    **dict.fromkeys(
        (ast.Subscript, ast.Dict, ast.Set, ast.DictComp, ast.SetComp, ast.FormattedValue),
        _containers,
    ),
    **dict.fromkeys((ast.Starred, ast.keyword, ast.Slice), _containers),
    **dict.fromkeys(
        (ast.For, ast.comprehension, ast.Assign, ast.AnnAssign, ast.With, ast.If, ast.While),
        _statements,
    ),
    **dict.fromkeys((ast.IfExp, ast.Assert), _statements),
}


def _may_run(operand: ast.expr) -> bool:
    """Whether ``operand`` may be an object of the project: not a literal of a builtin type
    (``1``, ``"a"``, ``[x]``: a list's own methods are list's whatever it holds)."""
    return not isinstance(
        operand,
        ast.Constant
        | ast.JoinedStr
        | ast.List
        | ast.Tuple
        | ast.Dict
        | ast.Set
        | ast.ListComp
        | ast.SetComp
        | ast.DictComp
        | ast.GeneratorExp
        | ast.Slice
        | ast.Lambda,
    )
