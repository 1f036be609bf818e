"""Functions of every kind a user writes (SPEC 11): cached, decorated, wrapped without
``__wrapped__``; each checked through references taken before the patch, after
rollback and after a re-apply."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

import hotpatch

PatchWriter = Callable[..., Path]
HEADER = "from hotpatch import Patch\npatch = Patch(version={version!r}, baseline='1.0')\n"


def load(write_patch: PatchWriter, body: str, version: str = "1.0.1") -> hotpatch.Patch:
    """A real patch file: the standard header, then ``body`` (dedented)."""
    return hotpatch.load_patch(write_patch(HEADER.format(version=version) + textwrap.dedent(body)))


# -- caches ----------------------------------------------------------------------------


CACHED = """
import functools

CALLS = []

@functools.{decorator}
def price(x):
    CALLS.append(x)
    return x * 2
"""


@pytest.mark.parametrize("decorator", ["cache", "lru_cache", "lru_cache(maxsize=8)"])
def test_cached_function_serves_no_old_answer_after_apply_or_rollback(
    make_module, write_patch, registry, decorator
):
    mod = make_module(CACHED.format(decorator=decorator))
    price = mod.price  # a reference taken before the patch
    assert price(3) == 6
    patch = load(
        write_patch,
        f"""
        @patch.replace("{mod.__name__}:price")
        def price(x):
            return x * 4
        """,
    )
    assert registry.check(patch).hot
    registry.apply(patch)
    assert mod.price is price
    assert price(3) == 12  # not the cached 6 of the old code
    assert price(4) == 16
    assert price.cache_info().currsize == 2
    registry.rollback()
    assert price(3) == 6  # not the cached 12 of the rolled-back code
    assert price(4) == 8
    registry.apply(
        load(
            write_patch,
            f'@patch.replace("{mod.__name__}:price")\ndef price(x):\n    return x * 5\n',
            version="1.0.2",
        )
    )
    assert price(3) == 15


def test_cache_under_a_decorator_and_on_a_method_is_cleared(make_module, write_patch, registry):
    mod = make_module(
        """
        import functools

        def logged(fn):
            @functools.wraps(fn)
            def wrapper(*args, **kwargs):
                return fn(*args, **kwargs)
            return wrapper

        @logged
        @functools.lru_cache(maxsize=None)
        def rate(region):
            return {"eu": 20}.get(region, 0)

        class Shop:
            @functools.cache
            def fee(self, n):
                return n

            @classmethod
            @functools.cache
            def base(cls):
                return 1
        """
    )
    shop = mod.Shop()
    assert (mod.rate("eu"), shop.fee(2), mod.Shop.base()) == (20, 2, 1)
    patch = load(
        write_patch,
        f"""
        @patch.replace("{mod.__name__}:rate")
        def rate(region):
            return {{"eu": 21}}.get(region, 0)

        @patch.replace("{mod.__name__}:Shop.fee")
        def fee(self, n):
            return n * 10

        @patch.replace("{mod.__name__}:Shop.base")
        def base(cls):
            return 2
        """,
    )
    registry.apply(patch)
    assert (mod.rate("eu"), shop.fee(2), mod.Shop.base()) == (21, 20, 2)
    registry.rollback()
    assert (mod.rate("eu"), shop.fee(2), mod.Shop.base()) == (20, 2, 1)


def test_cumulative_patch_clears_the_caches_of_what_it_replaces(make_module, write_patch, registry):
    mod = make_module(CACHED.format(decorator="cache") + "\ndef other():\n    return 0\n")
    registry.apply(
        load(write_patch, f'@patch.replace("{mod.__name__}:price")\ndef price(x):\n    return x\n')
    )
    assert mod.price(3) == 3
    cumulative = HEADER.replace(")", ", cumulative=True)", 1).format(version="1.0.2")
    path = write_patch(
        cumulative + f'@patch.replace("{mod.__name__}:other")\ndef other():\n    return 1\n'
    )
    registry.apply(hotpatch.load_patch(path))  # price goes back to the baseline's code
    assert mod.price(3) == 6
    registry.rollback()  # back to 1.0.1
    assert mod.price(3) == 3


CACHED_PROPERTY = """
import functools

class Order:
    def __init__(self, n):
        self.n = n

    @functools.cached_property
    def total(self):
        return self.n * 2
"""


@pytest.mark.parametrize("written_as", ["plain", "cached_property"])
def test_cached_property_getter_patches_values_already_cached_stay(
    make_module, write_patch, registry, written_as
):
    mod = make_module(CACHED_PROPERTY)
    seen = mod.Order(3)
    assert seen.total == 6  # cached on the instance
    unseen = mod.Order(3)
    decorator = "@functools.cached_property" if written_as == "cached_property" else ""
    patch = load(
        write_patch,
        f"""
        import functools

        @patch.replace("{mod.__name__}:Order.total")
        {decorator}
        def total(self):
            return self.n * 3
        """,
    )
    assert registry.check(patch).hot
    registry.apply(patch)
    assert unseen.total == 9
    assert mod.Order(3).total == 9
    assert seen.total == 6  # documented: a value already cached stays until dropped
    del seen.total
    assert seen.total == 9
    registry.rollback()
    assert mod.Order(3).total == 6
    assert unseen.total == 9  # cached under the patch; stays too


# -- decorators ------------------------------------------------------------------------


WRAPS = """
import functools

CALLS = []

def logged(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        CALLS.append("logged")
        return fn(*args, **kwargs)
    return wrapper

def timed(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        CALLS.append("timed")
        return fn(*args, **kwargs)
    return wrapper

@logged
@timed
def crunch(x):
    return x + 1

class Mill:
    @logged
    @timed
    def grind(self, x):
        return x + 1

HANDLERS = {"crunch": crunch}
"""


def test_stacked_wraps_decorators_keep_applying_for_every_old_reference(
    make_module, write_patch, registry
):
    mod = make_module(WRAPS)
    outer, inner = mod.crunch, mod.crunch.__wrapped__.__wrapped__
    inner_code = inner.__code__
    grind = mod.Mill().grind  # a bound method taken before the patch
    held = [mod.crunch.__wrapped__]  # the middle wrapper, held on its own
    patch = load(
        write_patch,
        f"""
        @patch.replace("{mod.__name__}:crunch")
        def crunch(x):
            return x + 100

        @patch.replace("{mod.__name__}:Mill.grind")
        def grind(self, x):
            return x + 100
        """,
    )
    registry.apply(patch)
    mod.CALLS.clear()
    assert (outer(1), mod.HANDLERS["crunch"](1), held[0](1), grind(1)) == (101, 101, 101, 101)
    assert mod.CALLS == ["logged", "timed", "logged", "timed", "timed", "logged", "timed"]
    assert mod.crunch is outer
    assert outer.__wrapped__.__wrapped__ is inner
    registry.rollback()
    assert inner.__code__ is inner_code
    assert (outer(1), grind(1)) == (2, 2)
    registry.apply(load(write_patch, patch_source(mod.__name__, "crunch", "x + 7"), "1.0.2"))
    assert outer(1) == 8


def patch_source(module: str, name: str, body: str) -> str:
    return f'@patch.replace("{module}:{name}")\ndef {name}(x):\n    return {body}\n'


NO_WRAPS = """
CALLS = []

def logged(fn):
    def wrapper(*args):
        CALLS.append("logged")
        return fn(*args)
    return wrapper

def twice(fn):
    def run(*args):
        CALLS.append("twice")
        return fn(*args) * 2
    return run

@twice
@logged
def munch(x):
    return x + 1
"""


@pytest.mark.parametrize("params", ["x", "*args"])
def test_wrapper_without_wrapped_is_refused_and_named(make_module, write_patch, registry, params):
    mod = make_module(NO_WRAPS)
    outer = mod.munch
    code = outer.__code__
    patch = load(
        write_patch,
        f"""
        @patch.replace("{mod.__name__}:munch")
        def munch({params}):
            return 0
        """,
    )
    for attempt in (registry.check, registry.apply):
        with pytest.raises(hotpatch.NotPatchable) as info:
            attempt(patch)
        message = str(info.value)
        assert info.value.target == f"{mod.__name__}:munch"
        assert f"{mod.__name__}:twice.<locals>.run" in message  # what it is
        assert f"{mod.__name__}:logged.<locals>.wrapper" in message
        assert "functools.wraps" in message  # the ways in
        assert f"target {mod.__name__}:twice.<locals>.run" in message
        assert "def munch(*args)" not in message
    assert outer.__code__ is code  # never dropped
    assert outer(1) == 4
    assert mod.CALLS == ["twice", "logged"]
    assert registry.level == ()


def test_wrapper_without_wrapped_under_one_with_it_is_refused(make_module, write_patch, registry):
    mod = make_module(
        """
        import functools

        def plain(fn):
            def inner_wrapper(*args):
                return fn(*args)
            return inner_wrapper

        def wrapping(fn):
            @functools.wraps(fn)
            def outer_wrapper(*args):
                return fn(*args)
            return outer_wrapper

        class Kiln:
            @wrapping
            @plain
            def fire(self, x):
                return x
        """
    )
    patch = load(
        write_patch,
        f"""
        @patch.replace("{mod.__name__}:Kiln.fire")
        def fire(self, x):
            return 0
        """,
    )
    with pytest.raises(hotpatch.NotPatchable, match=r"plain\.<locals>\.inner_wrapper") as info:
        registry.apply(patch)
    assert "Kiln.fire" in str(info.value)
    assert "outer_wrapper" not in str(info.value)  # it keeps __wrapped__: not in the way


def test_function_made_by_a_factory_is_still_a_target(make_module, write_patch, registry):
    """A closure a factory returned is no wrapper: it holds no function of the target's name."""
    mod = make_module(
        """
        def make_handler(callback):
            def handler(x):
                return callback(x) + 1
            return handler

        def double(x):
            return x * 2

        handle = make_handler(double)
        """
    )
    registry.apply(load(write_patch, patch_source(mod.__name__, "handle", "callback(x) + 2")))
    assert mod.handle(1) == 4
    registry.rollback()
    assert mod.handle(1) == 3


# -- the same rules for the methods of a replace_class -------------------------------------


def test_replace_class_clears_caches_and_refuses_hidden_wrappers(
    make_module, write_patch, registry
):
    mod = make_module(
        """
        import functools

        def plain(fn):
            def wrapper(*args):
                return fn(*args)
            return wrapper

        def keep(fn):
            @functools.wraps(fn)
            def wrapper(*args):
                return fn(*args)
            return wrapper

        class Till:
            @keep
            @functools.lru_cache(maxsize=None)
            def rate(self, n):
                return n

        class Drawer:
            @plain
            def count(self, n):
                return n
        """
    )
    till = mod.Till()
    assert till.rate(2) == 2
    registry.apply(
        load(
            write_patch,
            f"""
            @patch.replace_class("{mod.__name__}:Till")
            class Till:
                def rate(self, n):
                    return n * 10
            """,
        )
    )
    assert till.rate(2) == 20  # not the cached 2
    registry.rollback()
    assert till.rate(2) == 2
    hidden = load(
        write_patch,
        f"""
        @patch.replace_class("{mod.__name__}:Drawer")
        class Drawer:
            def count(self, n):
                return 0
        """,
        version="1.0.2",
    )
    for attempt in (registry.check, registry.apply):
        with pytest.raises(hotpatch.NotPatchable, match=r"plain\.<locals>\.wrapper"):
            attempt(hidden)
    assert mod.Drawer().count(3) == 3


# -- code whose name is no identifier (lambda, <module>) -------------------------------------


LAMBDAS = """
import types

price = lambda x: x * 2  # noqa: E731

class Shape:
    area = lambda self, k=1: 3 * k  # noqa: E731

# a function made from a module's code object (what exec() runs): its code is named <module>
made = types.FunctionType(compile("40 + 2", "<made>", "eval"), {})
"""


@pytest.mark.parametrize(
    "case",
    [
        ("price", "def price(x, extra=0):\n    return x * 3 + extra", 6),
        ("Shape.area", "def area(self, k=1, *, bonus=0):\n    return 4 * k + bonus", 4),
        ("made", "def made(*args):\n    return len(args)", 0),
    ],
    ids=["lambda", "lambda-method", "module-code"],
)
def test_lambda_and_module_code_targets_take_a_widened_signature(
    make_module, write_patch, registry, case
):
    """The trampoline of a widened signature is generated code: ``<lambda>`` and
    ``<module>`` are no names to write a ``def`` with, yet the target patches hot."""
    target, replacement, new = case
    mod = make_module(LAMBDAS)
    shape = mod.Shape()
    call = {"price": lambda: mod.price(2), "Shape.area": shape.area, "made": mod.made}[target]
    function = {"price": mod.price, "Shape.area": mod.Shape.area, "made": mod.made}[target]
    code = function.__code__
    assert code.co_name in ("<lambda>", "<module>")
    before = call()
    patch = load(write_patch, patch_text(mod.__name__, target, replacement))
    report = registry.check(patch)
    assert report.hot, report.reasons
    registry.apply(patch)
    assert call() == new
    if target == "price":
        assert mod.price(2, extra=1) == 7  # the new parameter is reachable
    if target == "Shape.area":
        assert shape.area(2, bonus=1) == 9
    registry.rollback()
    assert call() == before
    assert function.__code__ is code
    registry.apply(load(write_patch, patch_text(mod.__name__, target, replacement), "1.0.2"))
    assert call() == new


def patch_text(module: str, target: str, replacement: str) -> str:
    return f'@patch.replace("{module}:{target}")\n{replacement}\n'


def test_lambda_target_with_a_changed_signature_and_under_a_wrap(
    make_module, write_patch, registry
):
    """signature_change=True on a lambda, and a wrap() (the health gate's trampoline) of it."""
    mod = make_module(LAMBDAS)
    price = mod.price
    changed = hotpatch.load_patch(
        write_patch(
            HEADER.replace(")", ", signature_change=True)", 1).format(version="1.0.1")
            + f'@patch.replace("{mod.__name__}:price")\ndef price(x, y):\n    return x + y\n'
        )
    )
    assert registry.check(changed).hot
    registry.apply(changed)
    assert price(2, 3) == 5
    seen: list[str] = []

    def wrapper(function, impl):
        def counted(*args, **kwargs):
            seen.append(function.__name__)
            return impl(*args, **kwargs)

        return counted

    unwrap = registry.wrap("1.0.1", wrapper)
    assert price(2, 4) == 6
    assert seen == ["<lambda>"]
    unwrap()
    assert price(1, 1) == 2
    assert seen == ["<lambda>"]
    registry.rollback()
    assert price(2) == 4


# -- a replacement written under the target's decorators ---------------------------------


def test_replacement_under_the_same_decorators_patches_the_function_once_wrapped(
    make_module, write_patch, registry
):
    """Written as the module writes it (``@logged @timed``, ``@lru_cache``), the
    replacement stands for the function under the decorators: they keep applying, once."""
    mod = make_module(WRAPS + "\n" + CACHED.format(decorator="lru_cache(maxsize=8)"))
    outer = mod.crunch
    assert mod.price(3) == 6
    patch = load(
        write_patch,
        f"""
        import functools
        from {mod.__name__} import logged, timed

        @patch.replace("{mod.__name__}:crunch")
        @logged
        @timed
        def crunch(x):
            return x + 100

        @patch.replace("{mod.__name__}:price")
        @functools.lru_cache(maxsize=8)
        def price(x):
            return x * 4
        """,
    )
    assert registry.check(patch).hot
    registry.apply(patch)
    mod.CALLS.clear()
    assert outer(1) == 101
    assert mod.CALLS == ["logged", "timed"]  # not twice over
    assert mod.price(3) == 12  # the cache of the old answers is cleared
    registry.rollback()
    mod.CALLS.clear()
    assert outer(1) == 2
    assert mod.CALLS == ["logged", "timed"]
    assert mod.price(3) == 6


def test_replacement_under_other_decorators_is_refused(make_module, write_patch, registry):
    mod = make_module(WRAPS)
    outer = mod.crunch
    patch = load(
        write_patch,
        f"""
        from {mod.__name__} import logged, timed

        @patch.replace("{mod.__name__}:crunch")
        @timed
        def crunch(x):
            return x + 100
        """,
    )
    for attempt in (registry.check, registry.apply):
        with pytest.raises(hotpatch.VerificationFailed) as info:
            attempt(patch)
        message = str(info.value)
        assert info.value.target == f"{mod.__name__}:crunch"
        assert "timed.<locals>.wrapper" in message  # what the replacement is written under
        assert "logged.<locals>.wrapper, timed.<locals>.wrapper" in message  # what runs
        assert "plain" in message  # the way in
    mod.CALLS.clear()
    assert outer(1) == 2
    assert mod.CALLS == ["logged", "timed"]
    assert registry.level == ()


# -- singledispatch implementations registered as `_` --------------------------------------


DISPATCH = """
import decimal
import functools

class Cart:
    pass

@functools.singledispatch
def show(x):
    return "any"

@show.register
def _(x: int):
    return "int"

@show.register
def _(x: str):
    return "str"

@show.register(decimal.Decimal)
def _(x):
    return "decimal"

@show.register
def _(x: Cart):
    return "cart"

class Shelf:
    @functools.singledispatchmethod
    def label(self, x):
        return "any"

    @label.register
    def _(self, x: int):
        return "int"
"""


def shown(mod):
    return (mod.show(None), mod.show(1), mod.show("s"), mod.show(mod.decimal.Decimal(1)))


@pytest.mark.parametrize(
    "case",
    [
        ("int", ("any", "INT", "str", "decimal")),
        ("builtins.int", ("any", "INT", "str", "decimal")),
        ("decimal.Decimal", ("any", "int", "str", "INT")),
        ("object", ("INT", "int", "str", "decimal")),
    ],
    ids=["int", "builtins.int", "module-qualified", "default"],
)
def test_singledispatch_implementation_registered_as_underscore_is_a_target(
    make_module, write_patch, registry, case
):
    """``mod:show.registry[int]`` names what ``show.registry[int]`` holds: patched in
    place, so the dispatch and every reference taken before run the new code."""
    type_name, after = case
    mod = make_module(DISPATCH)
    show, impl = mod.show, mod.show.registry[int]
    code = impl.__code__
    patch = load(
        write_patch,
        f"""
        @patch.replace("{mod.__name__}:show.registry[{type_name}]")
        def _(x):
            return "INT"
        """,
    )
    assert registry.check(patch).hot
    registry.apply(patch)
    assert shown(mod) == after
    assert mod.show is show
    assert mod.show.registry[int] is impl
    registry.rollback()
    assert shown(mod) == ("any", "int", "str", "decimal")
    assert impl.__code__ is code
    registry.apply(patch)
    assert shown(mod) == after


def test_singledispatch_registry_targets_a_user_class_and_a_method(
    make_module, write_patch, registry
):
    mod = make_module(DISPATCH)
    shelf = mod.Shelf()
    bound = shelf.label
    patch = load(
        write_patch,
        f"""
        @patch.replace("{mod.__name__}:show.registry[Cart]")
        def _(x):
            return "CART"

        @patch.replace("{mod.__name__}:Shelf.label.registry[int]")
        def _(self, x):
            return "INT"
        """,
    )
    registry.apply(patch)
    assert (mod.show(mod.Cart()), bound(1), shelf.label("s"), mod.Shelf().label(2)) == (
        "CART",
        "INT",
        "any",
        "INT",
    )
    registry.rollback()
    assert (mod.show(mod.Cart()), bound(1)) == ("cart", "int")


@pytest.mark.parametrize(
    "case",
    [
        ("show.registry[bool]", hotpatch.TargetNotFound, "show.registry[int]"),
        ("show.registry[float]", hotpatch.TargetNotFound, "show.registry[object]"),
        ("show.registry[Nope]", hotpatch.TargetNotFound, "registered: object, int, str"),
        ("Cart.registry[int]", hotpatch.NotPatchable, "not a singledispatch"),
        ("show.registry[int]x", hotpatch.TargetNotFound, "has no attribute 'registry[int]x'"),
    ],
    ids=["dispatched-elsewhere", "default", "unknown", "not-singledispatch", "trailing"],
)
def test_singledispatch_registry_refusals_name_what_is_registered(
    make_module, write_patch, registry, case
):
    target, error, hint = case
    mod = make_module(DISPATCH)
    patch = load(
        write_patch,
        f"""
        @patch.replace("{mod.__name__}:{target}")
        def _(x):
            return 0
        """,
    )
    for attempt in (registry.check, registry.apply):
        with pytest.raises(error) as info:
            attempt(patch)
        assert info.value.target == f"{mod.__name__}:{target}"
        assert hint in str(info.value)
    assert shown(mod) == ("any", "int", "str", "decimal")
    assert registry.level == ()


MADE_INSIDE = """
import functools

def make_show(prefix):
    @functools.singledispatch
    def show(x):
        return prefix + "any"

    @show.register
    def show_int(x: int):
        return prefix + "int"

    @show.register
    def _(x: str):
        return prefix + "str"

    return show

shown = make_show("> ")  # a dispatcher made before the patch
"""


def test_a_registry_target_of_a_dispatcher_made_inside_a_function_is_refused_with_the_way_in(
    make_module, write_patch, registry
):
    """Each call of ``make_show`` makes a dispatcher of its own: ``registry[int]`` is one
    function in each, so the refusal names the nested functions that are the way in."""
    from hotpatch.agent._verify import verify_in_child

    mod = make_module(MADE_INSIDE)
    target = f"{mod.__name__}:make_show.<locals>.show.registry[int]"
    patch = load(write_patch, f'@patch.replace("{target}")\ndef _(x):\n    return 0\n')
    for attempt in (registry.check, registry.apply):
        with pytest.raises(hotpatch.NotPatchable) as info:
            attempt(patch)
        assert info.value.target == target
        message = str(info.value)
        assert f"{mod.__name__}:make_show.<locals>.show_int" in message  # the way in
        assert "make_show.<locals>._" in message
        assert f"patch {mod.__name__}:make_show itself" in message
    assert registry.level == ()
    assert (mod.shown(1), mod.shown("s")) == ("> int", "> str")
    assert patch.source is not None
    with pytest.raises(hotpatch.VerificationFailed, match="made inside"):
        verify_in_child(patch.source.path, sys_path=list(sys.path), timeout=30)

    typo = f"{mod.__name__}:make_show.<locals>.shw.registry[int]"
    with pytest.raises(hotpatch.TargetNotFound, match=r"make_show\.<locals>\.show_int"):
        registry.check(load(write_patch, f'@patch.replace("{typo}")\ndef _(x):\n    return 0\n'))

    # The way in: the implementation by the name of its def, in every dispatcher.
    way_in = load(
        write_patch,
        f"""
        @patch.replace("{mod.__name__}:make_show.<locals>.show_int")
        def show_int(x):
            return prefix + "INT"
        """,
        version="1.0.2",
    )
    result = registry.apply(way_in)
    assert result.patched[f"{mod.__name__}:make_show.<locals>.show_int"] == 1
    assert (mod.shown(1), mod.shown("s"), mod.make_show("")(2)) == ("> INT", "> str", "INT")
    registry.rollback()
    assert (mod.shown(1), mod.make_show("")(2)) == ("> int", "int")


def test_the_verifier_resolves_a_registry_target(make_module, write_patch):
    """A dropped patch is checked in a child first: a registered type passes, another not."""
    from hotpatch.agent._verify import verify_in_child

    mod = make_module(DISPATCH)
    text = '@patch.replace("{mod}:show.registry[{t}]")\ndef _(x):\n    return 0\n'
    good = write_patch(HEADER.format(version="1.0.1") + text.format(mod=mod.__name__, t="Cart"))
    report = verify_in_child(good, sys_path=list(sys.path), timeout=30)
    assert report.targets == (f"{mod.__name__}:show.registry[Cart]",)
    bad = write_patch(HEADER.format(version="1.0.1") + text.format(mod=mod.__name__, t="bytes"))
    with pytest.raises(hotpatch.VerificationFailed, match="no implementation is registered"):
        verify_in_child(bad, sys_path=list(sys.path), timeout=30)


def test_two_targets_naming_one_function_are_refused(make_module, write_patch, registry):
    """``show.registry[int]`` and ``show.registry[builtins.int]``, or an alias: one
    function, two replacements; one would win silently."""
    mod = make_module(DISPATCH + "\nalias = show.registry[str]\n")
    patch = load(
        write_patch,
        f"""
        @patch.replace("{mod.__name__}:show.registry[int]")
        def _(x):
            return 1

        @patch.replace("{mod.__name__}:show.registry[builtins.int]")
        def _(x):
            return 2

        @patch.replace("{mod.__name__}:show.registry[str]")
        def _(x):
            return 3

        @patch.replace("{mod.__name__}:alias")
        def alias(x):
            return 4
        """,
    )
    for attempt in (registry.check, registry.apply):
        with pytest.raises(hotpatch.VerificationFailed, match="the same function") as info:
            attempt(patch)
        message = str(info.value)
        assert f"{mod.__name__}:show.registry[int]" in message
        assert f"{mod.__name__}:show.registry[builtins.int]" in message
    assert shown(mod) == ("any", "int", "str", "decimal")
