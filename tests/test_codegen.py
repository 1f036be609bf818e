"""Inline vs forward code, closures, and whole-class targets (``replace_class``)."""

from __future__ import annotations

import asyncio
import builtins
import inspect
import textwrap
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import hotpatch
from hotpatch._codegen import _KIND_FLAGS as KIND_FLAGS
from hotpatch._codegen import chooser

PatchWriter = Callable[..., Path]
HEADER = "from hotpatch import Patch\npatch = Patch(version={version!r}, baseline='1.0')\n"


def load(write_patch: PatchWriter, body: str, version: str = "1.0.1") -> hotpatch.Patch:
    """A real patch file: the standard header, then ``body`` (dedented)."""
    return hotpatch.load_patch(write_patch(HEADER.format(version=version) + textwrap.dedent(body)))


# -- which mode -----------------------------------------------------------------------


def test_modes_inline_and_forward(make_module, write_patch, registry):
    mod = make_module(
        """
        def same(a, b=1):
            return a + b

        def widened(a, b=1):
            return a + b

        def closing(a):
            return a
        """
    )
    name = mod.__name__
    patch = load(
        write_patch,
        f"""
        @patch.replace("{name}:same")
        def same(a, b=1):
            return a - b

        @patch.replace("{name}:widened")
        def widened(a, b=1, c=0):
            return a + b + c

        def _make():
            offset = 100

            def closing(a):
                return a + offset

            return closing

        patch.replace("{name}:closing")(_make())
        """,
    )
    modes = registry.check(patch).modes
    assert modes[f"{name}:same"] == "inline"
    assert modes[f"{name}:widened"].startswith("forward (")
    assert "layout" in modes[f"{name}:widened"]
    assert modes[f"{name}:closing"] == "forward (the replacement has its own closure (offset))"
    result = registry.apply(patch)
    assert result.modes == modes
    assert (mod.same(5), mod.widened(5), mod.widened(5, 2), mod.closing(1)) == (4, 6, 7, 101)
    registry.rollback()
    assert (mod.same(5), mod.widened(5), mod.closing(1)) == (6, 6, 1)


# -- forward mode, every kind ---------------------------------------------------------

KINDS = """
import asyncio

def plain(a, b=1):
    return ("old", a, b)

def gen(start):
    total = start
    while True:
        value = yield total
        if value is None:
            return ("old", total)
        total += value

async def coro(a):
    await asyncio.sleep(0)
    return ("old", a)

async def agen(start):
    n = start
    while True:
        try:
            step = yield n
        except ValueError:
            n = -1
            continue
        n += step or 1
"""

KINDS_PATCH = """
import asyncio

@patch.replace("{name}:plain")
def plain(a, b=7, c=0):
    "Plain, widened."
    return ("new", a, b, c)

@patch.replace("{name}:gen")
def gen(start, factor=10):
    total = start
    while True:
        value = yield total
        if value is None:
            return ("new", total)
        total += value * factor

@patch.replace("{name}:coro")
async def coro(a, extra="x"):
    await asyncio.sleep(0)
    return ("new", a, extra)

@patch.replace("{name}:agen")
async def agen(start, factor=100):
    n = start
    while True:
        try:
            step = yield n
        except ValueError as exc:
            n = str(exc)
            continue
        n += (step or 1) * factor
"""


async def _drive_agen(agen: Any) -> list[Any]:
    it = agen(1)
    seen = [await it.__anext__(), await it.asend(2), await it.athrow(ValueError("thrown"))]
    seen.append(await it.__anext__() if seen[-1] == -1 else None)
    await it.aclose()
    return seen


def test_forward_mode_behaves_the_same_for_every_kind(make_module, write_patch, registry):
    mod = make_module(KINDS)
    funcs = {n: getattr(mod, n) for n in ("plain", "gen", "coro", "agen")}
    codes = {n: f.__code__ for n, f in funcs.items()}
    patch = load(write_patch, KINDS_PATCH.format(name=mod.__name__))
    assert set(registry.check(patch).modes.values()) == {
        "forward (the argument layout differs from the original's)"
    }
    registry.apply(patch)

    assert mod.plain(1) == ("new", 1, 7, 0)  # the replacement's default for b
    assert mod.plain(1, 2) == ("new", 1, 2, 0)
    assert mod.plain.__doc__ == "Plain, widened."
    # The parameter the replacement adds is reachable, and the signature says so.
    assert mod.plain(1, 2, 3) == ("new", 1, 2, 3)
    assert mod.plain(1, c=4) == ("new", 1, 7, 4)
    assert list(inspect.signature(mod.plain).parameters) == ["a", "b", "c"]

    g = mod.gen(1)
    assert inspect.isgenerator(g)
    assert next(g) == 1
    assert g.send(2) == 21
    with pytest.raises(StopIteration) as stop:
        g.send(None)
    assert stop.value.value == ("new", 21)
    g2 = mod.gen(1)
    next(g2)
    with pytest.raises(KeyError):
        g2.throw(KeyError("passed through"))

    assert inspect.iscoroutinefunction(mod.coro)
    assert asyncio.run(mod.coro(3)) == ("new", 3, "x")

    assert inspect.isasyncgenfunction(mod.agen)
    assert asyncio.run(_drive_agen(mod.agen)) == [1, 201, "thrown", None]

    replacements = {r.target.rpartition(":")[2]: r.new for r in patch.replacements}
    for name, func in funcs.items():
        assert "__signature__" in func.__dict__, name
        assert func.__signature__ == inspect.signature(replacements[name])

    registry.rollback()
    for name, func in funcs.items():
        assert func.__code__ is codes[name]
        assert "__signature__" not in func.__dict__
    assert mod.plain(1) == ("old", 1, 1)
    assert "c" not in inspect.signature(mod.plain).parameters
    g = mod.gen(1)
    next(g)
    assert g.send(2) == 3
    g.close()
    assert asyncio.run(mod.coro(3)) == ("old", 3)
    assert asyncio.run(_drive_agen(mod.agen)) == [1, 3, -1, 0]


# -- closures -------------------------------------------------------------------------

COUNTER = """
def make_counter():
    count = 0

    def bump(step):
        nonlocal count
        count += step
        return count

    return bump

bump = make_counter()
"""


@pytest.mark.parametrize(
    ("replacement", "mode"),
    [
        ("def bump(step):\n    global count\n    count += step * 10\n    return count\n", "inline"),
        (
            "def bump(step, factor=10):\n    global count\n    count += step * factor\n"
            "    return count\n",
            "forward",
        ),
    ],
    ids=["inline", "forward"],
)
def test_closure_keeps_its_cell(make_module, write_patch, registry, replacement, mode):
    mod = make_module(COUNTER)
    f = mod.bump
    cell = f.__closure__[0]
    original = f.__code__
    assert f(1) == 1
    patch = load(
        write_patch,
        f'@patch.replace("{mod.__name__}:bump")\n' + replacement,
    )
    assert registry.check(patch).modes[f"{mod.__name__}:bump"].startswith(mode)
    registry.apply(patch)
    assert f.__closure__[0] is cell
    assert f(1) == 11  # the new code reads the old code's count ...
    assert cell.cell_contents == 11  # ... and writes it back into the same cell
    assert not hasattr(mod, "count")
    registry.rollback()
    assert f.__code__ is original
    assert f(1) == 12


def test_forward_replacement_with_zero_argument_super(make_module, write_patch, registry):
    mod = make_module(
        """
        class Base:
            def greet(self, name):
                return "hello " + name

        class Child(Base):
            def greet(self, name):
                return super().greet(name) + "!"
        """
    )
    child = mod.Child()
    patch = load(
        write_patch,
        f"""
        @patch.replace("{mod.__name__}:Child.greet")
        def greet(self, name, punct="?"):
            return super().greet(name) + punct
        """,
    )
    assert registry.check(patch).modes[f"{mod.__name__}:Child.greet"].startswith("forward")
    registry.apply(patch)
    assert child.greet("a") == "hello a?"
    registry.rollback()
    assert child.greet("a") == "hello a!"


# -- whole classes --------------------------------------------------------------------

CART = """
class Cart:
    TAX = 10

    def __init__(self, *items):
        self.items = list(items)

    def total(self):
        return sum(self.items)

    @classmethod
    def empty(cls):
        return cls()

    @property
    def size(self):
        return len(self.items)
"""


def test_replace_class_patches_in_place(make_module, write_patch, registry):
    mod = make_module(CART)
    cls = mod.Cart
    cart = cls(1, 2, 3)
    total, size = cls.__dict__["total"], cls.__dict__["size"]
    codes = (total.__code__, size.fget.__code__)
    init = cls.__dict__["__init__"]
    patch = load(
        write_patch,
        f"""
        @patch.replace_class("{mod.__name__}:Cart")
        class Cart:
            TAX = 10  # restated as the running class holds it: kept
            BONUS = 5  # data the running class lacks: added

            def total(self):
                return sum(self.items) * (100 + self.TAX + 2 * self.BONUS) // 100

            @property
            def size(self):
                return len(self.items) * 1000

            def count(self, item):
                return self.items.count(item)
        """,
    )
    assert registry.check(patch).hot
    registry.apply(patch)
    assert mod.Cart is cls
    assert isinstance(cart, mod.Cart)
    assert cls.__dict__["total"] is total  # patched in place: the same function object
    assert cls.__dict__["__init__"] is init  # not in the patch: untouched
    assert (cls.TAX, cls.BONUS) == (10, 5)
    assert cart.total() == 7
    assert cart.size == 3000
    assert cart.count(2) == 1
    assert cls.empty().items == []
    assert cls(2, 2).count(2) == 2

    registry.rollback()
    assert (total.__code__, size.fget.__code__) == codes
    assert total.__code__ is codes[0]
    assert not hasattr(cls, "count")
    assert cls.TAX == 10
    assert not hasattr(cls, "BONUS")
    assert cart.total() == 6
    assert cart.size == 3


@pytest.mark.parametrize(
    ("declaration", "reason"),
    [
        ("class Base:\n    pass\n\n{decorator}\nclass Cart(Base):\n", "bases"),
        ("class Meta(type):\n    pass\n\n{decorator}\nclass Cart(metaclass=Meta):\n", "metaclass"),
        ("{decorator}\nclass Cart:\n    __slots__ = ('items',)\n", "__slots__"),
    ],
    ids=["bases", "metaclass", "slots"],
)
def test_replace_class_layout_changes_are_not_hot(
    make_module, write_patch, registry, declaration, reason
):
    mod = make_module(CART)
    cls = mod.Cart
    cart = cls(1)
    total = cls.__dict__["total"]
    code = total.__code__
    before = dict(vars(cls))
    decorator = f'@patch.replace_class("{mod.__name__}:Cart")'
    patch = load(
        write_patch,
        declaration.format(decorator=decorator)
        + "    NOTE = 'added'\n\n    def total(self):\n        return 0\n\n    def extra(self):\n"
        + "        return 1\n",
    )
    report = registry.check(patch)
    assert report.hot is False
    assert any(reason in r for r in report.reasons), report.reasons
    with pytest.raises(hotpatch.RestartRequired) as info:
        registry.apply(patch)
    assert any(reason in r for r in info.value.reasons)
    assert dict(vars(cls)) == before
    assert total.__code__ is code
    assert cart.total() == 1
    assert registry.level == ()


# -- the switch's chooser ---------------------------------------------------------------

CHOOSING = """
def make():
    seen = []

    def plain(a, b=1, *, c=2):
        seen.append(a)
        return (VERSION, a, b, c)

    def gen(a):
        got = yield (VERSION, a)
        seen.append(a)
        return got

    async def coro(a):
        seen.append(a)
        return (VERSION, a)

    async def agen(a):
        seen.append(a)
        yield (VERSION, a)

    return seen, plain, gen, coro, agen
"""


async def _first(agen: Any) -> Any:
    return await agen.__anext__()


def test_chooser_hands_each_kind_of_call_to_the_function_the_flag_picks(make_module):
    """The chooser keeps the function's kind and cells; each call goes, as it is, to
    the old or the new function as the flag says (a plain call when made, the object a
    generator, coroutine or async generator function returns when it first runs)."""
    seen, *funcs = make_module(CHOOSING).make()
    flag = [0]
    for func in funcs:
        code = func.__code__
        versions = []
        for version, defaults, kwdefaults in (("old", (1,), {"c": 2}), ("new", (10,), {"c": 20})):
            namespace = {"VERSION": version, "__builtins__": builtins}
            shadow = types.FunctionType(code, namespace, code.co_name, None, func.__closure__)
            if code.co_argcount > 1:
                shadow.__defaults__, shadow.__kwdefaults__ = defaults, kwdefaults
            versions.append(shadow)
        func.__code__ = chooser(code, flag, (versions[0], versions[1]))
        assert func.__code__.co_flags & KIND_FLAGS == code.co_flags & KIND_FLAGS
        assert func.__code__.co_freevars == code.co_freevars
        assert func.__code__.co_qualname == code.co_qualname
    plain, gen, coro, agen = funcs
    made_before = gen(7)
    assert plain(1) == ("old", 1, 1, 2)
    assert next(gen(2)) == ("old", 2)
    assert asyncio.run(coro(3)) == ("old", 3)
    assert asyncio.run(_first(agen(4))) == ("old", 4)
    flag[0] = 1
    assert plain(1) == ("new", 1, 10, 20)
    assert plain(1, 5, c=6) == ("new", 1, 5, 6)
    made = gen(2)
    assert next(made) == ("new", 2)
    with pytest.raises(StopIteration) as done:
        made.send("sent")
    assert done.value.value == "sent"
    assert asyncio.run(coro(3)) == ("new", 3)
    assert asyncio.run(_first(agen(4))) == ("new", 4)
    assert next(made_before) == ("new", 7)  # it picks when it first runs
    assert seen == [1, 3, 4, 1, 1, 2, 3, 4]  # the function's own cell, both versions
