"""A replacement reading a name that nothing defines is refused when it is checked.

A replacement runs in its module's namespace. A name it reads that neither the
module, nor the patch file, nor the builtins define (a typo, a helper not
copied, the body of a decorator's wrapper copied in place of the function:
``repr_running``, a variable of the wrapper's closure) raised NameError on
every call, while ``check()`` said hot. Now it is refused, naming the names.
A name the original reads too (a global set later, ``global _instance`` in an
init function) or that the replacement itself assigns is not refused.
"""

from __future__ import annotations

import pytest
from refusals import load

import hotpatch

SERVICE = """
def total(items):
    return sum(items)

def instance():
    return _instance

def init():
    global _instance
    _instance = "ready"

class Cart:
    def count(self, items):
        return len(items)
"""


def test_a_name_nothing_defines_is_refused(make_module, write_patch, registry):
    mod = make_module(SERVICE)
    patch = load(
        write_patch,
        f"""
        @patch.replace("{mod.__name__}:total")
        def total(items):
            return sum(itmes) + rounding(0)

        class Cart:
            @patch.replace("{mod.__name__}:Cart.count")
            def count(self, items):
                return len(items) + offset
        """,
    )
    for attempt in (registry.check, registry.apply):
        with pytest.raises(hotpatch.VerificationFailed) as info:
            attempt(patch)
        msg = str(info.value)
        assert "itmes" in msg
        assert "rounding" in msg
        assert "NameError" in msg
    assert not registry.level
    assert mod.total([1, 2]) == 3


def test_a_name_the_original_reads_or_the_replacement_assigns_goes_in(
    make_module, write_patch, registry
):
    mod = make_module(SERVICE)
    patch = load(
        write_patch,
        f"""
        @patch.replace("{mod.__name__}:instance")
        def instance():
            return _instance + "!"

        @patch.replace("{mod.__name__}:init")
        def init():
            global _instance, _count
            _instance = "ready"
            _count = 1
            return _count
        """,
    )
    registry.apply(patch)
    mod.init()
    assert mod.instance() == "ready!"


def test_names_from_the_patch_file_and_the_builtins_go_in(make_module, write_patch, registry):
    mod = make_module(SERVICE)
    patch = load(
        write_patch,
        f"""
        import math

        def rounding(x):
            return math.floor(x)

        @patch.replace("{mod.__name__}:total")
        def total(items):
            return rounding(sum(items)) + len(items) - len(items)
        """,
    )
    registry.apply(patch)
    assert mod.total([1.5, 2]) == 3


def test_a_nested_replacement_reading_a_name_nothing_defines_is_refused(
    make_module, write_patch, registry
):
    mod = make_module(
        """
def make_adder(n):
    def add(x):
        return x + n
    return add
"""
    )
    patch = load(
        write_patch,
        f"""
        @patch.replace("{mod.__name__}:make_adder.<locals>.add")
        def add(x):
            return x + n + bonus
        """,
    )
    with pytest.raises(hotpatch.VerificationFailed, match="bonus"):
        registry.check(patch)


def test_a_name_a_migration_of_the_module_defines_goes_in(make_module, write_patch, registry):
    # The migration runs in the switch, after the check: what it defines is not there yet.
    mod = make_module(SERVICE)
    patch = load(
        write_patch,
        f"""
        @patch.migrate("{mod.__name__}")
        def add_limits(module):
            module.LIMITS = {{"total": 10}}

        @patch.unmigrate("{mod.__name__}")
        def drop_limits(module):
            del module.LIMITS

        @patch.replace("{mod.__name__}:total")
        def total(items):
            return min(sum(items), LIMITS["total"])
        """,
    )
    registry.apply(patch)
    assert mod.total([7, 8]) == 10
    registry.rollback()
    assert not hasattr(mod, "LIMITS")
