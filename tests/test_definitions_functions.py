"""Functions of every kind a user writes (SPEC 11): cached, decorated, wrapped without
``__wrapped__``; each checked through references taken before the patch, after
rollback and after a re-apply."""

from __future__ import annotations

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
