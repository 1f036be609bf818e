"""A Hypothesis property over class shapes: ``check()``'s verdict is what ``apply()`` does.

Generated: a class (plain, ``__slots__``, dataclass, dataclass with slots, or
an enum) with methods, static and class methods, properties and class
attributes; a patch class that changes, removes, adds or re-kinds members,
changes the slot list, the dataclass fields or the enum members; the class may
be made from a base whose ``__init_subclass__`` records every class made, or by
a metaclass whose ``__init__`` does, or from ``abc.ABC``. For each:
``check()`` hot means ``apply()`` applies and the new code runs through an
instance made before (and rollback restores it); not hot means ``apply()``
raises ``RestartRequired`` with the same reasons and changes nothing. The
verdict is also held to a model of SPEC §11: only a layout or member-kind
change is not hot, and class data given another value than the running class
holds is refused by both (``NameConflict``: it may be state). A class whose
patch class would run a hook of the project is refused before the hook runs
(``load_patch`` raises ``NotPatchable``), and built in code (the hook ran) it is
refused by ``check()`` and ``apply()`` alike. Function
targets (a def, a lambda, under a ``functools.wraps`` decorator, ``lru_cache``,
``contextmanager``, a singledispatch ``registry[int]``) are gone through
exhaustively: each x a replacement written plain, under the target's
decorators or under others x the same or a widened signature.
"""

from __future__ import annotations

import dataclasses
import enum
import textwrap
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hotpatch

SHAPES = ("plain", "slots", "dataclass", "dataclass-slots", "enum")
KINDS = ("method", "static", "class", "property", "value")
OPS = ("keep", "change", "drop", "rekind")
HOOKS = ("none", "init_subclass", "metaclass", "abc")


@dataclass(frozen=True)
class Shape:
    shape: str
    members: tuple[str, ...]  # the kind of member i (named m0, m1, ...)
    ops: tuple[str, ...]  # what the patch does to member i
    new_kinds: tuple[str, ...]  # the kind a "rekind" gives member i
    added: tuple[str, ...]  # kinds of members the patch adds (n0, n1, ...)
    layout_change: bool  # slots, dataclass fields or enum members change
    hook: str = "none"  # what making the class runs (HOOKS)

    @property
    def hooked(self) -> bool:
        """Making the patch class would run a hook of the project: refused before it runs."""
        return self.hook in ("init_subclass", "metaclass")

    @property
    def hot(self) -> bool:
        """SPEC §11's verdict: hot unless the layout or a member's kind changes (if not refused)."""
        rekinded = any(
            op == "rekind" and self.new_kinds[i] != self.members[i] for i, op in enumerate(self.ops)
        )
        return not (rekinded or self.layout_change)

    @property
    def conflict(self) -> bool:
        """Class data given another value: refused (``NameConflict``), hot or not."""
        return any(
            kind == "value"
            and (op == "change" or (op == "rekind" and self.new_kinds[i] == "value"))
            for i, (kind, op) in enumerate(zip(self.members, self.ops, strict=True))
        )


shapes = st.builds(
    lambda *args: _shape(*args),  # noqa: PLW0108 - _shape is defined below
    st.sampled_from(SHAPES),
    st.lists(st.sampled_from(KINDS), min_size=1, max_size=4),
    st.data(),
)


def _shape(shape: str, members: list[str], data: st.DataObject) -> Shape:
    n = len(members)
    ops = data.draw(st.lists(st.sampled_from(OPS), min_size=n, max_size=n))
    new_kinds = data.draw(st.lists(st.sampled_from(KINDS), min_size=n, max_size=n))
    added = data.draw(st.lists(st.sampled_from(KINDS[:4]), max_size=2))
    layout = data.draw(st.booleans()) if shape != "plain" else False
    hook = data.draw(st.sampled_from(HOOKS if shape != "enum" else HOOKS[:3]))
    return Shape(shape, tuple(members), tuple(ops), tuple(new_kinds), tuple(added), layout, hook)


def _member(name: str, kind: str, tag: str) -> str:
    if kind == "method":
        return f"def {name}(self):\n    return {tag!r}\n"
    if kind == "static":
        return f"@staticmethod\ndef {name}():\n    return {tag!r}\n"
    if kind == "class":
        return f"@classmethod\ndef {name}(cls):\n    return {tag!r}\n"
    if kind == "property":
        return f"@property\ndef {name}(self):\n    return {tag!r}\n"
    if kind == "value":
        return f"{name} = {tag!r}\n"
    raise AssertionError(kind)


def _class(shape: Shape, body: list[str], *, patched: bool) -> str:
    layout = shape.layout_change and patched
    head = {"dataclass": "@dataclass\n", "dataclass-slots": "@dataclass(slots=True)\n"}
    bases = ["enum.Enum"] if shape.shape == "enum" else []
    if shape.hook == "init_subclass":
        bases = ["Base"] if shape.shape == "enum" else ["Base", *bases]
    elif shape.hook == "metaclass":
        bases.append("metaclass=Meta")
    elif shape.hook == "abc":
        bases.append("abc.ABC")
    lines = [f"class C({', '.join(bases)}):"]
    if shape.shape == "slots":
        lines.append("    __slots__ = ('a', 'b')" if layout else "    __slots__ = ('a',)")
    elif shape.shape.startswith("dataclass"):
        lines.append("    a: int = 0")
        if layout:
            lines.append("    b: int = 0")
    elif shape.shape == "enum":
        lines.append("    X = 'x'")
        if layout:
            lines.append("    Y = 'y'")
    lines.extend(textwrap.indent(b, "    ") for b in body)
    return head.get(shape.shape, "") + "\n".join(lines) + "\n"


def sources(shape: Shape) -> tuple[str, str]:
    """(the module, the patch class) for ``shape``."""
    kinds = list(shape.members)
    if shape.shape == "enum":  # a value in an enum body is a member: keep them methods
        kinds = ["method" if k == "value" else k for k in kinds]
    old = [_member(f"m{i}", k, f"old{i}") for i, k in enumerate(kinds)]
    new: list[str] = []
    for i, (kind, op) in enumerate(zip(kinds, shape.ops, strict=True)):
        if op == "drop":
            continue
        now = shape.new_kinds[i] if op == "rekind" else kind
        if shape.shape == "enum" and now == "value":
            now = "method"
        new.append(_member(f"m{i}", now, f"new{i}" if op != "keep" else f"old{i}"))
    new.extend(_member(f"n{i}", k, f"add{i}") for i, k in enumerate(shape.added))
    if shape.shape == "slots":
        init = "def __init__(self):\n    self.a = 1\n"
        old.insert(0, init)
    module = "import abc\nimport enum\nfrom dataclasses import dataclass\n\n" + _hooks(shape)
    module += _class(shape, old, patched=False)
    patch_class = _class(shape, new or ["pass\n"], patched=True)
    return module, patch_class


def _hooks(shape: Shape) -> str:
    """What the module makes its class from: a base or a metaclass recording every class made."""
    if shape.hook == "init_subclass":
        base = "enum.Enum" if shape.shape == "enum" else ""
        return (
            f"MADE = []\nclass Base({base}):\n    def __init_subclass__(cls, **kw):\n"
            "        super().__init_subclass__(**kw)\n        MADE.append(cls.__name__)\n\n"
        )
    if shape.hook == "metaclass":
        meta = "enum.EnumMeta" if shape.shape == "enum" else "type"
        return (
            f"MADE = []\nclass Meta({meta}):\n    def __init__(cls, *args, **kw):\n"
            "        super().__init__(*args, **kw)\n        MADE.append(cls.__name__)\n\n"
        )
    return ""


def effective(shape: Shape) -> Shape:
    """``shape`` as the sources build it (an enum has no plain values)."""
    if shape.shape != "enum":
        return shape
    fix = tuple("method" if k == "value" else k for k in shape.members)
    kinds = tuple("method" if k == "value" else k for k in shape.new_kinds)
    return Shape(shape.shape, fix, shape.ops, kinds, shape.added, shape.layout_change, shape.hook)


def read(instance: Any, cls: type, name: str, kind: str) -> Any:
    """What member ``name`` gives through an instance (and the class) made before."""
    value = getattr(instance, name)
    if kind in ("method", "static", "class"):
        return value()
    return value


def reads(instance: Any, cls: type, shape: Shape) -> dict[str, Any]:
    return {f"m{i}": read(instance, cls, f"m{i}", k) for i, k in enumerate(shape.members)}


def data(instance: Any, cls: type) -> Any:
    """What an instance made before holds: its slot or field, or (an enum) its member."""
    if isinstance(cls, type) and issubclass(cls, enum.Enum):
        return (cls("x") is instance, instance.value, [m.name for m in cls])
    instance.a = 5
    return (instance.a, repr(instance) if dataclasses.is_dataclass(cls) else None)


HEADER = "from hotpatch import Patch\nimport abc\nimport enum\nfrom dataclasses import dataclass\n"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(shape=shapes)
def test_check_says_what_apply_does(
    shape: Shape,
    make_module: Callable[[str], types.ModuleType],
    write_patch: Callable[..., Path],
) -> None:
    shape = effective(shape)
    module_source, patch_class = sources(shape)
    mod = make_module(module_source)
    cls = mod.C
    instance = cls.X if shape.shape == "enum" else cls()
    text = (
        HEADER
        + (f"from {mod.__name__} import *\n" if shape.hooked else "")
        + "patch = Patch(version='1.0.1', baseline='1.0')\n"
        + f"@patch.replace_class('{mod.__name__}:C')\n"
        + patch_class
    )
    data_before = data(instance, cls)
    before = reads(instance, cls, shape)
    registry = hotpatch.Registry("1.0")
    if shape.hooked:
        made = list(mod.MADE)
        with pytest.raises(hotpatch.NotPatchable, match="would run when the patch file is"):
            hotpatch.load_patch(write_patch(text))
        assert made == mod.MADE  # refused before the hook ran
        namespace: dict[str, Any] = {}
        exec(compile(text, "<in code>", "exec"), namespace)  # built in code: the hook runs
        twice = shape.shape == "dataclass-slots"  # made again with its slots
        assert [*made, *["C"] * (2 if twice else 1)] == mod.MADE, mod.MADE
        for attempt in (registry.check, registry.apply):
            with pytest.raises(hotpatch.NotPatchable, match="ran when the patch class was made"):
                attempt(namespace["patch"])
        assert registry.level == ()
        assert reads(instance, cls, shape) == before
        return
    patch = hotpatch.load_patch(write_patch(text))
    if shape.conflict:
        for attempt in (registry.check, registry.apply):
            with pytest.raises(hotpatch.NameConflict, match="never overwrites class data"):
                attempt(patch)
        assert registry.level == ()
        assert reads(instance, cls, shape) == before
        return
    report = registry.check(patch)
    assert report.hot is shape.hot, (report.reasons, module_source, patch_class)
    if not report.hot:
        with pytest.raises(hotpatch.RestartRequired) as info:
            registry.apply(patch)
        assert info.value.reasons == report.reasons
        assert registry.level == ()
        assert {
            n: read(instance, cls, n, k) for n, k in zip(before, shape.members, strict=True)
        } == before
        return
    registry.apply(patch)
    try:
        assert mod.C is cls
        assert data(instance, cls) == data_before  # slots, fields and members still work
        for i, (kind, op) in enumerate(zip(shape.members, shape.ops, strict=True)):
            expected = {"keep": f"old{i}", "change": f"new{i}", "drop": f"old{i}"}.get(
                op, f"new{i}"
            )
            assert read(instance, cls, f"m{i}", kind) == expected, (i, kind, op)
        for i, kind in enumerate(shape.added):
            assert read(instance, cls, f"n{i}", kind) == f"add{i}"
    finally:
        registry.rollback()
    assert {
        n: read(instance, cls, n, k) for n, k in zip(before, shape.members, strict=True)
    } == before
    for i in range(len(shape.added)):
        assert not hasattr(cls, f"n{i}")


# -- functions: every target kind x how the replacement is written -------------------------

FUNCTIONS = """
import contextlib
import functools

def logged(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)
    return wrapper

def timed(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)
    return wrapper

def f_def(x):
    return "old"

f_lambda = lambda x: "old"  # noqa: E731

@logged
def f_wraps(x):
    return "old"

@functools.lru_cache(maxsize=None)
def f_cache(x):
    return "old"

@contextlib.contextmanager
def f_cm(x):
    yield "old"

@functools.singledispatch
def show(x):
    return "any"

@show.register
def _(x: int):
    return "old"
"""
# target kind -> (target, the decorators it runs under, as written in the module)
TARGETS = {
    "def": ("f_def", ""),
    "lambda": ("f_lambda", ""),
    "wraps": ("f_wraps", "@logged"),
    "lru_cache": ("f_cache", "@functools.lru_cache(maxsize=None)"),
    "contextmanager": ("f_cm", "@contextlib.contextmanager"),
    "registry[int]": ("show.registry[int]", ""),
}
WRITTEN = ("plain", "same", "other")


def _call(kind: str, function: Any) -> Any:
    return function(2).__enter__() if kind == "contextmanager" else function(2)


CASES = [
    (kind, written, widened) for kind in TARGETS for written in WRITTEN for widened in (False, True)
]


@pytest.mark.parametrize(
    "case", CASES, ids=[f"{k}-{w}-{'widened' if x else 'same'}" for k, w, x in CASES]
)
def test_check_says_what_apply_does_for_function_targets(
    case: tuple[str, str, bool],
    make_module: Callable[[str], types.ModuleType],
    write_patch: Callable[..., Path],
    registry: hotpatch.Registry,
) -> None:
    """``check()`` hot means ``apply()`` runs the new code through the reference taken
    before and rollback restores it; a refusal is the same error from both, nothing
    changed. The model: refused only when a decorated target's replacement is written
    under other decorators than the target's."""
    kind, written, widened = case
    mod = make_module(FUNCTIONS)
    target, decorators = TARGETS[kind]
    ref = mod.show if kind == "registry[int]" else getattr(mod, target)  # taken before
    before = _call(kind, ref)
    decorator = {
        "plain": "",
        "same": decorators,
        "other": "@timed" if decorators == "@logged" else "@logged",
    }[written]
    params = "x, extra=0" if widened else "x"
    body = 'yield "new"' if kind == "contextmanager" else 'return "new"'
    text = (
        "import contextlib\nimport functools\n"
        f"from {mod.__name__} import logged, timed\n"
        "from hotpatch import Patch\npatch = Patch(version='1.0.1', baseline='1.0')\n"
        f'@patch.replace("{mod.__name__}:{target}")\n{decorator}\n'
        f"def replacement({params}):\n    {body}\n"
    )
    patch = hotpatch.load_patch(write_patch(text))
    refused = written == "other" and bool(decorators)
    if refused:
        for attempt in (registry.check, registry.apply):
            with pytest.raises(hotpatch.VerificationFailed) as info:
                attempt(patch)
            assert info.value.target == f"{mod.__name__}:{target}"
        assert registry.level == ()
        assert _call(kind, ref) == before
        return
    report = registry.check(patch)
    assert report.hot, report.reasons
    registry.apply(patch)
    assert _call(kind, ref) == "new"
    registry.rollback()
    assert _call(kind, ref) == before
