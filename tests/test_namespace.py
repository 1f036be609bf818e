"""SPEC §3 namespace rule: replacements run in the target module; what they need comes along."""

from __future__ import annotations

import fractions
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


def test_replacement_runs_in_the_module_globals(make_module, write_patch, registry):
    mod = make_module(
        """
        RATE = 2

        def _round(x):
            return int(x)

        def price(x):
            return _round(x * RATE)
        """
    )
    registry.apply(
        load(
            write_patch,
            f"""
            @patch.replace("{mod.__name__}:price")
            def price(x):
                return _round(x * RATE) + 1
            """,
        )
    )
    assert mod.price(3) == 7
    assert mod.price.__globals__ is vars(mod)
    mod.RATE = 10  # a name the module changes after the patch is seen
    assert mod.price(3) == 31
    mod._round = lambda x: -x
    assert mod.price(3) == -29


def test_names_the_patch_brings_are_added_then_removed(make_module, write_patch, registry):
    mod = make_module(
        """
        import math

        def share(total, n):
            return math.floor(total / n)
        """
    )
    added = ("Fraction", "decimal", "SCALE", "_exact")
    assert not any(hasattr(mod, n) for n in added)
    patch = load(
        write_patch,
        f"""
        import decimal
        import math
        from fractions import Fraction

        SCALE = 100
        UNUSED = "not looked up by any replacement"

        def _exact(total, n):
            return total / n

        @patch.replace("{mod.__name__}:share")
        def share(total, n):
            q = Fraction(total, n) * SCALE
            return int(decimal.Decimal(q.numerator) / q.denominator) if _exact(total, n) else 0
        """,
    )
    report = registry.check(patch)
    assert sorted(report.names) == sorted(f"{mod.__name__}.{n}" for n in added)
    assert not any(hasattr(mod, n) for n in added)  # check() changes nothing

    registry.apply(patch)
    assert mod.share(1, 4) == 25
    assert mod.Fraction is fractions.Fraction
    assert mod.SCALE == 100
    assert mod._exact(1, 2) == 0.5
    assert not hasattr(mod, "UNUSED")  # only what a replacement looks up comes along

    registry.rollback()
    assert not any(hasattr(mod, n) for n in added)
    assert hasattr(mod, "math")  # the module's own name stays
    assert mod.share(1, 4) == 0


def test_shadowing_a_different_object_is_a_name_conflict(make_module, write_patch, registry):
    mod = make_module(
        """
        SCALE = 2

        def grow(x):
            return x * SCALE
        """
    )
    code = mod.grow.__code__
    patch = load(
        write_patch,
        f"""
        SCALE = 3

        def _helper(x):
            return x

        @patch.replace("{mod.__name__}:grow")
        def grow(x):
            return _helper(x) * SCALE
        """,
    )
    with pytest.raises(hotpatch.NameConflict, match="'SCALE'") as info:
        registry.apply(patch)
    assert info.value.target == f"{mod.__name__}:grow"
    with pytest.raises(hotpatch.NameConflict):
        registry.check(patch)
    assert mod.grow.__code__ is code
    assert mod.SCALE == 2
    assert not hasattr(mod, "_helper")
    assert registry.level == ()


def test_the_same_object_under_the_same_name_is_no_conflict(make_module, write_patch, registry):
    mod = make_module(
        """
        import math
        from fractions import Fraction

        def half(x):
            return Fraction(x, 2)
        """
    )
    patch = load(
        write_patch,
        f"""
        import math
        from fractions import Fraction

        @patch.replace("{mod.__name__}:half")
        def half(x):
            return Fraction(math.floor(x), 2)
        """,
    )
    assert registry.check(patch).names == ()
    registry.apply(patch)
    assert mod.half(3.7) == fractions.Fraction(3, 2)
    registry.rollback()
    assert mod.Fraction is fractions.Fraction  # the module's own names are never removed
    assert mod.math.floor(1.5) == 1


def test_replacement_functions_are_exempt(make_module, write_patch, registry):
    mod = make_module(
        """
        def fact(n):
            return n if n <= 1 else n * fact(n - 1)
        """
    )
    fact = mod.fact
    assert fact(0) == 0  # the bug being fixed
    registry.apply(
        load(
            write_patch,
            f"""
            CALLS = []

            @patch.replace("{mod.__name__}:fact")
            def fact(n):
                CALLS.append(n)
                return 1 if n <= 1 else n * fact(n - 1)
            """,
        )
    )
    assert mod.fact is fact  # the module's name still holds the original function object
    assert fact(0) == 1
    assert fact(4) == 24
    assert mod.CALLS == [0, 4, 3, 2, 1]  # the recursion runs the new code too
    registry.rollback()
    assert not hasattr(mod, "CALLS")
    assert fact(0) == 0


def test_stacked_patches_with_the_same_helper_name(make_module, write_patch, registry):
    mod = make_module(
        """
        def label(x):
            return str(x)

        def title(x):
            return str(x).title()
        """
    )
    name = mod.__name__
    first = load(
        write_patch,
        f"""
        def _fmt(x):
            return "A:" + str(x)

        @patch.replace("{name}:label")
        def label(x):
            return _fmt(x)
        """,
        version="1.0.1",
    )
    second = load(
        write_patch,
        f"""
        def _fmt(x):
            return "B:" + str(x)

        @patch.replace("{name}:title")
        def title(x):
            return _fmt(x).title()
        """,
        version="1.0.2",
    )
    registry.apply(first)
    first_fmt = mod._fmt
    assert mod.label(1) == "A:1"
    registry.apply(second)  # overrides the helper the earlier patch brought
    assert mod._fmt is not first_fmt
    assert mod._fmt(1) == "B:1"
    assert mod.title("x") == "B:X"
    assert mod.label(1) == "B:1"  # both replacements share the module's one name
    registry.rollback()
    assert mod._fmt is first_fmt
    assert mod.label(1) == "A:1"
    assert mod.title("x") == "X"
    registry.rollback()
    assert not hasattr(mod, "_fmt")
    assert mod.label(1) == "1"


def test_names_used_only_in_nested_code_are_brought(make_module, write_patch, registry):
    mod = make_module(
        """
        def order(items):
            return list(items)
        """
    )
    registry.apply(
        load(
            write_patch,
            f"""
            WEIGHTS = {{"a": 3, "b": 1, "c": 2}}

            def _weight(item):
                return WEIGHTS[item]

            @patch.replace("{mod.__name__}:order")
            def order(items):
                def describe(item):
                    return f"{{item}}{{_weight(item)}}"
                return [describe(i) for i in sorted(items, key=lambda i: _weight(i))]
            """,
        )
    )
    assert mod.order("abc") == ["b1", "c2", "a3"]
    assert hasattr(mod, "_weight")
    assert not hasattr(mod, "WEIGHTS")  # the helper's own global, not a replacement's
    registry.rollback()
    assert not hasattr(mod, "_weight")


def test_helpers_keep_running_in_the_patch_files_namespace(make_module, write_patch, registry):
    mod = make_module(
        """
        SCALE = 1
        OFFSET = 1

        def price(x):
            return x * SCALE
        """
    )
    registry.apply(
        load(
            write_patch,
            f"""
            SCALE = 5  # only the helper reads it: no conflict with the module's SCALE

            def _scaled(x):
                return x * SCALE

            @patch.replace("{mod.__name__}:price")
            def price(x):
                return _scaled(x) + OFFSET
            """,
        )
    )
    assert mod.price(2) == 11  # the helper: 2 * 5 (the patch's SCALE), then the module's OFFSET
    assert mod._scaled.__globals__ is not vars(mod)
    assert mod._scaled.__globals__["SCALE"] == 5
    assert mod.SCALE == 1
    registry.rollback()
    assert mod.price(2) == 2


def test_a_class_statement_in_a_replacement_reads_the_modules_own_name(
    make_module, write_patch, registry
):
    # A class body looks up ``__name__`` (for its ``__module__``): the module's own
    # attribute, never a name to bring from the patch file nor a conflict with it.
    mod = make_module(
        """
        def line(total):
            return total
        """
    )
    registry.apply(
        load(
            write_patch,
            f"""
            @patch.replace("{mod.__name__}:line")
            def line(total):
                class Line:
                    def __init__(self, total):
                        self.total = total
                return Line(total)
            """,
        )
    )
    made = mod.line(3)
    assert made.total == 3
    assert type(made).__module__ == mod.__name__
    assert vars(mod)["__name__"] == mod.__name__
    registry.rollback()
    assert mod.line(3) == 3


def test_a_function_named_through_a_module_that_imports_it_is_refused(
    make_module, write_patch, registry
):
    # ``from impl import price`` in a facade: the function's code looks its global names
    # up in impl, where it was written. Named as ``facade:price``, the patch brought TAX
    # into the facade and put the new code into the function, which ran in impl: check()
    # said hot, and every call raised NameError.
    impl = make_module(
        """
        RATE = 2

        def price(x):
            return x * RATE
        """
    )
    facade = make_module(f"from {impl.__name__} import price\n")
    body = """
        TAX = 3

        @patch.replace("{module}:price")
        def price(x):
            return x * RATE * TAX
        """
    patch = load(write_patch, body.format(module=facade.__name__))
    with pytest.raises(hotpatch.NotPatchable) as checked:
        registry.check(patch)
    with pytest.raises(hotpatch.NotPatchable) as applied:
        registry.apply(patch)
    message = str(applied.value)
    assert message == str(checked.value)
    assert applied.value.target == f"{facade.__name__}:price"
    assert f"written in module {impl.__name__}" in message
    assert f"@patch.replace('{impl.__name__}:price')" in message
    assert facade.price(1) == 2
    assert not hasattr(facade, "TAX")
    assert registry.level == ()
    # named where it was written, it goes in, and every reference sees it
    registry.apply(load(write_patch, body.format(module=impl.__name__)))
    assert facade.price(1) == impl.price(1) == 6
    registry.rollback()
    assert facade.price(1) == 2
    assert not hasattr(impl, "TAX")


def test_a_class_named_through_a_module_that_imports_it_is_refused(
    make_module, write_patch, registry
):
    # A package re-exporting its classes (bidict sets their __module__ to the package's
    # name too): their methods run in the module the class statement was written in.
    impl = make_module(
        """
        RATE = 2

        class Cart:
            def total(self):
                return RATE
        """
    )
    facade = make_module(f"from {impl.__name__} import Cart\nCart.__module__ = __name__\n")
    body = """
        TAX = 3

        @patch.replace_class("{module}:Cart")
        class Cart:
            def total(self):
                return RATE * TAX

            def taxed(self):
                return TAX
        """
    patch = load(write_patch, body.format(module=facade.__name__))
    with pytest.raises(hotpatch.NotPatchable) as checked:
        registry.check(patch)
    with pytest.raises(hotpatch.NotPatchable) as applied:
        registry.apply(patch)
    message = str(applied.value)
    assert message == str(checked.value)
    assert f"written in module {impl.__name__}" in message
    assert f"@patch.replace_class('{impl.__name__}:Cart')" in message
    assert facade.Cart().total() == 2
    assert not hasattr(facade.Cart, "taxed")
    registry.apply(load(write_patch, body.format(module=impl.__name__)))
    assert (facade.Cart().total(), facade.Cart().taxed()) == (6, 3)
    registry.rollback()
    assert facade.Cart().total() == 2
    assert not hasattr(impl, "TAX")
