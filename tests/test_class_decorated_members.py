"""`replace_class` members written under the decorators the running member runs under,
when a decorator is not Python code (`functools.lru_cache`, `functools.cache`).

README's class table says a decorated method written plain or under the same
decorators patches the function they wrap, the wrappers staying. With a C
wrapper that was not so: a method was swapped whole, so a bound method or any
reference taken before the patch kept the old code (silently), and a property
over a cache was refused as "not a Python function". Found by patching
ipaddress's classes by their own source (`@property @functools.lru_cache()`).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

import hotpatch

PatchWriter = Callable[..., Path]
HEADER = (
    "import functools\nfrom hotpatch import Patch\npatch = Patch(version='1.0.1', baseline='1.0')\n"
)

CACHED = """
import functools

class Addr:
    def __init__(self, v):
        self.v = v

    def __hash__(self):
        return hash(self.v)

    def __eq__(self, other):
        return self.v == other.v

    @property
    @functools.lru_cache()
    def is_private(self):
        return self.v < 10

    @functools.lru_cache()
    def twice(self, x):
        return 2 * x
"""


def load(write_patch: PatchWriter, body: str) -> hotpatch.Patch:
    return hotpatch.load_patch(write_patch(HEADER + textwrap.dedent(body)))


@pytest.mark.parametrize(
    "decorator", ["functools.lru_cache()", "functools.lru_cache(maxsize=None)"]
)
def test_a_cached_method_written_under_its_cache_is_patched_under_the_running_cache(
    make_module, write_patch, registry, decorator
):
    mod = make_module(
        CACHED.replace("@functools.lru_cache()\n    def twice", f"@{decorator}\n    def twice")
    )
    calc = mod.Addr(1)
    bound = calc.twice  # references taken before the patch
    member = mod.Addr.__dict__["twice"]
    assert bound(2) == 4
    patch = load(
        write_patch,
        f"""
        @patch.replace_class("{mod.__name__}:Addr")
        class Addr:
            @{decorator}
            def twice(self, x):
                return 3 * x
        """,
    )
    assert registry.check(patch).hot
    registry.apply(patch)
    assert mod.Addr.__dict__["twice"] is member  # the running cache stays, once
    assert bound(2) == 6  # not the cached 4, not the old code
    assert calc.twice(5) == 15
    registry.rollback()
    assert bound(2) == 4


def test_a_property_over_a_cache_written_alike_is_patched_under_the_running_cache(
    make_module, write_patch, registry
):
    mod = make_module(CACHED)
    addr = mod.Addr(7)
    assert addr.is_private
    patch = load(
        write_patch,
        f"""
        @patch.replace_class("{mod.__name__}:Addr")
        class Addr:
            @property
            @functools.lru_cache()
            def is_private(self):
                return self.v < 5
        """,
    )
    assert registry.check(patch).hot
    registry.apply(patch)
    assert not addr.is_private  # the cache was cleared: not the old True
    assert mod.Addr(3).is_private
    registry.rollback()
    assert addr.is_private


def test_a_method_written_under_another_decorator_than_its_running_one_is_refused(
    make_module, write_patch, registry
):
    mod = make_module(CACHED)
    patch = load(
        write_patch,
        f"""
        @patch.replace_class("{mod.__name__}:Addr")
        class Addr:
            @functools.cache
            @functools.lru_cache()
            def twice(self, x):
                return 3 * x
        """,
    )
    with pytest.raises(hotpatch.PatchError, match="twice"):
        registry.check(patch)
    assert mod.Addr(1).twice(2) == 4


def test_a_cache_added_to_a_plain_method_is_refused_naming_the_way_in(
    make_module, write_patch, registry
):
    """Before, the member was swapped whole: references taken before kept the old code."""
    mod = make_module(CACHED + "\n    def plain(self, x):\n        return 2 * x\n")
    bound = mod.Addr(1).plain
    patch = load(
        write_patch,
        f"""
        @patch.replace_class("{mod.__name__}:Addr")
        class Addr:
            @functools.lru_cache()
            def plain(self, x):
                return 3 * x
        """,
    )
    with pytest.raises(hotpatch.VerificationFailed, match="adding a decorator needs a baseline"):
        registry.check(patch)
    assert bound(2) == 4
