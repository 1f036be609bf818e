"""A class and its subclass patched by one patch (`replace_class` on both).

The subclass's patch class is written on the base's patch class (`class
Child(Base)` under the patch file's own `Base`), which stands for the running
base. Before, its bases compared unequal to the running class's, so the patch
was refused as a layout change ("bases change from (Base) to (Base)"), or, for
a base with subclasses of its own, as not patchable even by a restart: found by
patching whole classes of the standard library by their own source (gettext,
argparse, ipaddress, plistlib, configparser, csv, contextlib, ...).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

import hotpatch

PatchWriter = Callable[..., Path]
HEADER = "from hotpatch import Patch\npatch = Patch(version='1.0.1', baseline='1.0')\n"

HIERARCHY = """
class Base:
    def f(self):
        return "base"

class Child(Base):
    def g(self):
        return "child " + super().f()

class Grandchild(Child):
    def h(self):
        return "grandchild " + super().g()
"""


def load(write_patch: PatchWriter, body: str) -> hotpatch.Patch:
    return hotpatch.load_patch(write_patch(HEADER + textwrap.dedent(body)))


def test_a_class_and_its_subclasses_patched_together_go_in_hot(make_module, write_patch, registry):
    mod = make_module(HIERARCHY)
    made_before = mod.Grandchild()
    patch = load(
        write_patch,
        f"""
        @patch.replace_class("{mod.__name__}:Base")
        class Base:
            def f(self):
                return "base 2"

        @patch.replace_class("{mod.__name__}:Child")
        class Child(Base):
            def g(self):
                return "child 2 " + super().f()

        @patch.replace_class("{mod.__name__}:Grandchild")
        class Grandchild(Child):
            def h(self):
                return "grandchild 2 " + super().g()
        """,
    )
    report = registry.check(patch)
    assert report.hot, report.reasons
    registry.apply(patch)
    assert made_before.h() == "grandchild 2 child 2 base 2"
    assert type(made_before).__mro__ == (mod.Grandchild, mod.Child, mod.Base, object)
    registry.rollback()
    assert made_before.h() == "grandchild child base"


def test_a_subclass_patched_onto_another_base_is_still_a_layout_change(
    make_module, write_patch, registry
):
    mod = make_module(HIERARCHY + "\nclass Other:\n    pass\n")
    patch = load(
        write_patch,
        f"""
        @patch.replace_class("{mod.__name__}:Other")
        class Other:
            pass

        @patch.replace_class("{mod.__name__}:Child")
        class Child(Other):
            def g(self):
                return "child 2"
        """,
    )
    with pytest.raises(hotpatch.NotPatchable, match=r"changes its layout.*Grandchild"):
        registry.check(patch)
    assert mod.Child().g() == "child base"


def test_at_a_restart_a_subclass_rebuilt_with_a_new_layout_keeps_the_running_base(
    make_module, write_patch, registry
):
    mod = make_module(HIERARCHY.replace("class Grandchild(Child):", "class Grandchild:"))
    patch = load(
        write_patch,
        f"""
        @patch.replace_class("{mod.__name__}:Base")
        class Base:
            def f(self):
                return "base 2"

        @patch.replace_class("{mod.__name__}:Child")
        class Child(Base):
            __slots__ = ("extra",)  # a new layout: only a restart builds it

            def g(self):
                return "child 2 " + super().f()
        """,
    )
    running_base = mod.Base
    assert not registry.check(patch).hot
    registry.apply(patch, restarting=True)  # this process has not served yet
    assert mod.Base is running_base
    assert mod.Child.__bases__ == (running_base,)  # not the patch file's Base
    assert mod.Child().g() == "child 2 base 2"


FORMATTERS = """
class Formatter:
    def fmt(self, x):
        return f"<{x}>"

class Parser:
    default = Formatter

    def __init__(self, formatter_class=Formatter, *, fallback=Formatter):
        self.formatter_class = formatter_class
        self.fallback = fallback

    def show(self, x):
        return self.formatter_class().fmt(x)

def make(cls=Formatter):
    return cls()
"""


def test_a_default_naming_a_patch_class_names_the_running_class(make_module, write_patch, registry):
    """A default is evaluated where the def is written: in the patch file, ``Formatter``
    is the patch class, which nothing uses. Before, parsers made after the patch held
    it (``isinstance(p.formatter_class(), Formatter)`` False, later patches of Formatter
    not reaching it): found with argparse's ``ArgumentParser(formatter_class=HelpFormatter)``."""
    mod = make_module(FORMATTERS)
    patch = load(
        write_patch,
        f"""
        @patch.replace_class("{mod.__name__}:Formatter")
        class Formatter:
            def fmt(self, x):
                return f"[{{x}}]"

        @patch.replace_class("{mod.__name__}:Parser")
        class Parser:
            default = Formatter  # restated: the running class keeps its own

            def __init__(self, formatter_class=Formatter, *, fallback=Formatter):
                self.formatter_class = formatter_class
                self.fallback = fallback

        @patch.replace("{mod.__name__}:make")
        def make(cls=Formatter):
            return cls()
        """,
    )
    assert registry.check(patch).hot
    registry.apply(patch)
    parser = mod.Parser()
    assert parser.formatter_class is mod.Formatter
    assert parser.fallback is mod.Formatter
    assert mod.Parser.default is mod.Formatter
    assert type(mod.make()) is mod.Formatter
    assert parser.show(1) == "[1]"
    registry.rollback()
    assert mod.Parser().show(1) == "<1>"
    assert mod.Parser().formatter_class is mod.Formatter


SPLITTERS = """
from dataclasses import dataclass, field
from typing import NamedTuple, Optional


class RowSplitter:
    name = "row"


class ColumnSplitter:
    name = "column"


class Layout:
    splitters = {"row": RowSplitter, "column": ColumnSplitter}
    order = (RowSplitter, ColumnSplitter)

    def split(self, how):
        return self.splitters[how].name


class Size(NamedTuple):
    width: int
    height: int


@dataclass
class Node:
    label: str


@dataclass
class Options:
    size: Size
    node: Optional[Node] = None
    kinds: list[type[Node]] = field(default_factory=list)

    def area(self):
        return self.size.width * self.size.height
"""


def _splitters_patch(mod: str, area: str = "self.size.width * self.size.height") -> str:
    return f"""
    from dataclasses import dataclass, field
    from typing import NamedTuple, Optional

    @patch.replace_class("{mod}:RowSplitter")
    class RowSplitter:
        name = "row"

    @patch.replace_class("{mod}:ColumnSplitter")
    class ColumnSplitter:
        name = "column"

    @patch.replace_class("{mod}:Layout")
    class Layout:
        splitters = {{"row": RowSplitter, "column": ColumnSplitter}}
        order = (RowSplitter, ColumnSplitter)

        def split(self, how):
            return self.splitters[how].name.upper()

    @patch.replace_class("{mod}:Size")
    class Size(NamedTuple):
        width: int
        height: int

    @patch.replace_class("{mod}:Node")
    @dataclass
    class Node:
        label: str

    @patch.replace_class("{mod}:Options")
    @dataclass
    class Options:
        size: Size
        node: Optional[Node] = None
        kinds: list[type[Node]] = field(default_factory=list)

        def area(self):
            return {area}
    """


def test_class_data_and_field_types_naming_patch_classes_name_the_running_ones(
    make_module, write_patch, registry
):
    """Class data holding the patch's other classes (``splitters = {"row": RowSplitter}``,
    as rich's ``Layout`` and ``Markdown`` hold theirs) is the running class's data
    restated, and a dataclass field typed with one (``size: Size``,
    ``Optional[Node]``, as rich's ``ConsoleOptions``) is the same field. Before, each
    class went in alone, but together the first was refused as class data the patch
    would overwrite (``NameConflict``) and the second as a layout change whose message
    named the same fields twice ("fields change from (size, node, kinds) to (size,
    node, kinds)")."""
    mod = make_module(SPLITTERS)
    splitters = mod.Layout.splitters
    options = mod.Options(mod.Size(2, 3))
    patch = load(
        write_patch, _splitters_patch(mod.__name__, "self.size.width * self.size.height + 1")
    )
    report = registry.check(patch)
    assert report.hot, report.reasons
    registry.apply(patch)
    assert mod.Layout.splitters is splitters
    assert mod.Layout().split("row") == "ROW"
    assert options.area() == 7
    registry.rollback()
    assert mod.Layout().split("row") == "row"


def test_a_field_whose_type_changes_is_named_with_both_types(make_module, write_patch, registry):
    mod = make_module(SPLITTERS)
    body = _splitters_patch(mod.__name__).replace("        size: Size\n", "        size: tuple\n")
    report = registry.check(load(write_patch, body))
    assert not report.hot
    (reason,) = report.reasons
    assert f"class {mod.__name__}:Options: dataclass fields change:" in reason
    assert "size: type Size -> tuple" in reason, reason
