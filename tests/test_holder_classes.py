"""A class holding ``@patch.replace`` defs holds nothing else the patch applies.

Written in a class of the target's name (as ``hotpatch make`` writes methods, so
their private names are mangled alike), a replacement is applied alone: the
holder's class data and its other functions are not. A user copying the class
to fix it changed ``LIMIT = 5`` to ``7`` and a helper ``_norm`` beside the one
method registered: before, the patch went in hot and the running class kept
``LIMIT`` 5 and its old ``_norm``, silently. Now a holder saying anything the
running class does not (another value, another function, a name it lacks) is
refused, naming each and the ways in; a holder restating what the running class
holds (an unchanged helper copied for context, the running sentinel) goes in.
"""

from __future__ import annotations

import textwrap

import pytest
from refusals import HEADER, load, refused

import hotpatch

BUCKET = """
class Bucket:
    LIMIT = 5
    __marker = object()

    def __init__(self):
        self.items = []

    def add(self, x):
        if len(self.items) >= self.LIMIT:
            return False
        self.items.append(self._norm(x))
        return True

    def _norm(self, x):
        return x

    @property
    def size(self):
        return len(self.items)
"""

ADD = """
    @patch.replace("{mod}:Bucket.add")
    def add(self, x):
        if len(self.items) >= self.LIMIT:
            return None
        self.items.append(self._norm(x))
        return True
"""


def holder(mod: object, extra: str, name: str = "Bucket") -> str:
    body = textwrap.indent(textwrap.dedent(extra), "    ")
    add = textwrap.dedent(ADD.format(mod=mod)).replace("\n", "\n    ")
    return f"class {name}:\n{body}\n    {add}\n"


def test_class_data_of_another_value_in_the_holder_is_refused(make_module, write_patch, registry):
    mod = make_module(BUCKET)
    msg = refused(registry, load(write_patch, holder(mod.__name__, "LIMIT = 7\n")))
    assert f"{mod.__name__}:Bucket.add" in msg
    assert "LIMIT" in msg
    assert "7" in msg
    assert "5" in msg
    assert "@patch.migrate" in msg
    assert "replace_class" in msg
    bucket = mod.Bucket()
    assert [bucket.add(i) for i in range(6)][-1] is False  # untouched


def test_a_private_name_is_named_as_written_in_the_holder(make_module, write_patch, registry):
    mod = make_module(BUCKET)
    for name in ("Bucket", "_Bucket"):  # both mangle __marker as _Bucket__marker
        msg = refused(registry, load(write_patch, holder(mod.__name__, "__marker = 0\n", name)))
        assert "__marker = 0 (the running class holds <object" in msg
        assert "_Bucket__marker" not in msg


def test_a_changed_helper_not_registered_is_refused(make_module, write_patch, registry):
    mod = make_module(BUCKET)
    extra = "def _norm(self, x):\n    return x * 10\n"
    msg = refused(registry, load(write_patch, holder(mod.__name__, extra, "_Bucket")))
    assert "_norm" in msg
    assert "@patch.replace" in msg


def test_a_name_the_running_class_lacks_is_refused(make_module, write_patch, registry):
    mod = make_module(BUCKET)
    msg = refused(registry, load(write_patch, holder(mod.__name__, "MAX_BATCH = 3\n")))
    assert "MAX_BATCH" in msg


def test_what_the_running_class_holds_restated_goes_in(make_module, write_patch, registry):
    mod = make_module(BUCKET)
    extra = f"""
    import {mod.__name__} as _running
    LIMIT = 5
    __marker = _running.Bucket._Bucket__marker
    del _running

    def _norm(self, x):
        return x

    @property
    def size(self):
        return len(self.items)
    """
    registry.apply(load(write_patch, holder(mod.__name__, extra)))
    bucket = mod.Bucket()
    assert [bucket.add(i) for i in range(6)] == [True] * 5 + [None]


def test_a_holder_of_another_name_is_not_the_targets_class(make_module, write_patch, registry):
    # A class of another name is no copy of the target's: only its defs are read.
    mod = make_module(BUCKET)
    patch = load(
        write_patch,
        f"""
        class Fixes:
            LIMIT = 7

            @patch.replace("{mod.__name__}:Bucket.add")
            def add(self, x):
                return "fixed"
        """,
    )
    registry.apply(patch)
    assert mod.Bucket().add(1) == "fixed"


def test_a_holder_named_as_the_class_stands_for_it_in_the_methods_it_holds(
    make_module, write_patch, registry
):
    # In the methods, Bucket is a global name: the module's, the running class. The
    # patch file binds it to the holder too, which is no other Bucket to bring in.
    mod = make_module(BUCKET + "\n    def same(self, other):\n        return False\n")
    running = mod.Bucket
    patch = load(
        write_patch,
        f"""
        class Bucket:
            @patch.replace("{mod.__name__}:Bucket.same")
            def same(self, other):
                return isinstance(other, Bucket) and Bucket.LIMIT == 5
        """,
    )
    assert registry.check(patch).names == ()  # nothing brought into the module
    registry.apply(patch)
    assert mod.Bucket().same(mod.Bucket())
    assert mod.Bucket is running


PLUGINS = """
import abc

REGISTRY = []

class Plugin:
    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        REGISTRY.append(cls.__name__)

class Csv(Plugin):
    def run(self):
        return "csv"

class Shape(abc.ABC):
    def area(self):
        return 0
"""


def test_a_holder_whose_bases_run_a_hook_is_refused_before_the_hook_runs(make_module, write_patch):
    # Making the holder class would run Plugin.__init_subclass__ for it, in the
    # service, as the patch file loads: the registry would gain a second Csv.
    mod = make_module(PLUGINS)
    path = write_patch(
        HEADER
        + textwrap.dedent(
            f"""
            from {mod.__name__} import Plugin

            class Csv(Plugin):
                @patch.replace("{mod.__name__}:Csv.run")
                def run(self):
                    return "csv2"
            """
        )
    )
    with pytest.raises(hotpatch.NotPatchable) as info:
        hotpatch.load_patch(path)
    msg = str(info.value)
    assert f"{mod.__name__}:Plugin.__init_subclass__" in msg
    assert "class Csv:" in msg  # the way in: a holder needs no bases
    assert mod.REGISTRY == ["Csv"]  # the hook did not run


def test_a_holder_without_bases_or_with_the_standard_librarys_goes_in(
    make_module, write_patch, registry
):
    mod = make_module(PLUGINS)
    patch = load(
        write_patch,
        f"""
        import abc

        class Csv:
            @patch.replace("{mod.__name__}:Csv.run")
            def run(self):
                return "csv2"

        class Shape(abc.ABC):
            @patch.replace("{mod.__name__}:Shape.area")
            def area(self):
                return 1
        """,
    )
    registry.apply(patch)
    assert mod.Csv().run() == "csv2"
    assert mod.REGISTRY == ["Csv"]


def test_a_holder_restating_the_classs_slots_goes_in(make_module, write_patch, registry):
    mod = make_module(
        """
class Point:
    __slots__ = ("x", "y")

    def __init__(self, x, y):
        self.x, self.y = x, y

    def norm(self):
        return abs(self.x) + abs(self.y)
"""
    )
    patch = load(
        write_patch,
        f"""
        class Point:
            __slots__ = ("x", "y")

            @patch.replace("{mod.__name__}:Point.norm")
            def norm(self):
                return (self.x**2 + self.y**2) ** 0.5
        """,
    )
    registry.apply(patch)
    assert mod.Point(3, 4).norm() == 5.0
