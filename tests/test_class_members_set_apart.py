"""``replace_class`` of a class whose module set a member apart from the class body.

``Foo.bar = _fast_bar`` after the class statement (an accelerated version, a
platform's variant) leaves the class body's ``bar`` unused. A patch class that
restates the class body defines ``bar`` again; set on the running class, it
would put the class body's version back in place of the one the module chose,
which the module's own code sets aside again at a restart. Before, that went in
hot: the service silently went back to the slow path. Now it is refused, naming
the function the module chose and the ways in.
"""

from __future__ import annotations

from refusals import PatchWriter, load, refused

import hotpatch

SHOP = """
import functools


class Prices:
    def total(self, items):
        return sum(items)  # the plain version

    def tax(self, amount):
        return amount // 10


def _fast_total(self, items):
    return sum(items) + 1000  # tells the versions apart


Prices.total = _fast_total
"""


def _prices(mod: str, total: str = "sum(items)", tax: str = "amount // 5") -> str:
    return f"""
    @patch.replace_class("{mod}:Prices")
    class Prices:
        def total(self, items):
            return {total}

        def tax(self, amount):
            return {tax}
    """


def test_a_member_the_module_set_after_the_class_statement_is_not_replaced(
    make_module, write_patch: PatchWriter, registry: hotpatch.Registry
) -> None:
    mod = make_module(SHOP)
    prices = mod.Prices()
    code = mod._fast_total.__code__
    message = refused(registry, load(write_patch, _prices(mod.__name__)), hotpatch.NameConflict)
    assert f"{mod.__name__}:Prices.total" in message
    assert f"{mod.__name__}:_fast_total" in message
    assert "Prices.total = _fast_total after the class statement" in message
    assert f'@patch.replace("{mod.__name__}:_fast_total")' in message
    assert "leave total out of the patch class" in message
    assert "baseline" in message
    # nothing changed: the module's choice, its code, the other method
    assert vars(mod.Prices)["total"] is mod._fast_total
    assert mod._fast_total.__code__ is code
    assert prices.total([1, 2]) == 1003
    assert prices.tax(100) == 10


def test_left_out_the_rest_goes_in_and_the_modules_choice_stays(
    make_module, write_patch: PatchWriter, registry: hotpatch.Registry
) -> None:
    mod = make_module(SHOP)
    patch = load(
        write_patch,
        f"""
        @patch.replace_class("{mod.__name__}:Prices")
        class Prices:
            def tax(self, amount):
                return amount // 5
        """,
    )
    assert registry.check(patch).hot
    registry.apply(patch)
    assert mod.Prices().tax(100) == 20
    assert mod.Prices().total([1, 2]) == 1003
    assert vars(mod.Prices)["total"] is mod._fast_total
    registry.rollback()
    assert mod.Prices().tax(100) == 10


def test_the_function_the_module_chose_patched_by_its_own_name(
    make_module, write_patch: PatchWriter, registry: hotpatch.Registry
) -> None:
    """The way in the refusal names: what runs, patched where it is defined."""
    mod = make_module(SHOP)
    patch = load(
        write_patch,
        f"""
        @patch.replace("{mod.__name__}:_fast_total")
        def _fast_total(self, items):
            return sum(items) + 2000
        """,
    )
    assert registry.check(patch).hot
    registry.apply(patch)
    assert mod.Prices().total([1, 2]) == 2003
    assert mod._fast_total(None, [1]) == 2001


def test_one_borrowed_in_the_class_body_is_refused_alike(
    make_module, write_patch: PatchWriter, registry: hotpatch.Registry
) -> None:
    """``total = _fast_total`` in the body holds the same: only the source's diff knows
    whether the new body's ``def total`` is meant to replace it (a baseline)."""
    mod = make_module(
        """
        def _fast_total(self, items):
            return sum(items) + 1000


        class Prices:
            total = _fast_total

            def tax(self, amount):
                return amount // 10
        """
    )
    message = refused(registry, load(write_patch, _prices(mod.__name__)), hotpatch.NameConflict)
    assert "total = _fast_total in it" in message
    assert mod.Prices().total([1]) == 1001


def test_a_standard_library_helper_is_replaced_by_the_bodys_own(
    make_module, write_patch: PatchWriter, registry: hotpatch.Registry
) -> None:
    """``total_ordering`` gave ``__le__`` from ``__lt__``; a patch class defining ``__le__``
    itself gets it, as a restart of that source would (a class never chose the helper)."""
    mod = make_module(
        """
        import functools


        @functools.total_ordering
        class Version:
            def __init__(self, n):
                self.n = n

            def __eq__(self, other):
                return self.n == other.n

            def __lt__(self, other):
                return self.n < other.n

            __hash__ = None
        """
    )
    patch = load(
        write_patch,
        f"""
        import functools

        @patch.replace_class("{mod.__name__}:Version")
        @functools.total_ordering
        class Version:
            def __init__(self, n):
                self.n = n

            def __eq__(self, other):
                return self.n == other.n

            def __lt__(self, other):
                return self.n < other.n

            def __le__(self, other):
                return "own"

            __hash__ = None
        """,
    )
    assert registry.check(patch).hot
    registry.apply(patch)
    assert (mod.Version(1) <= mod.Version(2)) == "own"


def test_a_method_an_earlier_patch_added_is_changed_by_the_next(
    make_module, write_patch: PatchWriter, registry: hotpatch.Registry
) -> None:
    """A member an applied patch set whole comes from a patch file, not the module: a
    patch class of another name changing it again is hot."""
    mod = make_module(SHOP)
    first = load(
        write_patch,
        f"""
        @patch.replace_class("{mod.__name__}:Prices")
        class PricesFix:
            def discount(self, amount):
                return amount // 2
        """,
    )
    registry.apply(first)
    second = hotpatch.load_patch(
        write_patch(
            "from hotpatch import Patch\n"
            "patch = Patch(version='1.0.2', baseline='1.0')\n"
            f"@patch.replace_class('{mod.__name__}:Prices')\n"
            "class PricesFix2:\n"
            "    def discount(self, amount):\n"
            "        return amount // 4\n",
            name="second.py",
        )
    )
    assert registry.check(second).hot
    registry.apply(second)
    assert mod.Prices().discount(100) == 25
