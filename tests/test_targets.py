"""Every supported target kind, checked through references taken before the patch."""

from __future__ import annotations

import asyncio
import inspect
import textwrap
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import hotpatch

PatchWriter = Callable[..., Path]
HEADER = "from hotpatch import Patch\npatch = Patch(version={version!r}, baseline='1.0')\n"


def load(write_patch: PatchWriter, body: str, version: str = "1.0.1") -> hotpatch.Patch:
    """A real patch file: the standard header, then ``body`` (dedented)."""
    return hotpatch.load_patch(write_patch(HEADER.format(version=version) + textwrap.dedent(body)))


def code_of(func: Any) -> types.CodeType:
    code: types.CodeType = func.__code__
    return code


# -- module functions and the references to them -------------------------------------


def test_module_function(make_module, write_patch, registry):
    mod = make_module("def price(x):\n    return x + 1\n")
    f = mod.price
    original = f.__code__
    registry.apply(
        load(
            write_patch,
            f"""
            @patch.replace("{mod.__name__}:price")
            def price(x):
                return x + 100
            """,
        )
    )
    assert mod.price is f
    assert f(1) == 101
    assert mod.price(1) == 101
    registry.rollback()
    assert f.__code__ is original
    assert f(1) == 2


def test_from_import_copy_in_another_module(make_module, write_patch, registry):
    mod = make_module("def price(x):\n    return x + 1\n")
    user = make_module(
        f"""
        from {mod.__name__} import price

        def checkout(x):
            return price(x) * 2
        """
    )
    copy = user.price
    original = copy.__code__
    assert user.checkout(1) == 4
    registry.apply(
        load(
            write_patch,
            f"""
            @patch.replace("{mod.__name__}:price")
            def price(x):
                return x + 100
            """,
        )
    )
    assert user.price is copy is mod.price
    assert copy(1) == 101
    assert user.checkout(1) == 202
    registry.rollback()
    assert copy.__code__ is original
    assert user.checkout(1) == 4


def test_function_stored_in_dict_and_callback_list(make_module, write_patch, registry):
    mod = make_module(
        """
        def on_event(name):
            return "old " + name

        HANDLERS = {"event": on_event}
        CALLBACKS = [on_event]

        def fire(name):
            return [cb(name) for cb in CALLBACKS]
        """
    )
    table = {"mine": mod.on_event}
    callbacks: list[Callable[[str], str]] = [mod.on_event]
    original = mod.on_event.__code__
    registry.apply(
        load(
            write_patch,
            f"""
            @patch.replace("{mod.__name__}:on_event")
            def on_event(name):
                return "new " + name
            """,
        )
    )
    assert mod.HANDLERS["event"]("a") == "new a"
    assert mod.fire("b") == ["new b"]
    assert table["mine"]("c") == "new c"
    assert [cb("d") for cb in callbacks] == ["new d"]
    registry.rollback()
    assert code_of(table["mine"]) is original
    assert mod.HANDLERS["event"]("a") == "old a"
    assert mod.fire("b") == ["old b"]
    assert [cb("d") for cb in callbacks] == ["old d"]


# -- methods ----------------------------------------------------------------------------

CART = """
class Cart:
    RATE = 2

    def __init__(self, *items):
        self.items = list(items)

    def total(self):
        return sum(self.items)

    @classmethod
    def of(cls, n):
        return cls(*range(n))

    @staticmethod
    def fee(amount):
        return amount + 1
"""


def test_method_with_existing_instances_and_bound_method(make_module, write_patch, registry):
    mod = make_module(CART)
    carts = [mod.Cart(1, 2), mod.Cart(3)]
    bound = carts[0].total  # bound before the patch
    func = vars(mod.Cart)["total"]
    original = func.__code__
    registry.apply(
        load(
            write_patch,
            f"""
            @patch.replace("{mod.__name__}:Cart.total")
            def total(self):
                return sum(self.items) * self.RATE
            """,
        )
    )
    assert vars(mod.Cart)["total"] is func
    assert [c.total() for c in carts] == [6, 6]
    assert bound() == 6
    assert mod.Cart(5).total() == 10
    registry.rollback()
    assert func.__code__ is original
    assert [c.total() for c in carts] == [3, 3]
    assert bound() == 3


@pytest.mark.parametrize("decorated", [False, True], ids=["plain", "classmethod"])
def test_classmethod(make_module, write_patch, registry, decorated):
    mod = make_module(CART)
    bound = mod.Cart.of  # bound to the class before the patch
    func = vars(mod.Cart)["of"].__func__
    original = func.__code__
    decorator = "@classmethod" if decorated else ""
    registry.apply(
        load(
            write_patch,
            f"""
            @patch.replace("{mod.__name__}:Cart.of")
            {decorator}
            def of(cls, n):
                return cls(*range(1, n + 1))
            """,
        )
    )
    assert isinstance(vars(mod.Cart)["of"], classmethod)
    assert vars(mod.Cart)["of"].__func__ is func
    assert bound(3).items == [1, 2, 3]
    assert mod.Cart.of(2).items == [1, 2]
    assert mod.Cart().of(1).items == [1]

    class Sub(mod.Cart):  # type: ignore[name-defined,misc]
        pass

    made = Sub.of(2)
    assert type(made) is Sub
    assert made.items == [1, 2]
    registry.rollback()
    assert func.__code__ is original
    assert bound(3).items == [0, 1, 2]


@pytest.mark.parametrize("decorated", [False, True], ids=["plain", "staticmethod"])
def test_staticmethod(make_module, write_patch, registry, decorated):
    mod = make_module(CART)
    through_class = mod.Cart.fee
    instance = mod.Cart()
    func = vars(mod.Cart)["fee"].__func__
    original = func.__code__
    decorator = "@staticmethod" if decorated else ""
    registry.apply(
        load(
            write_patch,
            f"""
            @patch.replace("{mod.__name__}:Cart.fee")
            {decorator}
            def fee(amount):
                return amount + 50
            """,
        )
    )
    assert isinstance(vars(mod.Cart)["fee"], staticmethod)
    assert through_class(1) == 51
    assert instance.fee(1) == 51
    registry.rollback()
    assert func.__code__ is original
    assert through_class(1) == 2


PROPERTY = """
class Box:
    def __init__(self):
        self._v = 1
        self.log = []

    @property
    def v(self):
        return self._v

    @v.setter
    def v(self, value):
        self._v = value

    @v.deleter
    def v(self):
        self.log.append("deleted")
        self._v = None
"""


def test_property_getter_setter_deleter(make_module, write_patch, registry):
    mod = make_module(PROPERTY)
    box = mod.Box()
    prop = vars(mod.Box)["v"]
    accessors = (prop.fget, prop.fset, prop.fdel)
    originals = [f.__code__ for f in accessors]
    name = mod.__name__
    registry.apply(
        load(
            write_patch,
            f"""
            @patch.replace("{name}:Box.v")
            def v(self):
                return ("got", self._v)

            @patch.replace("{name}:Box.v.setter")
            def v_set(self, value):
                self._v = value * 10

            @patch.replace("{name}:Box.v.deleter")
            def v_del(self):
                self.log.append("new delete")
                self._v = 0
            """,
        )
    )
    assert vars(mod.Box)["v"] is prop
    assert (prop.fget, prop.fset, prop.fdel) == accessors
    assert box.v == ("got", 1)
    box.v = 2
    assert box._v == 20
    del box.v
    assert box.log == ["new delete"]
    assert box.v == ("got", 0)
    registry.rollback()
    assert [f.__code__ for f in accessors] == originals
    assert all(f.__code__ is c for f, c in zip(accessors, originals, strict=True))
    box.v = 3
    assert box.v == 3
    del box.v
    assert box.log == ["new delete", "deleted"]


def test_property_getter_written_as_property(make_module, write_patch, registry):
    mod = make_module(PROPERTY)
    box = mod.Box()
    fget = vars(mod.Box)["v"].fget
    original = fget.__code__
    registry.apply(
        load(
            write_patch,
            f"""
            @patch.replace("{mod.__name__}:Box.v")
            @property
            def v(self):
                return self._v + 1000
            """,
        )
    )
    assert box.v == 1001
    registry.rollback()
    assert fget.__code__ is original
    assert box.v == 1


# -- coroutines and generators ------------------------------------------------------------


def test_async_function(make_module, write_patch, registry):
    mod = make_module(
        """
        import asyncio

        async def fetch(x):
            await asyncio.sleep(0)
            return ("old", x)
        """
    )
    f = mod.fetch
    original = f.__code__
    registry.apply(
        load(
            write_patch,
            f"""
            import asyncio

            @patch.replace("{mod.__name__}:fetch")
            async def fetch(x):
                await asyncio.sleep(0)
                return ("new", x)
            """,
        )
    )
    assert inspect.iscoroutinefunction(f)
    assert asyncio.run(f(1)) == ("new", 1)
    registry.rollback()
    assert f.__code__ is original
    assert asyncio.run(f(1)) == ("old", 1)


GENERATOR = """
def accumulate(start):
    total = start
    while True:
        try:
            value = yield total
        except ValueError:
            total = -1
            continue
        if value is None:
            return ("old done", total)
        total += value
"""

GENERATOR_PATCH = """
@patch.replace("{name}:accumulate")
def accumulate(start):
    total = start
    try:
        while True:
            try:
                value = yield total
            except ValueError as exc:
                total = str(exc)
                continue
            if value is None:
                return ("new done", total)
            total += value * 10
    finally:
        CLOSED.append(total)

CLOSED = []
"""


def test_generator_send_throw_close_and_return_value(make_module, write_patch, registry):
    mod = make_module(GENERATOR)
    f = mod.accumulate
    original = f.__code__
    started = f(1)  # a generator that started before the patch finishes on the old code
    assert next(started) == 1
    registry.apply(load(write_patch, GENERATOR_PATCH.format(name=mod.__name__)))

    assert started.send(2) == 3
    gen = f(1)
    assert inspect.isgenerator(gen)
    assert next(gen) == 1
    assert gen.send(2) == 21
    assert gen.throw(ValueError("boom")) == "boom"
    gen.close()
    gen2 = f(5)
    next(gen2)
    gen2.send(1)
    with pytest.raises(StopIteration) as stop:
        gen2.send(None)
    assert stop.value.value == ("new done", 15)
    gen3 = f(7)
    next(gen3)
    gen3.close()
    assert mod.CLOSED == ["boom", 15, 7]
    with pytest.raises(StopIteration) as stop:
        started.send(None)
    assert stop.value.value == ("old done", 3)

    registry.rollback()
    assert f.__code__ is original
    gen = f(1)
    next(gen)
    assert gen.send(2) == 3
    assert not hasattr(mod, "CLOSED")


ASYNC_GENERATOR = """
async def ticks(start):
    n = start
    while True:
        try:
            step = yield n
        except ValueError:
            n = -1
            continue
        n += step or 1
"""


def test_async_generator_asend_athrow_aclose(make_module, write_patch, registry):
    mod = make_module(ASYNC_GENERATOR)
    f = mod.ticks
    original = f.__code__
    registry.apply(
        load(
            write_patch,
            f"""
            @patch.replace("{mod.__name__}:ticks")
            async def ticks(start):
                n = start
                try:
                    while True:
                        try:
                            step = yield n
                        except ValueError as exc:
                            n = str(exc)
                            continue
                        n += (step or 1) * 100
                finally:
                    CLOSED.append(n)

            CLOSED = []
            """,
        )
    )

    async def drive() -> list[Any]:
        gen = f(1)
        seen = [await gen.__anext__(), await gen.asend(2), await gen.athrow(ValueError("x"))]
        await gen.aclose()
        return seen

    assert inspect.isasyncgenfunction(f)
    assert asyncio.run(drive()) == [1, 201, "x"]
    assert mod.CLOSED == ["x"]
    registry.rollback()
    assert f.__code__ is original

    async def drive_old() -> list[Any]:
        gen = f(1)
        seen = [await gen.__anext__(), await gen.asend(2), await gen.athrow(ValueError("x"))]
        await gen.aclose()
        return seen

    assert asyncio.run(drive_old()) == [1, 3, -1]


# -- closures, decorators, recursion -----------------------------------------------------


def test_closure_reads_and_writes_its_variable_by_name(make_module, write_patch, registry):
    mod = make_module(
        """
        def make_counter():
            count = 0

            def bump(step):
                nonlocal count
                count += step
                return count

            return bump

        bump = make_counter()
        """
    )
    f = mod.bump
    cell = f.__closure__[0]
    original = f.__code__
    assert f(1) == 1
    registry.apply(
        load(
            write_patch,
            f"""
            @patch.replace("{mod.__name__}:bump")
            def bump(step):
                global count
                count += step * 10
                return count
            """,
        )
    )
    assert f.__closure__[0] is cell
    assert f(1) == 11  # continues from the closure's value
    assert cell.cell_contents == 11
    assert not hasattr(mod, "count")  # the closure, not a module global
    registry.rollback()
    assert f.__code__ is original
    assert f(1) == 12  # the old code sees what the new code wrote


def test_functools_wraps_decorator_keeps_applying(make_module, write_patch, registry):
    mod = make_module(
        """
        import functools

        CALLS = []

        def logged(fn):
            @functools.wraps(fn)
            def wrapper(*args, **kwargs):
                CALLS.append(fn.__name__)
                return fn(*args, **kwargs)
            return wrapper

        @logged
        def area(w, h):
            "Area."
            return w * h
        """
    )
    wrapper = mod.area
    inner = wrapper.__wrapped__
    wrapper_code, inner_code = wrapper.__code__, inner.__code__
    registry.apply(
        load(
            write_patch,
            f"""
            @patch.replace("{mod.__name__}:area")
            def area(w, h):
                return w * h + 1
            """,
        )
    )
    assert mod.area is wrapper
    assert wrapper.__wrapped__ is inner
    assert wrapper.__code__ is wrapper_code  # the decorator is not replaced ...
    assert inner.__code__ is not inner_code  # ... the function under it is
    assert wrapper(2, 3) == 7
    assert mod.CALLS == ["area"]  # the decorator still applies
    registry.rollback()
    assert inner.__code__ is inner_code
    assert wrapper(2, 3) == 6
    assert mod.CALLS == ["area", "area"]


def test_recursive_calls_go_to_new_code(make_module, write_patch, registry):
    mod = make_module(
        """
        def countdown(n):
            return [] if n == 0 else [("old", n), *countdown(n - 1)]
        """
    )
    f = mod.countdown
    original = f.__code__
    registry.apply(
        load(
            write_patch,
            f"""
            @patch.replace("{mod.__name__}:countdown")
            def countdown(n):
                return [] if n == 0 else [("new", n), *countdown(n - 1)]
            """,
        )
    )
    assert f(3) == [("new", 3), ("new", 2), ("new", 1)]
    registry.rollback()
    assert f.__code__ is original
    assert f(2) == [("old", 2), ("old", 1)]


def test_keyword_only_defaults_varargs_varkw(make_module, write_patch, registry):
    mod = make_module(
        """
        def call(a, b=2, *args, c, d=4, **kw):
            return ("old", a, b, args, c, d, kw)
        """
    )
    f = mod.call
    original = f.__code__
    registry.apply(
        load(
            write_patch,
            f"""
            @patch.replace("{mod.__name__}:call")
            def call(a, b=2, *args, c, d=4, **kw):
                return ("new", a, b, args, c, d, kw)
            """,
        )
    )
    assert f(1, c=3) == ("new", 1, 2, (), 3, 4, {})
    assert f(1, 5, 6, 7, c=3, d=8, e=9) == ("new", 1, 5, (6, 7), 3, 8, {"e": 9})
    assert f(a=1, b=2, c=3, z=0) == ("new", 1, 2, (), 3, 4, {"z": 0})
    with pytest.raises(TypeError):
        f(1)  # c is still required
    registry.rollback()
    assert f.__code__ is original
    assert f(1, c=3) == ("old", 1, 2, (), 3, 4, {})


def test_new_defaults_take_effect_and_rollback_restores_them(make_module, write_patch, registry):
    mod = make_module(
        """
        def fee(amount, rate=2, *, floor=1):
            return max(amount * rate, floor)
        """
    )
    f = mod.fee
    original = f.__code__
    before = inspect.signature(f)
    registry.apply(
        load(
            write_patch,
            f"""
            @patch.replace("{mod.__name__}:fee")
            def fee(amount, rate=3, *, floor=100):
                return max(amount * rate, floor)
            """,
        )
    )
    assert f(10) == 100
    assert f(50) == 150
    assert f(10, floor=0) == 30
    sig = inspect.signature(f)
    assert sig.parameters["rate"].default == 3
    assert sig.parameters["floor"].default == 100
    assert f.__defaults__ == (3,)
    assert f.__kwdefaults__ == {"floor": 100}
    registry.rollback()
    assert f.__code__ is original
    assert f.__defaults__ == (2,)
    assert f.__kwdefaults__ == {"floor": 1}
    assert inspect.signature(f) == before
    assert f(10) == 20


def test_identity_attributes_kept_doc_follows_replacement(make_module, write_patch, registry):
    mod = make_module(
        """
        import functools

        def deco(fn):
            @functools.wraps(fn)
            def wrapper(*a):
                return fn(*a)
            return wrapper

        def documented(x):
            "Original doc."
            return x

        def undocumented(x):
            "Kept doc."
            return x

        class Shop:
            @deco
            def open(self):
                "Opens."
                return "old"
        """
    )
    documented, undocumented = mod.documented, mod.undocumented
    method = vars(mod.Shop)["open"]
    inner = method.__wrapped__
    funcs = (documented, undocumented, method, inner)
    identity = [(f.__name__, f.__qualname__, f.__module__) for f in funcs]
    name = mod.__name__
    registry.apply(
        load(
            write_patch,
            f"""
            @patch.replace("{name}:documented")
            def documented_v2(x):
                "New doc."
                return x * 2

            @patch.replace("{name}:undocumented")
            def undocumented_v2(x):
                return x * 3

            @patch.replace("{name}:Shop.open")
            def open_v2(self):
                return "new"
            """,
        )
    )
    assert [(f.__name__, f.__qualname__, f.__module__) for f in funcs] == identity
    assert identity[2] == ("open", "Shop.open", name)
    assert method.__wrapped__ is inner
    assert documented(1) == 2
    assert undocumented(1) == 3
    assert mod.Shop().open() == "new"
    assert documented.__doc__ == "New doc."
    assert undocumented.__doc__ == "Kept doc."
    assert inner.__doc__ == "Opens."
    registry.rollback()
    assert [(f.__name__, f.__qualname__, f.__module__) for f in funcs] == identity
    assert documented.__doc__ == "Original doc."
    assert undocumented.__doc__ == "Kept doc."
    assert method.__wrapped__ is inner
    assert mod.Shop().open() == "old"


def test_zero_argument_super_in_replaced_method(make_module, write_patch, registry):
    mod = make_module(
        """
        class Base:
            def greet(self):
                return "base"

        class Child(Base):
            def greet(self):
                return "child+" + super().greet()
        """
    )
    child = mod.Child()
    func = vars(mod.Child)["greet"]
    original = func.__code__
    registry.apply(
        load(
            write_patch,
            f"""
            @patch.replace("{mod.__name__}:Child.greet")
            def greet(self):
                return "new child+" + super().greet()
            """,
        )
    )
    assert child.greet() == "new child+base"
    registry.rollback()
    assert func.__code__ is original
    assert child.greet() == "child+base"


def test_zero_argument_super_where_the_original_had_none(make_module, write_patch, registry):
    mod = make_module(
        """
        class Base:
            def greet(self):
                return "base"

        class Child(Base):
            def greet(self):
                return "child"
        """
    )
    child = mod.Child()
    func = vars(mod.Child)["greet"]
    original = func.__code__
    assert "__class__" not in original.co_freevars
    patch = load(
        write_patch,
        f"""
        @patch.replace("{mod.__name__}:Child.greet")
        def greet(self):
            return "child+" + super().greet()
        """,
    )
    assert "super()" in registry.check(patch).modes[f"{mod.__name__}:Child.greet"]
    registry.apply(patch)
    assert child.greet() == "child+base"
    registry.rollback()
    assert func.__code__ is original
    assert child.greet() == "child"


# -- what cannot be a target -------------------------------------------------------------


NOT_PYTHON = """
from collections import OrderedDict
from math import sqrt
from os import getpid

class Cart:
    pass
"""


@pytest.mark.parametrize(
    ("qualname", "what"),
    [
        ("getpid", "builtin"),
        ("sqrt", "C-extension"),
        ("Cart", "replace_class"),
        ("OrderedDict.__init__", "slot wrapper"),
    ],
    ids=["builtin", "c-extension", "class", "slot-wrapper"],
)
def test_not_patchable(make_module, write_patch, registry, qualname, what):
    mod = make_module(NOT_PYTHON)
    before = dict(vars(mod))
    patch = load(
        write_patch,
        f"""
        @patch.replace("{mod.__name__}:{qualname}")
        def replacement(*args):
            return 0
        """,
    )
    with pytest.raises(hotpatch.NotPatchable, match=what) as info:
        registry.apply(patch)
    assert info.value.target == f"{mod.__name__}:{qualname}"
    assert info.value.patch == "1.0.1"
    with pytest.raises(hotpatch.NotPatchable):
        registry.check(patch)
    assert dict(vars(mod)) == before
    assert registry.level == ()


def test_unknown_module_is_target_not_found(write_patch, registry):
    patch = load(
        write_patch,
        """
        @patch.replace("hotpatch_no_such_module_xyz:f")
        def f():
            return 0
        """,
    )
    with pytest.raises(hotpatch.TargetNotFound, match="does not exist") as info:
        registry.apply(patch)
    assert info.value.target == "hotpatch_no_such_module_xyz:f"
    assert registry.level == ()


def test_unknown_qualname_is_target_not_found(make_module, write_patch, registry):
    mod = make_module(CART)
    patch = load(
        write_patch,
        f"""
        @patch.replace("{mod.__name__}:Cart.totl")
        def totl(self):
            return 0
        """,
    )
    with pytest.raises(hotpatch.TargetNotFound, match="'totl'") as info:
        registry.apply(patch)
    assert "inherited" not in str(info.value)
    assert registry.level == ()


def test_inherited_method_target_gives_a_hint(make_module, write_patch, registry):
    mod = make_module(CART + "\nclass BigCart(Cart):\n    pass\n")
    code = vars(mod.Cart)["total"].__code__
    patch = load(
        write_patch,
        f"""
        @patch.replace("{mod.__name__}:BigCart.total")
        def total(self):
            return 0
        """,
    )
    with pytest.raises(hotpatch.TargetNotFound, match="inherited") as info:
        registry.apply(patch)
    assert f"{mod.__name__}:Cart.total" in str(info.value)
    assert vars(mod.Cart)["total"].__code__ is code
    assert "total" not in vars(mod.BigCart)
