"""The validator's rules: signatures (with a Hypothesis property), global names, class changes."""

from __future__ import annotations

import abc
import dis
import gc
import importlib.util
import inspect
import itertools
import sys
import types
import weakref
from dataclasses import dataclass, replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotpatch._classes import BOILERPLATE as CLASS_BOILERPLATE
from hotpatch._classes import class_reasons
from hotpatch._codegen import capture
from hotpatch._validate import (
    accepts_same_calls,
    applied_as,
    global_names,
    signature_problems,
)


def define(params: str, body: str = "return None", **namespace: Any) -> types.FunctionType:
    """A real function ``def f(<params>): <body>``, compiled from source."""
    exec(f"def f({params}):\n    {body}\n", namespace)
    func: types.FunctionType = namespace["f"]
    return func


def problems(old: str, new: str) -> list[str]:
    return signature_problems(inspect.signature(define(old)), inspect.signature(define(new)))


def calls_accepted(func: types.FunctionType, calls: list[tuple[int, tuple[str, ...]]]) -> set[Any]:
    """The calls ``(number of positional arguments, keyword names)`` that ``func`` binds."""
    accepted = set()
    for n, names in calls:
        try:
            func(*range(n), **dict.fromkeys(names, 0))
        except TypeError:
            continue
        accepted.add((n, names))
    return accepted


# -- signature_problems: each rule, breaking and kept --------------------------------------


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("a, b", "a, b"),
        ("a, b=1", "a, b=2"),
        ("a, b", "a, b=1"),  # a parameter may become optional
        ("a", "a, b=1"),  # a new parameter with a default
        ("a", "a, *, flag=False"),  # a new keyword-only parameter with a default
        ("a, /", "b, /"),  # a positional-only parameter may be renamed
        ("a, /", "a"),  # ... or become passable by name
        ("a", "*args, **kwargs"),  # the catch-all accepts everything
        ("a, b", "a, *args, **kw"),
        ("*args", "*rest"),  # the name of *args is not part of any call
        ("**kw", "**options"),
        ("*, key", "*, key=None"),
        ("*, key", "**kw"),
        ("a, *, key", "a, *, key, other=1"),
    ],
)
def test_compatible_signatures_have_no_problems(old: str, new: str) -> None:
    assert problems(old, new) == []


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("a, b", "a, c", "argument 2 'b' can be passed by name, but the replacement has 'c'"),
        ("a, b", "b, a", "argument 1 'a' can be passed by name, but the replacement has 'b'"),
        ("a, b", "a, b, /", "argument 1 'a' can be passed by name, but the replacement has 'a'"),
        ("a, b=1", "a, b", "argument 'b' is optional, but required in the replacement"),
        ("a=1, /", "a, /", "argument 'a' is optional, but required in the replacement"),
        ("a, b", "a", "argument 2 'b' is not accepted by the replacement"),
        ("a, /, b", "a, /, *, b", "argument 2 'b' is not accepted by the replacement"),
        ("*args", "a=1", "*args (extra positional arguments) is not accepted"),
        ("**kw", "a=1", "**kw (extra keyword arguments) is not accepted"),
        ("*, key", "*, other=1", "keyword argument 'key' is not accepted"),
        ("*, key", "key, /", "keyword argument 'key' is not accepted"),
        ("*, key=1", "*, key", "keyword 'key' is optional, but required in the replacement"),
        ("a", "a, b", "the replacement requires 'b', which callers do not pass"),
        ("a", "a, *, b", "the replacement requires 'b', which callers do not pass"),
        ("x=1", "*args, x", "the replacement requires 'x', which callers do not pass"),
        ("a", "*args", "argument 1 'a' can be passed by name, but the replacement takes it only"),
        ("a, /, *, k", "k, a=0", "a call with 1 positional argument and k=... would give"),
        ("a, /, **kw", "a, **kw", "would give the replacement's 'a' two values"),
    ],
)
def test_each_rule_names_what_breaks(old: str, new: str, expected: str) -> None:
    found = problems(old, new)
    assert any(expected in p for p in found), found
    # The rule is right: some call the original accepted is refused by the replacement.
    calls = [
        (n, names) for n in range(4) for names in _keyword_sets(("a", "b", "c", "k", "x", "key"))
    ]
    assert calls_accepted(define(old), calls) - calls_accepted(define(new), calls)


@pytest.mark.parametrize(
    ("old", "new", "call"),
    [
        # found by test_no_problems_means_every_call_still_binds
        ("a", "*args", (0, ("a",))),  # f(a=1): *args takes no names
        ("x=1", "*args, x", (0, ())),  # f(): x became a required keyword
        ("x=1", "*args, x", (1, ())),  # f(1): 1 went to *args, x is missing
        ("a, /, *, k", "k, a=0", (1, ("k",))),  # f(1, k=2): k twice
        ("a, /, **kw", "a, **kw", (1, ("a",))),  # f(1, a=2): a went to **kw, now twice
        ("a, /, s", "s, *args", (1, ("s",))),  # f(1, s=2): s twice
        ("*args, **kw", "a=0, *args, **kw", (1, ("a",))),  # f(1, a=2): a twice
    ],
)
def test_calls_that_would_break_are_found(
    old: str, new: str, call: tuple[int, tuple[str, ...]]
) -> None:
    assert calls_accepted(define(old), [call]) == {call}
    assert calls_accepted(define(new), [call]) == set()
    assert problems(old, new)


def _keyword_sets(names: tuple[str, ...]) -> list[tuple[str, ...]]:
    return [
        combo for size in range(len(names) + 1) for combo in itertools.combinations(names, size)
    ]


# -- generated signatures ---------------------------------------------------------------

NAMES = ("a", "b", "c", "d", "e")
KEYWORDS = (*NAMES, "zz")  # "zz" is never a parameter: only **kwargs takes it


@dataclass(frozen=True)
class Param:
    name: str
    kind: inspect._ParameterKind
    default: bool


@dataclass(frozen=True)
class Shape:
    params: tuple[Param, ...]
    star: str | None  # the name of *args, if any
    dstar: str | None  # the name of **kwargs, if any

    def source(self) -> str:
        parts: list[str] = []
        kind = inspect.Parameter
        posonly = [p for p in self.params if p.kind is kind.POSITIONAL_ONLY]
        pok = [p for p in self.params if p.kind is kind.POSITIONAL_OR_KEYWORD]
        kwonly = [p for p in self.params if p.kind is kind.KEYWORD_ONLY]
        parts.extend(_param(p) for p in posonly)
        if posonly:
            parts.append("/")
        parts.extend(_param(p) for p in pok)
        if self.star:
            parts.append(f"*{self.star}")
        elif kwonly:
            parts.append("*")
        parts.extend(_param(p) for p in kwonly)
        if self.dstar:
            parts.append(f"**{self.dstar}")
        return ", ".join(parts)

    def function(self) -> types.FunctionType:
        return define(self.source())


def _param(p: Param) -> str:
    return f"{p.name}=0" if p.default else p.name


_KINDS = (
    inspect.Parameter.POSITIONAL_ONLY,
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
    inspect.Parameter.KEYWORD_ONLY,
)


@st.composite
def shapes(draw: st.DrawFn) -> Shape:
    names = draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=4))
    params = [Param(n, draw(st.sampled_from(_KINDS)), draw(st.booleans())) for n in names]
    params.sort(key=lambda p: _KINDS.index(p.kind))  # posonly, then pok, then kwonly
    seen_default = False
    for i, p in enumerate(params):  # a positional default makes the later positional ones too
        if p.kind is inspect.Parameter.KEYWORD_ONLY:
            continue
        seen_default = seen_default or p.default
        params[i] = replace(p, default=seen_default)
    star = draw(st.sampled_from((None, "args", "rest")))
    dstar = draw(st.sampled_from((None, "kw", "options")))
    return Shape(tuple(params), star, dstar)


@st.composite
def loosened(draw: st.DrawFn, shape: Shape) -> Shape:
    """``shape`` with defaults added (to a suffix of the positional ones, and any keyword-only)."""
    positional = [p for p in shape.params if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    start = draw(st.integers(0, len(positional)))
    params = [
        replace(p, default=True)
        if (p.kind is inspect.Parameter.KEYWORD_ONLY and draw(st.booleans()))
        or (p in positional and positional.index(p) >= start)
        else p
        for p in shape.params
    ]
    return replace(shape, params=tuple(params))


@given(st.data())
@settings(max_examples=300, deadline=None)
def test_the_fast_path_never_accepts_what_signature_problems_refuses(data: st.DataObject) -> None:
    old = data.draw(shapes(), label="old")
    loosen = data.draw(st.booleans(), label="loosen")
    new = data.draw(loosened(old) if loosen else shapes(), label="new")
    old_func, new_func = old.function(), new.function()
    fast = accepts_same_calls(capture(old_func), new_func)
    if fast:
        assert signature_problems(inspect.signature(old_func), inspect.signature(new_func)) == []
    if loosen:  # the same parameters, optional where they were: the fast path takes it
        assert fast


@given(old=shapes(), new=shapes())
@settings(max_examples=400, deadline=None)
def test_no_problems_means_every_call_still_binds(old: Shape, new: Shape) -> None:
    """The contract (SPEC 4): refuse a replacement that cannot accept every call the old one did."""
    found = signature_problems(inspect.signature(old.function()), inspect.signature(new.function()))
    if found:
        return
    calls = [(n, names) for n in range(len(old.params) + 3) for names in _keyword_sets(KEYWORDS)]
    lost = calls_accepted(old.function(), calls) - calls_accepted(new.function(), calls)
    assert not lost, f"def f({old.source()}) -> def f({new.source()}) breaks {sorted(lost)[:3]}"


def test_the_fast_path_looks_closer_at_wrapped_or_signed_replacements() -> None:
    old = define("a, b")
    new = define("a, b")
    assert accepts_same_calls(capture(old), new)
    new.__wrapped__ = define("x")
    assert not accepts_same_calls(capture(old), new)
    signed = define("a, b")
    signed.__signature__ = inspect.signature(define("x"))
    assert not accepts_same_calls(capture(old), signed)


@pytest.mark.parametrize(
    ("old", "new", "fast"),
    [
        ("a, b=1", "a, b=1", True),
        ("a, b=1", "a=0, b=1", True),
        ("a, b=1", "a, b", False),  # a default lost
        ("a, b", "a, c", False),  # a name changed
        ("a, *args", "a, *rest", False),  # even a harmless rename: look closer
        ("a, *, k=1", "a, *, k", False),
        ("a, *, k", "a, *, k=1", True),
        ("a, /, b", "a, b", False),  # a kind changed
        ("a", "a, **kw", False),
    ],
)
def test_the_fast_path_cases(old: str, new: str, fast: bool) -> None:
    assert accepts_same_calls(capture(define(old)), define(new)) is fast
    if fast:
        assert problems(old, new) == []


# -- global_names -------------------------------------------------------------------------


def test_global_names_are_the_globals_a_function_and_its_nested_code_look_up() -> None:
    source = """\
def f(arg):
    local = helper(arg) + len(CONSTANT)
    def inner():
        return inner_only(local)
    squares = [transform(x) for x in arg]
    lam = lambda: from_lambda
    class Nested:
        attr = in_class_body
        def method(self):
            return in_method.attribute
    global counter, gone
    counter = 1
    del gone
    return local, inner, squares, lam, Nested, arg.not_a_global
"""
    namespace: dict[str, Any] = {}
    exec(source, namespace)
    names = global_names(namespace["f"].__code__)
    expected = {
        "helper",
        "len",
        "CONSTANT",
        "inner_only",
        "transform",
        "from_lambda",
        "in_class_body",
        "in_method",
        "counter",
        "gone",
    }
    assert expected <= names
    # locals, arguments, free variables and attributes are not global look-ups
    assert not names & {"arg", "local", "inner", "squares", "lam", "x", "self", "attribute"}
    assert "not_a_global" not in names
    assert names - expected <= {"Nested", "__name__"}  # class bodies read __name__


def test_global_names_of_a_closure_leave_out_its_free_variables() -> None:
    def outer() -> Any:
        captured = 1

        def inner() -> int:
            return captured + uses_global  # noqa: F821

        return inner

    assert global_names(outer().__code__) == {"uses_global"}


def _looked_up_by_dis(code: types.CodeType) -> set[str]:
    """The oracle: the global look-ups ``dis`` decodes, in ``code`` and the code nested in it."""
    ops = {"LOAD_GLOBAL", "LOAD_NAME", "STORE_GLOBAL", "DELETE_GLOBAL"}
    names = {i.argval for i in dis.get_instructions(code) if i.opname in ops}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _looked_up_by_dis(const)
    return names


@pytest.mark.parametrize(
    "module", ["argparse", "dataclasses", "enum", "email.message", "inspect", "typing"]
)
def test_global_names_are_those_dis_decodes_in_code_nobody_here_wrote(module: str) -> None:
    """The scan reads the bytecode itself (``dis`` builds an object per instruction, a third of
    an apply's time); on every code object of a stdlib module, module level included (long
    ones need EXTENDED_ARG), it finds what ``dis`` finds."""
    path = importlib.util.find_spec(module).origin  # type: ignore[union-attr]
    assert path is not None
    with open(path, encoding="utf-8") as f:
        top = compile(f.read(), path, "exec")
    codes = [top]
    for code in codes:
        codes.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
        assert global_names(code) == _looked_up_by_dis(code), code.co_qualname
    assert len(codes) > 50


def test_global_names_keep_nothing_of_the_code_they_read() -> None:
    """Each apply asks for the names of its replacement's code, which no later apply
    shares: a cache of them kept every patch's code alive in the service (before,
    ``global_names`` was an ``lru_cache`` of 4,096 code objects, never hit in a burst)."""
    func = define("x", "return helper(x)")
    code = weakref.ref(func.__code__)
    assert global_names(func.__code__) == frozenset({"helper"})
    assert global_names(define("x", "return x").__code__) == frozenset()
    del func
    gc.collect()
    assert code() is None


# -- class_reasons ------------------------------------------------------------------------


class Base:
    pass


class Other:
    pass


class Meta(type):
    pass


def _cls(body: str, bases: str = "", **namespace: Any) -> type:
    exec(f"class C{bases}:\n    {body}\n", namespace)
    cls: type = namespace["C"]
    return cls


def test_class_reasons_finds_nothing_for_method_changes_and_additions() -> None:
    old = _cls("def m(self): return 1\n    x = 1")
    new = _cls("def m(self): return 2\n    def added(self): return 3\n    x = 2\n    y = 3")
    assert class_reasons(old, new) == []


def test_class_reasons_names_a_change_of_bases() -> None:
    old = _cls("pass", "(Base)", Base=Base)
    new = _cls("pass", "(Base, Other)", Base=Base, Other=Other)
    (reason,) = class_reasons(old, new)
    assert "bases change from (Base) to (Base, Other)" in reason
    assert f"class {old.__module__}:C" in reason


def test_class_reasons_names_a_change_of_metaclass() -> None:
    old = _cls("pass")
    new = _cls("pass", "(metaclass=Meta)", Meta=Meta)
    assert class_reasons(old, new) == [
        f"class {old.__module__}:C: metaclass changes from type to Meta"
    ]
    abstract = _cls("pass", "(metaclass=abc.ABCMeta)", abc=abc)
    assert "metaclass changes from type to ABCMeta" in class_reasons(old, abstract)[0]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("__slots__ = ('a',)", "__slots__ = ('a', 'b')"),
        ("pass", "__slots__ = ()"),
        ("__slots__ = ()", "pass"),
    ],
)
def test_class_reasons_names_a_change_of_slots(old: str, new: str) -> None:
    (reason,) = class_reasons(_cls(old), _cls(new))
    assert "__slots__ change from " in reason
    assert "(the layout of existing instances cannot change hot)" in reason


def test_class_reasons_accepts_the_same_slots() -> None:
    assert class_reasons(_cls("__slots__ = ('a',)"), _cls("__slots__ = ('a',)")) == []


@pytest.mark.parametrize(
    ("old", "new", "change"),
    [
        ("def m(self): pass", "m = property(lambda self: 1)",
         "m changes from a function to a property"),
        ("@classmethod\n    def m(cls): pass", "@staticmethod\n    def m(): pass",
         "m changes from a classmethod to a staticmethod"),
        ("def m(self): pass", "m = 1", "m changes from a function to a value"),
        ("m = 1", "def m(self): pass", "m changes from a value to a function"),
    ],
)  # fmt: skip
def test_class_reasons_names_a_member_that_changes_kind(old: str, new: str, change: str) -> None:
    (reason,) = class_reasons(_cls(old), _cls(new))
    assert reason.endswith(change)


def test_class_reasons_ignores_boilerplate_and_removed_members() -> None:
    old = _cls('"""Old doc."""\n    def gone(self): pass\n    __annotations__ = {}')
    new = _cls('"""New doc."""\n    x: int')
    assert class_reasons(old, new) == []
    assert {"__doc__", "__module__", "__qualname__", "__dict__"} <= CLASS_BOILERPLATE
    if sys.version_info >= (3, 13):
        assert {"__firstlineno__", "__static_attributes__"} <= CLASS_BOILERPLATE


# -- applied_as: is a dropped file a patch the process runs already? ---------------------


def test_applied_as_same_version_same_content_other_content_and_absent(write_patch):
    import hotpatch

    path = write_patch(
        "from hotpatch import Patch\npatch = Patch(version='1.0.1', baseline='1.0')\n"
    )
    patch = hotpatch.load_patch(path)
    assert applied_as([patch], "1.0.1", patch.sha256) is patch
    assert applied_as([patch], "1.0.1.0", patch.sha256) is patch  # PEP 440 equality
    assert applied_as([patch], "1.0.2", patch.sha256) is None
    assert applied_as([], "1.0.1", patch.sha256) is None
    with pytest.raises(hotpatch.VerificationFailed, match="already applied with other content"):
        applied_as([patch], "1.0.1", "0" * 64)
