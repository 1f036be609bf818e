"""Defaults that name a value the patch file restates instead of the running one.

A default is evaluated where its def is written. A method copied into a patch
file with its ``default=__marker`` needs the class's ``__marker`` to import, and a
user restates it (``__marker = object()``) in the class holding the def: the
default is then a new object, which the body, comparing it with the running
class's marker (``default is self.__marker``), never recognises. Before, such a
patch went in hot and ``pop(key)`` of a missing key returned the patch's marker
instead of raising KeyError (found by cachetools' ``Cache.pop`` and
sortedcontainers' ``SortedDict.pop``). Now such a patch is refused, naming the
parameter, the name and the way to take the running value.
"""

from __future__ import annotations

import textwrap

import pytest
from refusals import HEADER, load, refused

import hotpatch

CACHE = """
_MISSING = object()
TIMEOUT = 10

class Cache:
    __marker = object()

    def __init__(self):
        self.data = {}

    def pop(self, key, default=__marker):
        if key in self.data:
            return self.data.pop(key)
        if default is self.__marker:
            raise KeyError(key)
        return default

    def get(self, key, *, default=_MISSING):
        if key in self.data:
            return self.data[key]
        if default is _MISSING:
            raise KeyError(key)
        return default

def lookup(data, key, default=_MISSING, checker=None):
    found = data.get(key, default)
    if checker is not None:
        checker(found)
    return found

def wait(timeout=TIMEOUT):
    return timeout
"""


def test_a_class_sentinel_restated_in_the_holder_class_is_refused(
    make_module, write_patch, registry
):
    mod = make_module(CACHE)
    patch = load(
        write_patch,
        f"""
        class Cache:
            __marker = object()

            @patch.replace("{mod.__name__}:Cache.pop")
            def pop(self, key, default=__marker):
                if key in self.data:
                    return self.data.pop(key)
                if default is self.__marker:
                    raise KeyError(key)
                return default
        """,
    )
    msg = refused(registry, patch, hotpatch.NameConflict)
    assert f"{mod.__name__}:Cache.pop" in msg
    assert "'default'" in msg
    assert "_Cache__marker" in msg
    assert f"__marker = {mod.__name__}.Cache._Cache__marker" in msg  # the way in
    with pytest.raises(KeyError):
        mod.Cache().pop("missing")  # the running code is untouched


def test_the_running_sentinel_taken_in_the_holder_class_goes_in_hot(
    make_module, write_patch, registry
):
    mod = make_module(CACHE)
    patch = load(
        write_patch,
        f"""
        import {mod.__name__} as running

        class Cache:
            __marker = running.Cache._Cache__marker

            @patch.replace("{mod.__name__}:Cache.pop")
            def pop(self, key, default=__marker):
                if key in self.data:
                    return self.data.pop(key) * 2
                if default is self.__marker:
                    raise KeyError(key)
                return default
        """,
    )
    registry.apply(patch)
    cache = mod.Cache()
    cache.data["a"] = 21
    assert cache.pop("a") == 42
    with pytest.raises(KeyError):
        cache.pop("missing")
    assert cache.pop("missing", None) is None


def test_a_module_sentinel_restated_for_a_keyword_default_is_refused(
    make_module, write_patch, registry
):
    mod = make_module(CACHE)
    # The body reads the running module's _MISSING (a method's globals are the
    # module's): only the keyword default is the patch file's.
    patch = load(
        write_patch,
        f"""
        _MISSING = object()

        class Cache:
            @patch.replace("{mod.__name__}:Cache.get")
            def get(self, key, *, default=_MISSING):
                if key in self.data:
                    return self.data[key]
                if default is globals()["_MISSING"]:
                    raise KeyError(key)
                return default
        """,
    )
    msg = refused(registry, patch, hotpatch.NameConflict)
    assert "'default'" in msg
    assert "_MISSING" in msg
    assert f"_MISSING = {mod.__name__}._MISSING" in msg


def test_a_module_sentinel_restated_for_a_function_not_reading_it_is_refused(
    make_module, write_patch, registry
):
    mod = make_module(CACHE)
    patch = load(
        write_patch,
        f"""
        _MISSING = object()

        @patch.replace("{mod.__name__}:lookup")
        def lookup(data, key, default=_MISSING, checker=None):
            found = data.get(key, default)
            if checker is not None:
                checker(found)
            return found
        """,
    )
    msg = refused(registry, patch, hotpatch.NameConflict)
    assert f"{mod.__name__}:lookup" in msg
    assert "'default'" in msg
    assert mod.lookup({}, "k") is mod._MISSING  # untouched


def test_a_restated_constant_with_another_value_is_refused_and_an_equal_one_is_not(
    make_module, write_patch, registry
):
    mod = make_module(CACHE)
    other = load(
        write_patch,
        f"""
        TIMEOUT = 30

        @patch.replace("{mod.__name__}:wait")
        def wait(timeout=TIMEOUT):
            return timeout + 0
        """,
    )
    msg = refused(registry, other, hotpatch.NameConflict)
    assert "TIMEOUT" in msg
    same = load(
        write_patch,
        f"""
        TIMEOUT = 10

        @patch.replace("{mod.__name__}:wait")
        def wait(timeout=TIMEOUT):
            return timeout + 1
        """,
    )
    registry.apply(same)
    assert mod.wait() == 11


def test_a_default_changed_to_a_literal_or_a_new_value_of_no_name_goes_in_hot(
    make_module, write_patch, registry
):
    mod = make_module(CACHE)
    patch = load(
        write_patch,
        f"""
        @patch.replace("{mod.__name__}:lookup")
        def lookup(data, key, default=None, checker=print):
            return data.get(key, default)
        """,
    )
    registry.apply(patch)
    assert mod.lookup({}, "k") is None


HELPERS = """
def deepcopy(x, memo=None):
    return ("v1", x)

def copy_list(items, deepcopy=deepcopy):
    return [deepcopy(i) for i in items]
"""


def test_a_default_naming_a_function_the_patch_replaces_names_the_running_function(
    make_module, write_patch, registry
):
    # The standard library's copy module: def _deepcopy_list(x, memo, deepcopy=deepcopy).
    # A patch of both functions evaluates the default in the patch file, where deepcopy
    # is the patch's own replacement: kept, a later patch of deepcopy alone would not
    # reach copy_list, which would go on calling this patch's version.
    mod = make_module(HELPERS)
    both = load(
        write_patch,
        f"""
        @patch.replace("{mod.__name__}:deepcopy")
        def deepcopy(x, memo=None):
            return ("v2", x)

        @patch.replace("{mod.__name__}:copy_list")
        def copy_list(items, deepcopy=deepcopy):
            return [deepcopy(i) for i in items] + ["fixed"]
        """,
    )
    registry.apply(both)
    assert mod.copy_list.__defaults__[0] is mod.deepcopy
    assert mod.copy_list([1]) == [("v2", 1), "fixed"]
    later = hotpatch.load_patch(
        write_patch(
            HEADER.replace("1.0.1", "1.0.2")
            + textwrap.dedent(
                f"""
                @patch.replace("{mod.__name__}:deepcopy")
                def deepcopy(x, memo=None):
                    return ("v3", x)
                """
            )
        )
    )
    registry.apply(later)
    assert mod.copy_list([1]) == [("v3", 1), "fixed"]
    registry.rollback(to="1.0")
    assert mod.copy_list([1]) == [("v1", 1)]
    assert mod.copy_list.__defaults__[0] is mod.deepcopy
