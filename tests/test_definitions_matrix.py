"""The matrix of SPEC §11: every kind of definition x {patch, old references, rollback, re-apply}.

A row is a kind of definition a user writes, a patch of it, and what the
references taken before the patch (instances, bound methods, the class or
function object) give before and after. A hot row must apply, run the new code
through every old reference, roll back exactly, and apply again. A refused row
must be refused by ``check()`` and ``apply()`` alike, with the error class and a
message naming the target and the reason, and change nothing. A row refused at
load is refused by ``load_patch`` before the patch file's class statement runs
(what it would run in the service never runs); built in code instead, its class
statement has run, and ``check()`` and ``apply()`` refuse it alike.
"""

from __future__ import annotations

import asyncio
import textwrap
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import hotpatch

Refs = dict[str, Any]


@dataclass(frozen=True)
class Row:
    """One kind: its module, a patch of it, the references, what they give."""

    module: str
    patch: str  # the patch body; {mod} is the module's name
    take: Callable[[types.ModuleType], Refs]  # references taken before the patch
    look: Callable[[types.ModuleType, Refs], Any]  # what they give now
    before: Any
    after: Any = None  # for a hot row
    refused: type[hotpatch.PatchError] | None = None  # for a refused row
    says: tuple[str, ...] = ()  # the refusal's message names these
    target: str = ""  # the qualname the refusal names (``mod:`` + this)
    at_load: bool = False  # refused by load_patch, before the patch's class statement runs
    extra: dict[str, str] = field(default_factory=dict)


def _read(obj: Any, name: str) -> Any:
    """``obj`` after reading ``obj.name`` once (a cached_property then holds its value)."""
    getattr(obj, name)
    return obj


def _fresh(obj: Any, name: str) -> Any:
    """``obj.name`` computed now: what a cached_property held is dropped first."""
    vars(obj).pop(name, None)
    return getattr(obj, name)


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _enter(cm: Any) -> Any:
    async with cm as value:
        return value


ROWS: dict[str, Row] = {
    "slots": Row(
        module="""
        class P:
            __slots__ = ("x",)
            def __init__(self, x):
                self.x = x
            def get(self):
                return self.x
        """,
        patch="""
        @patch.replace_class("{mod}:P")
        class P:
            __slots__ = ("x",)
            def get(self):
                return self.x * 10
        """,
        take=lambda m: {"cls": m.P, "obj": m.P(2), "bound": m.P(3).get},
        look=lambda m, r: (r["obj"].get(), r["bound"](), r["cls"](4).get(), r["obj"].x),
        before=(2, 3, 4, 2),
        after=(20, 30, 40, 2),
    ),
    "dataclass(slots=True)": Row(
        module="""
        from dataclasses import dataclass
        @dataclass(slots=True)
        class D:
            a: int
            def get(self):
                return self.a
        """,
        patch="""
        from dataclasses import dataclass
        @patch.replace_class("{mod}:D")
        @dataclass(slots=True)
        class D:
            a: int
            def get(self):
                return self.a * 10
        """,
        take=lambda m: {"cls": m.D, "obj": m.D(2), "bound": m.D(3).get},
        look=lambda m, r: (r["obj"].get(), r["bound"](), r["cls"](4).get(), repr(r["obj"])),
        before=(2, 3, 4, "D(a=2)"),
        after=(20, 30, 40, "D(a=2)"),
    ),
    "slots changed": Row(
        module="""
        class P:
            __slots__ = ("x",)
            def get(self):
                return 1
        """,
        patch="""
        @patch.replace_class("{mod}:P")
        class P:
            __slots__ = ("x", "y")
            def get(self):
                return 2
        """,
        take=lambda m: {"obj": m.P()},
        look=lambda m, r: r["obj"].get(),
        before=1,
        refused=hotpatch.RestartRequired,
        says=("__slots__ change from ('x',) to ('x', 'y')",),
        target="P",
    ),
    **{
        f"{base} methods": Row(
            module=f"""
            import enum
            class E(enum.{base}):
                A = {value}
                def label(self):
                    return "old"
            """,
            patch=f"""
            import enum
            @patch.replace_class("{{mod}}:E")
            class E(enum.{base}):
                A = {value}
                def label(self):
                    return "new"
            """,
            take=lambda m: {"cls": m.E, "member": m.E.A, "bound": m.E.A.label},
            look=lambda m, r: (r["member"].label(), r["bound"](), r["cls"].A is r["member"]),
            before=("old", "old", True),
            after=("new", "new", True),
        )
        for base, value in (("Enum", "1"), ("IntEnum", "1"), ("StrEnum", "'a'"), ("Flag", "1"))
    },
    "Enum member added": Row(
        module="""
        import enum
        class E(enum.Enum):
            A = 1
        """,
        patch="""
        import enum
        @patch.replace_class("{mod}:E")
        class E(enum.Enum):
            A = 1
            B = 2
        """,
        take=lambda m: {"cls": m.E},
        look=lambda m, r: [e.name for e in r["cls"]],
        before=["A"],
        refused=hotpatch.RestartRequired,
        says=("enum members change from (A=1) to (A=1, B=2)",),
        target="E",
    ),
    "Enum member changed": Row(
        module="""
        import enum
        class E(enum.IntFlag):
            A = 1
            B = 2
        """,
        patch="""
        import enum
        @patch.replace_class("{mod}:E")
        class E(enum.IntFlag):
            A = 1
            B = 4
        """,
        take=lambda m: {"cls": m.E},
        look=lambda m, r: r["cls"].B.value,
        before=2,
        refused=hotpatch.RestartRequired,
        says=("enum members change",),
        target="E",
    ),
    "singledispatch default": Row(
        module="""
        import functools
        @functools.singledispatch
        def show(x):
            return "any"
        @show.register
        def show_int(x: int):
            return "int"
        """,
        patch="""
        @patch.replace("{mod}:show")
        def show(x):
            return "ANY"
        """,
        take=lambda m: {"show": m.show},
        look=lambda m, r: (r["show"]("a"), r["show"](1)),
        before=("any", "int"),
        after=("ANY", "int"),
    ),
    "singledispatch registered": Row(
        module="""
        import functools
        @functools.singledispatch
        def show(x):
            return "any"
        @show.register
        def show_int(x: int):
            return "int"
        """,
        patch="""
        @patch.replace("{mod}:show_int")
        def show_int(x: int):
            return "INT"
        """,
        take=lambda m: {"show": m.show},
        look=lambda m, r: (r["show"]("a"), r["show"](1)),
        before=("any", "int"),
        after=("any", "INT"),
    ),
    "singledispatch registered as _": Row(
        module="""
        import functools
        @functools.singledispatch
        def show(x):
            return "any"
        @show.register
        def _(x: int):
            return "int"
        """,
        patch="""
        @patch.replace("{mod}:show.registry[int]")
        def _(x: int):
            return "INT"
        """,
        take=lambda m: {"show": m.show, "impl": m.show.registry[int]},
        look=lambda m, r: (r["show"]("a"), r["show"](1), r["impl"](1)),
        before=("any", "int", "int"),
        after=("any", "INT", "INT"),
    ),
    "singledispatch type not registered": Row(
        module="""
        import functools
        @functools.singledispatch
        def show(x):
            return "any"
        @show.register
        def _(x: int):
            return "int"
        """,
        patch="""
        @patch.replace("{mod}:show.registry[bool]")
        def _(x: bool):
            return "BOOL"
        """,
        take=lambda m: {"show": m.show},
        look=lambda m, r: (r["show"]("a"), r["show"](True)),
        before=("any", "int"),
        refused=hotpatch.TargetNotFound,
        says=("no implementation is registered for 'bool'", "show.registry[int]"),
        target="show.registry[bool]",
    ),
    "singledispatchmethod": Row(
        module="""
        import functools
        class S:
            @functools.singledispatchmethod
            def show(self, x):
                return "any"
            @show.register
            def _(self, x: int):
                return "int"
        """,
        patch="""
        import functools
        @patch.replace_class("{mod}:S")
        class S:
            @functools.singledispatchmethod
            def show(self, x):
                return "ANY"
            @show.register
            def _(self, x: int):
                return "INT"
        """,
        take=lambda m: {"obj": m.S(), "cls": m.S},
        look=lambda m, r: (r["obj"].show("a"), r["obj"].show(1), r["cls"]().show(2)),
        before=("any", "int", "int"),
        after=("ANY", "INT", "INT"),
    ),
    "singledispatchmethod types changed": Row(
        module="""
        import functools
        class S:
            @functools.singledispatchmethod
            def show(self, x):
                return "any"
        """,
        patch="""
        import functools
        @patch.replace_class("{mod}:S")
        class S:
            @functools.singledispatchmethod
            def show(self, x):
                return "ANY"
            @show.register
            def _(self, x: int):
                return "INT"
        """,
        take=lambda m: {"obj": m.S()},
        look=lambda m, r: r["obj"].show(1),
        before="any",
        refused=hotpatch.RestartRequired,
        says=("the types registered with show change from ['builtins.object'] to",),
        target="S",
    ),
    "lru_cache": Row(
        module="""
        import functools
        @functools.lru_cache(maxsize=None)
        def price(n):
            return n * 2
        """,
        patch="""
        @patch.replace("{mod}:price")
        def price(n):
            return n * 3
        """,
        take=lambda m: {"price": m.price, "seen": m.price(3)},  # an answer cached before
        look=lambda m, r: (r["price"](3), r["price"](4)),
        before=(6, 8),
        after=(9, 12),
    ),
    "cache method": Row(
        module="""
        import functools
        class Rates:
            @functools.cache
            def rate(self, n):
                return n * 2
        """,
        patch="""
        @patch.replace("{mod}:Rates.rate")
        def rate(self, n):
            return n * 3
        """,
        take=lambda m: {"obj": m.Rates(), "bound": m.Rates().rate},
        look=lambda m, r: (r["obj"].rate(3), r["bound"](4)),
        before=(6, 8),
        after=(9, 12),
    ),
    "cached_property": Row(
        module="""
        import functools
        class Cart:
            @functools.cached_property
            def total(self):
                return 1
        """,
        patch="""
        @patch.replace("{mod}:Cart.total")
        def total(self):
            return 2
        """,
        # a value cached before stays until the instance drops it (README, Limits)
        take=lambda m: {"cached": _read(m.Cart(), "total"), "fresh": m.Cart()},
        look=lambda m, r: (r["cached"].total, _fresh(r["fresh"], "total")),
        before=(1, 1),
        after=(1, 2),
    ),
    "cached_property in a class patch": Row(
        module="""
        import functools
        RATE = 2
        class Cart:
            @functools.cached_property
            def total(self):
                return RATE
        """,
        patch="""
        import functools
        @patch.replace_class("{mod}:Cart")
        class Cart:
            @functools.cached_property
            def total(self):
                return RATE * 10  # the module's RATE: the getter is patched in place
        """,
        take=lambda m: {"cached": _read(m.Cart(), "total"), "fresh": m.Cart()},
        look=lambda m, r: (r["cached"].total, _fresh(r["fresh"], "total")),
        before=(2, 2),
        after=(2, 20),
    ),
    "lru_cache method in a class patch": Row(
        module="""
        import functools
        class Rates:
            @functools.lru_cache(maxsize=None)
            def rate(self, n):
                return n * 2
        """,
        patch="""
        @patch.replace_class("{mod}:Rates")
        class Rates:
            def rate(self, n):  # written plain: the function under the cache is patched
                return n * 3
        """,
        take=lambda m: {"obj": m.Rates(), "bound": m.Rates().rate},
        look=lambda m, r: (r["obj"].rate(3), r["bound"](4), r["obj"].rate.cache_info is not None),
        before=(6, 8, True),
        after=(9, 12, True),
    ),
    "functools.wraps decorator": Row(
        module="""
        import functools
        def logged(func):
            @functools.wraps(func)
            def wrapper(*args):
                return ("logged", func(*args))
            return wrapper
        @logged
        def crunch(x):
            return x
        """,
        patch="""
        @patch.replace("{mod}:crunch")
        def crunch(x):
            return x * 10
        """,
        take=lambda m: {"crunch": m.crunch},
        look=lambda m, r: r["crunch"](2),
        before=("logged", 2),
        after=("logged", 20),
    ),
    "decorator without __wrapped__": Row(
        module="""
        def twice(func):
            def run(*args):
                return func(*args) * 2
            return run
        @twice
        def munch(x):
            return x
        """,
        patch="""
        @patch.replace("{mod}:munch")
        def munch(*args):
            return 0
        """,
        take=lambda m: {"munch": m.munch},
        look=lambda m, r: r["munch"](2),
        before=4,
        refused=hotpatch.NotPatchable,
        says=("twice.<locals>.run",),
        target="munch",
    ),
    "nested function": Row(
        module="""
        def make_adder(n):
            def add(x):
                return x + n
            return add
        add_two = make_adder(2)
        """,
        patch="""
        @patch.replace("{mod}:make_adder.<locals>.add")
        def add(x):
            return (x + n) * 10
        """,
        take=lambda m: {"made": m.add_two},  # a closure made before the patch
        look=lambda m, r: (r["made"](1), m.make_adder(3)(1)),
        before=(3, 4),
        after=(30, 40),
    ),
    "decorator's wrapper, two deep, decorator kept": Row(
        module="""
        def retry(times):
            def deco(fn):
                def wrapper(x):
                    return fn(x) + times
                return wrapper
            return deco
        retry3 = retry(3)  # kept: it wraps functions after the patch too
        """,
        patch="""
        @patch.replace("{mod}:retry.<locals>.deco.<locals>.wrapper")
        def wrapper(x):
            return fn(x) * times
        """,
        take=lambda m: {"deco": m.retry3, "made": m.retry3(abs)},
        look=lambda m, r: (r["made"](-2), r["deco"](abs)(-2), m.retry(4)(abs)(-2)),
        before=(5, 5, 6),
        after=(6, 6, 8),
    ),
    "singledispatch made inside a function": Row(
        module="""
        import functools
        def make_show():
            @functools.singledispatch
            def show(x):
                return "any"
            @show.register
            def show_int(x: int):
                return "int"
            return show
        shown = make_show()
        """,
        patch="""
        @patch.replace("{mod}:make_show.<locals>.show.registry[int]")
        def _(x):
            return "INT"
        """,
        take=lambda m: {"shown": m.shown},
        look=lambda m, r: (r["shown"](1), m.make_show()(1)),
        before=("int", "int"),
        refused=hotpatch.NotPatchable,
        says=("make_show.<locals>.show_int", "make_show itself"),
        target="make_show.<locals>.show.registry[int]",
    ),
    "lambda, signature widened": Row(
        module="""
        price = lambda x: x * 2  # noqa: E731
        """,
        patch="""
        @patch.replace("{mod}:price")
        def price(x, extra=0):
            return x * 3 + extra
        """,
        take=lambda m: {"price": m.price},
        look=lambda m, r: r["price"](2),
        before=4,
        after=6,
    ),
    "generator expression": Row(
        module="""
        def totals(rows):
            return sum(r for r in rows)
        """,
        patch="""
        @patch.replace("{mod}:totals.<locals>.<genexpr>")
        def rows(it):
            return 0
        """,
        take=lambda m: {"totals": m.totals},
        look=lambda m, r: r["totals"]([1, 2]),
        before=3,
        refused=hotpatch.NotPatchable,
        says=("comprehension or generator expression", "totals instead"),
        target="totals.<locals>.<genexpr>",
    ),
    "contextmanager, replacement decorated too": Row(
        module="""
        import contextlib
        @contextlib.contextmanager
        def opened():
            yield "old"
        """,
        patch="""
        import contextlib
        @patch.replace("{mod}:opened")
        @contextlib.contextmanager
        def opened():
            yield "new"
        """,
        # Written under the target's decorator: the generator function under it is
        # patched (the running helper keeps applying, once), as if written plain.
        take=lambda m: {"cm": m.opened},
        look=lambda m, r: r["cm"]().__enter__(),
        before="old",
        after="new",
    ),
    "asynccontextmanager, replacement decorated too": Row(
        module="""
        import contextlib
        @contextlib.asynccontextmanager
        async def opened():
            yield "old"
        """,
        patch="""
        import contextlib
        @patch.replace("{mod}:opened")
        @contextlib.asynccontextmanager
        async def opened():
            yield "new"
        """,
        take=lambda m: {"cm": m.opened},
        look=lambda m, r: _run(_enter(r["cm"]())),
        before="old",
        after="new",
    ),
    "contextmanager, replacement under another decorator": Row(
        module="""
        import contextlib
        @contextlib.contextmanager
        def opened():
            yield "old"
        """,
        patch="""
        import contextlib
        @patch.replace("{mod}:opened")
        @contextlib.asynccontextmanager
        async def opened():
            yield "new"
        """,
        take=lambda m: {"cm": m.opened},
        look=lambda m, r: r["cm"]().__enter__(),
        before="old",
        refused=hotpatch.VerificationFailed,
        says=("contextmanager.<locals>.helper", "asynccontextmanager.<locals>.helper", "plain"),
        target="opened",
    ),
    "contextmanager": Row(
        module="""
        import contextlib
        @contextlib.contextmanager
        def opened():
            yield "old"
        """,
        patch="""
        @patch.replace("{mod}:opened")
        def opened():
            yield "new"
        """,
        take=lambda m: {"cm": m.opened},
        look=lambda m, r: r["cm"]().__enter__(),
        before="old",
        after="new",
    ),
    "asynccontextmanager": Row(
        module="""
        import contextlib
        @contextlib.asynccontextmanager
        async def opened():
            yield "old"
        """,
        patch="""
        @patch.replace("{mod}:opened")
        async def opened():
            yield "new"
        """,
        take=lambda m: {"cm": m.opened},
        look=lambda m, r: _run(_enter(r["cm"]())),
        before="old",
        after="new",
    ),
    "partialmethod": Row(
        module="""
        import functools
        class P:
            def set(self, v, k):
                return f"{k}={v}"
            set_a = functools.partialmethod(set, k="a")
        """,
        patch="""
        import functools
        @patch.replace_class("{mod}:P")
        class P:
            def set(self, v, k):
                return f"{{k}}:{{v}}"
            set_a = functools.partialmethod(set, k="a")
        """,
        take=lambda m: {"obj": m.P(), "bound": m.P().set_a},
        look=lambda m, r: (r["obj"].set_a(1), r["bound"](2), r["obj"].set(3, "b")),
        before=("a=1", "a=2", "b=3"),
        after=("a:1", "a:2", "b:3"),
    ),
    "total_ordering": Row(
        module="""
        import functools
        @functools.total_ordering
        class V:
            def __init__(self, n):
                self.n = n
            def __eq__(self, o):
                return self.n == o.n
            def __lt__(self, o):
                return self.n < o.n
        """,
        patch="""
        import functools
        @patch.replace_class("{mod}:V")
        @functools.total_ordering
        class V:
            def __eq__(self, o):
                return self.n == o.n
            def __lt__(self, o):
                return self.n > o.n
        """,
        take=lambda m: {"a": m.V(1), "b": m.V(2)},
        look=lambda m, r: (r["a"] < r["b"], r["a"] >= r["b"], r["a"] <= r["b"]),
        before=(True, False, True),
        after=(False, True, False),
    ),
    "total_ordering root changed": Row(
        module="""
        import functools
        @functools.total_ordering
        class V:
            def __init__(self, n):
                self.n = n
            def __eq__(self, o):
                return self.n == o.n
            def __lt__(self, o):
                return self.n < o.n
        @functools.total_ordering
        class W:
            def __init__(self, n):
                self.n = n
            def __eq__(self, o):
                return self.n == o.n
            def __lt__(self, o):
                return self.n < o.n
        """,
        patch="""
        import functools
        @patch.replace_class("{mod}:V")
        @functools.total_ordering
        class V:
            def __eq__(self, o):
                return self.n == o.n
            def __gt__(self, o):
                return self.n < o.n
        """,
        # V's __gt__ was functools' helper, shared by every total_ordering class:
        # the patch gives V its own and leaves W's alone.
        take=lambda m: {"v": (m.V(1), m.V(2)), "w": (m.W(1), m.W(2))},
        look=lambda m, r: (r["v"][0] > r["v"][1], r["w"][0] > r["w"][1]),
        before=(False, False),
        after=(True, False),
    ),
    "abstractmethod body": Row(
        module="""
        import abc
        class Shape(abc.ABC):
            @abc.abstractmethod
            def area(self): ...
            def describe(self):
                return f"area {self.area()}"
        class Square(Shape):
            def area(self):
                return 4
        """,
        patch="""
        import abc
        @patch.replace_class("{mod}:Shape")
        class Shape(abc.ABC):
            def describe(self):  # area is not named: it stays abstract
                return f"AREA {{self.area()}}"
        """,
        take=lambda m: {"obj": m.Square()},
        look=lambda m, r: (r["obj"].describe(), sorted(m.Shape.__abstractmethods__)),
        before=("area 4", ["area"]),
        after=("AREA 4", ["area"]),
    ),
    "abstractmethod added": Row(
        module="""
        import abc
        class Shape(abc.ABC):
            @abc.abstractmethod
            def area(self): ...
        """,
        patch="""
        import abc
        @patch.replace_class("{mod}:Shape")
        class Shape(abc.ABC):
            @abc.abstractmethod
            def area(self): ...
            @abc.abstractmethod
            def perimeter(self): ...
        """,
        take=lambda m: {"cls": m.Shape},
        look=lambda m, r: sorted(r["cls"].__abstractmethods__),
        before=["area"],
        refused=hotpatch.RestartRequired,
        says=("abstract methods change: perimeter becomes abstract",),
        target="Shape",
    ),
    "__set_name__ descriptor": Row(
        module="""
        class Named:
            def __init__(self, prefix):
                self.prefix = prefix
            def __set_name__(self, owner, name):
                self.name = f"{owner.__qualname__}.{name}"
                self.owner = owner
            def __get__(self, obj, owner=None):
                return (self.prefix, self.name, self.owner is owner)
        class H:
            field = Named("old")
        """,
        patch="""
        @patch.replace_class("{mod}:H")
        class H:
            field = __import__("{mod}").Named("new")
        """,
        take=lambda m: {"obj": m.H()},
        look=lambda m, r: r["obj"].field,
        before=("old", "H.field", True),
        after=("new", "H.field", True),
    ),
    "__init_subclass__": Row(
        module="""
        class Plugin:
            seen = []
            def __init_subclass__(cls, **kw):
                super().__init_subclass__(**kw)
                Plugin.seen.append(cls.__name__.lower())
        class First(Plugin):
            pass
        """,
        patch="""
        @patch.replace_class("{mod}:Plugin")
        class Plugin:
            def __init_subclass__(cls, **kw):
                super().__init_subclass__(**kw)
                Plugin.seen.append(cls.__name__.upper())
        """,
        # classes made before keep what the hook did; classes made after get the new hook
        take=lambda m: {"cls": m.Plugin},
        look=lambda m, r: (type("Later", (r["cls"],), {}), r["cls"].seen.pop())[1],
        before="later",
        after="LATER",
    ),
    "__init_subclass__ of a base": Row(
        module="""
        REGISTRY = {}
        class Plugin:
            def __init_subclass__(cls, **kw):
                super().__init_subclass__(**kw)
                REGISTRY[cls.__name__] = cls
        class Echo(Plugin):
            def run(self):
                return "old"
        """,
        patch="""
        Plugin = __import__("{mod}").Plugin
        @patch.replace_class("{mod}:Echo")
        class Echo(Plugin):
            def run(self):
                return "new"
        """,
        take=lambda m: {"obj": m.Echo(), "cls": m.Echo},
        look=lambda m, r: (r["obj"].run(), m.REGISTRY["Echo"] is r["cls"], len(m.REGISTRY)),
        before=("old", True, 1),
        refused=hotpatch.NotPatchable,
        says=("Plugin.__init_subclass__", "registry", "@patch.replace(", "baseline"),
        target="Echo",
        at_load=True,
    ),
    "metaclass __new__ / __init__": Row(
        module="""
        MADE = []
        class Counted(type):
            def __init__(cls, *args, **kw):
                super().__init__(*args, **kw)
                MADE.append(cls.__name__)
        class K(metaclass=Counted):
            def run(self):
                return "old"
        """,
        patch="""
        Counted = __import__("{mod}").Counted
        @patch.replace_class("{mod}:K")
        class K(metaclass=Counted):
            def run(self):
                return "new"
        """,
        take=lambda m: {"obj": m.K()},
        look=lambda m, r: (r["obj"].run(), list(m.MADE)),
        before=("old", ["K"]),
        refused=hotpatch.NotPatchable,
        says=("Counted.__init__", "@patch.replace(", "baseline"),
        target="K",
        at_load=True,
    ),
    "metaclass methods": Row(
        module="""
        class Meta(type):
            def hello(cls):
                return "old " + cls.__name__
        class K(metaclass=Meta):
            def run(self):
                return "old"
        """,
        patch="""
        @patch.replace_class("{mod}:Meta")
        class Meta(type):
            def hello(cls):
                return "new " + cls.__name__
        Meta = __import__("{mod}").Meta
        @patch.replace_class("{mod}:K")
        class K(metaclass=Meta):
            def run(self):
                return "new"
        """,
        take=lambda m: {"cls": m.K, "obj": m.K()},
        look=lambda m, r: (r["cls"].hello(), r["obj"].run()),
        before=("old K", "old"),
        after=("new K", "new"),
    ),
    "metaclass changed": Row(
        module="""
        class K:
            def run(self):
                return "old"
        """,
        patch="""
        import abc
        @patch.replace_class("{mod}:K")
        class K(metaclass=abc.ABCMeta):
            def run(self):
                return "new"
        """,
        take=lambda m: {"obj": m.K()},
        look=lambda m, r: r["obj"].run(),
        before="old",
        refused=hotpatch.RestartRequired,
        says=("metaclass changes from type to ABCMeta",),
        target="K",
    ),
    "NamedTuple": Row(
        module="""
        import typing
        class NT(typing.NamedTuple):
            a: int
            b: int = 2
            def total(self):
                return self.a + self.b
        """,
        patch="""
        import typing
        @patch.replace_class("{mod}:NT")
        class NT(typing.NamedTuple):
            a: int
            b: int = 2
            def total(self):
                return (self.a + self.b) * 10
        """,
        take=lambda m: {"obj": m.NT(1), "bound": m.NT(2).total, "cls": m.NT},
        look=lambda m, r: (
            r["obj"].total(),
            r["bound"](),
            r["cls"](3, 3).total(),
            repr(r["obj"]),
            r["obj"]._replace(a=5).total(),
        ),
        before=(3, 4, 6, "NT(a=1, b=2)", 7),
        after=(30, 40, 60, "NT(a=1, b=2)", 70),
    ),
    "NamedTuple field added": Row(
        module="""
        import typing
        class NT(typing.NamedTuple):
            a: int
        """,
        patch="""
        import typing
        @patch.replace_class("{mod}:NT")
        class NT(typing.NamedTuple):
            a: int
            b: int = 0
        """,
        take=lambda m: {"obj": m.NT(1)},
        look=lambda m, r: r["obj"]._fields,
        before=("a",),
        refused=hotpatch.RestartRequired,
        says=("namedtuple fields change from ('a',) to ('a', 'b')",),
        target="NT",
    ),
    "Protocol": Row(
        module="""
        import typing
        @typing.runtime_checkable
        class Runs(typing.Protocol):
            def run(self) -> str: ...
            def twice(self) -> str:
                return self.run() * 2
        class Impl(Runs):
            def run(self) -> str:
                return "old"
        """,
        patch="""
        import typing
        @patch.replace_class("{mod}:Runs")
        @typing.runtime_checkable
        class Runs(typing.Protocol):
            def twice(self) -> str:  # run is not named: the protocol still checks it
                return self.run() * 3
        """,
        take=lambda m: {"obj": m.Impl()},
        look=lambda m, r: (r["obj"].twice(), isinstance(r["obj"], m.Runs)),
        before=("oldold", True),
        after=("oldoldold", True),
    ),
    "Protocol member added": Row(
        module="""
        import typing
        @typing.runtime_checkable
        class Runs(typing.Protocol):
            def run(self) -> str: ...
        """,
        patch="""
        import typing
        @patch.replace_class("{mod}:Runs")
        @typing.runtime_checkable
        class Runs(typing.Protocol):
            def run(self) -> str: ...
            def stop(self) -> None: ...
        """,
        take=lambda m: {"obj": type("Only", (), {"run": lambda self: "x"})()},
        look=lambda m, r: isinstance(r["obj"], m.Runs),
        before=True,
        refused=hotpatch.RestartRequired,
        says=("protocol members added: stop",),
        target="Runs",
    ),
    "Generic": Row(
        module="""
        import typing
        T = typing.TypeVar("T")
        class Box(typing.Generic[T]):
            def __init__(self, v: T):
                self.v = v
            def get(self) -> T:
                return self.v
        """,
        patch="""
        import typing
        T = __import__("{mod}").T
        @patch.replace_class("{mod}:Box")
        class Box(typing.Generic[T]):
            def get(self) -> T:
                return ("new", self.v)
        """,
        take=lambda m: {"obj": m.Box[int](1), "alias": m.Box[str]},
        look=lambda m, r: (r["obj"].get(), r["alias"]("s").get()),
        before=(1, "s"),
        after=(("new", 1), ("new", "s")),
    ),
}

PHASES = ("patch", "old references", "rollback", "re-apply")
HEADER = "from hotpatch import Patch\npatch = Patch(version='1.0.1', baseline='1.0')\n"


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("kind", list(ROWS))
def test_matrix(
    kind: str,
    phase: str,
    make_module: Callable[[str], types.ModuleType],
    write_patch: Callable[..., Path],
    registry: hotpatch.Registry,
) -> None:
    row = ROWS[kind]
    mod = make_module(textwrap.dedent(row.module))
    refs = row.take(mod)
    assert row.look(mod, refs) == row.before
    text = HEADER + textwrap.dedent(row.patch).format(mod=mod.__name__)
    if row.at_load:
        assert row.refused is not None
        with pytest.raises(row.refused) as loaded:
            hotpatch.load_patch(write_patch(text))
        message = str(loaded.value)
        assert f"{mod.__name__}:{row.target}" in message
        assert all(s in message for s in row.says), message
        assert row.look(mod, refs) == row.before  # what it would run never ran
        namespace: dict[str, Any] = {}
        exec(compile(text, "<built in code>", "exec"), namespace)  # this runs it
        after_made = row.look(mod, refs)
        _refused(row, mod, refs, registry=registry, patch=namespace["patch"], phase=phase)
        assert row.look(mod, refs) == after_made
        return
    patch = hotpatch.load_patch(write_patch(text))
    if row.refused is not None:
        _refused(row, mod, refs, registry=registry, patch=patch, phase=phase)
        return
    report = registry.check(patch)
    assert report.hot, report.reasons
    registry.apply(patch)
    if phase == "patch":
        assert registry.level == ("1.0.1",)
        return
    assert row.look(mod, refs) == row.after
    if phase == "old references":
        return
    registry.rollback()
    assert row.look(mod, refs) == row.before
    if phase == "rollback":
        return
    assert registry.check(patch).hot
    registry.apply(patch)
    assert row.look(mod, refs) == row.after


def _refused(
    row: Row,
    mod: types.ModuleType,
    refs: Refs,
    *,
    registry: hotpatch.Registry,
    patch: hotpatch.Patch,
    phase: str,
) -> None:
    """check() and apply() refuse alike, naming target and reason; nothing changes."""
    assert row.refused is not None
    target = f"{mod.__name__}:{row.target}"
    reasons: tuple[str, ...] = ()
    if row.refused is hotpatch.RestartRequired:
        report = registry.check(patch)
        assert not report.hot
        reasons = report.reasons
    else:
        with pytest.raises(row.refused) as checked:
            registry.check(patch)
        reasons = (str(checked.value),)
    assert any(target in r and all(s in r for s in row.says) for r in reasons), reasons
    for _ in range(2 if phase == "re-apply" else 1):
        with pytest.raises(row.refused) as applied:
            registry.apply(patch)
        assert type(applied.value) is row.refused
        assert applied.value.patch == "1.0.1"
        if isinstance(applied.value, hotpatch.RestartRequired):
            assert applied.value.reasons == reasons
            assert "restart" in str(applied.value)
        assert registry.level == ()
        if not row.at_load:  # built in code, its class statement did what it does
            assert row.look(mod, refs) == row.before
