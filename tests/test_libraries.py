"""Patching code nobody here wrote: functions and methods of installed libraries and the
standard library, checked through objects and references made before the patch,
and restored exactly by rollback."""

from __future__ import annotations

import enum
import functools
import json
import textwrap
import types
from collections.abc import Callable
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

import hotpatch

PatchWriter = Callable[..., Path]
HEADER = "from hotpatch import Patch\npatch = Patch(version='1.0.1', baseline='1.0')\n"


def load(write_patch: PatchWriter, body: str) -> hotpatch.Patch:
    return hotpatch.load_patch(write_patch(HEADER + textwrap.dedent(body)))


def codes(*functions: types.FunctionType) -> list[types.CodeType]:
    return [f.__code__ for f in functions]


# -- the standard library -----------------------------------------------------------------


def test_json_encoder_default_through_an_encoder_made_before(write_patch, registry):
    encoder = json.JSONEncoder(sort_keys=True)  # made before the patch
    before = codes(json.JSONEncoder.default)
    with pytest.raises(TypeError, match="set"):
        json.dumps({"tags": {"b", "a"}})
    registry.apply(
        load(
            write_patch,
            """
            @patch.replace("json.encoder:JSONEncoder.default")
            def default(self, o):
                if isinstance(o, (set, frozenset)):
                    return sorted(o)
                raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")
            """,
        )
    )
    assert encoder.encode({"tags": {"b", "a"}}) == '{"tags": ["a", "b"]}'
    assert json.dumps({"tags": frozenset({2, 1})}) == '{"tags": [1, 2]}'  # the module's encoder
    registry.rollback()
    assert codes(json.JSONEncoder.default) == before
    with pytest.raises(TypeError, match="set"):
        encoder.encode({"tags": {"b", "a"}})


def test_textwrap_function_through_a_copy_taken_before(write_patch, registry):
    indent = textwrap.indent  # a `from textwrap import indent` copy
    original = indent.__code__
    assert indent("a\n\nb\n", "> ") == "> a\n\n> b\n"
    registry.apply(
        load(
            write_patch,
            """
            @patch.replace("textwrap:indent")
            def indent(text, prefix, predicate=None):
                # blank lines are quoted too, unless a predicate says otherwise
                if predicate is None:
                    def predicate(line):
                        return True
                return "".join(
                    prefix + line if predicate(line) else line
                    for line in text.splitlines(True)
                )
            """,
        )
    )
    assert indent("a\n\nb\n", "> ") == "> a\n> \n> b\n"
    assert indent("a\n\nb\n", "> ", str.strip) == "> a\n\n> b\n"
    registry.rollback()
    assert indent.__code__ is original
    assert indent("a\n\nb\n", "> ") == "> a\n\n> b\n"


def test_functools_total_ordering_method_through_instances_made_before(write_patch, registry):
    @functools.total_ordering
    class Money:
        def __init__(self, cents: int) -> None:
            self.cents = cents

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Money) and self.cents == other.cents

        def __lt__(self, other: Money) -> bool:
            return self.cents < other.cents

        def __hash__(self) -> int:
            return hash(self.cents)

    small, big = Money(1), Money(2)
    gt_from_lt = vars(functools)["_gt_from_lt"]
    assert vars(Money)["__gt__"] is gt_from_lt
    original = gt_from_lt.__code__
    registry.apply(
        load(
            write_patch,
            """
            CALLS = []

            @patch.replace("functools:_gt_from_lt")
            def _gt_from_lt(self, other):
                CALLS.append(type(self).__name__)
                op_result = type(self).__lt__(self, other)
                if op_result is NotImplemented:
                    return op_result
                return not op_result and self != other
            """,
        )
    )
    assert big > small
    assert not small > big
    assert vars(functools)["CALLS"] == ["Money", "Money"]
    registry.rollback()
    assert gt_from_lt.__code__ is original
    assert not hasattr(functools, "CALLS")  # the name the patch brought is gone
    assert big > small


def test_enum_missing_hook_for_every_enum_made_before(write_patch, registry):
    class Colour(enum.Enum):
        RED = "red"
        GREEN = "green"

    with pytest.raises(ValueError, match="RED"):
        Colour("RED")
    registry.apply(
        load(
            write_patch,
            """
            @patch.replace("enum:Enum._missing_")
            def _missing_(cls, value):
                if isinstance(value, str):
                    for member in cls:
                        if member.value == value.lower():
                            return member
                return None
            """,
        )
    )
    assert Colour("RED") is Colour.RED
    registry.rollback()
    with pytest.raises(ValueError, match="RED"):
        Colour("RED")


def test_dataclass_generated_methods_through_an_instance_made_before(
    make_module, write_patch, registry
):
    mod = make_module(
        """
        from dataclasses import dataclass, field

        @dataclass(order=True)
        class Point:
            x: int
            y: int = 0
            tags: list = field(default_factory=list)
        """
    )
    point = mod.Point(1, 2)
    text = repr(point)
    registry.apply(
        load(
            write_patch,
            f"""
            @patch.replace("{mod.__name__}:Point.__repr__")
            def __repr__(self):
                return f"Point<{{self.x}}, {{self.y}}>"

            @patch.replace("{mod.__name__}:Point.__lt__")
            def __lt__(self, other):
                return (self.y, self.x) < (other.y, other.x)
            """,
        )
    )
    assert repr(point) == "Point<1, 2>"
    assert mod.Point(5, 1) < point  # ordered by y first now
    registry.rollback()
    assert repr(point) == text
    assert not mod.Point(5, 1) < point


# -- installed libraries --------------------------------------------------------------------


def test_packaging_property_and_method_through_objects_made_before(write_patch, registry):
    dev, final = Version("2.0.dev1"), Version("2.0")
    spec = SpecifierSet(">=1.0,<2.0")
    canonical = canonicalize_name  # a copy taken before
    getter = vars(Version)["is_prerelease"].fget
    assert dev.is_prerelease
    assert not spec.contains("2.5")
    registry.apply(
        load(
            write_patch,
            """
            @patch.replace("packaging.version:Version.is_prerelease")
            def is_prerelease(self):
                return self.pre is not None  # dev releases are not pre-releases here

            @patch.replace("packaging.specifiers:SpecifierSet.contains")
            def contains(self, item, prereleases=None, installed=None):
                return any(s.contains(item) for s in self._specs)  # any, not all

            @patch.replace("packaging.utils:canonicalize_name")
            def canonicalize_name(name, *, validate=False):
                return name.lower().replace("_", "-").replace(".", "-")
            """,
        )
    )
    assert not dev.is_prerelease
    assert not final.is_prerelease
    assert spec.contains("2.5")
    assert canonical("Foo_Bar.baz") == "foo-bar-baz"
    assert dev < final  # what the patch did not touch is as it was
    registry.rollback()
    assert vars(Version)["is_prerelease"].fget is getter
    assert dev.is_prerelease
    assert not spec.contains("2.5")


def test_click_command_callback_and_help_formatter(make_module, write_patch, registry):
    mod = make_module(
        """
        import click

        @click.command()
        @click.option("--name", default="world", help="Who to greet.")
        def hello(name):
            "Greet someone."
            click.echo(f"hello {name}")
        """
    )
    runner = CliRunner()
    command = mod.hello  # a click.Command made before the patch
    assert runner.invoke(command, ["--name", "ann"]).output == "hello ann\n"
    whole = load(
        write_patch,
        f"""
        @patch.replace("{mod.__name__}:hello")
        def hello(name):
            click.echo(f"hi {{name}}")
        """,
    )
    with pytest.raises(hotpatch.NotPatchable, match="callable Command object"):
        registry.apply(whole)
    registry.apply(
        load(
            write_patch,
            f"""
            import click

            @patch.replace("{mod.__name__}:hello.callback")
            def hello(name):
                click.echo(f"hi {{name}}")

            @patch.replace("click.formatting:HelpFormatter.write_heading")
            def write_heading(self, heading):
                self.write(f"{{'':>{{self.current_indent}}}}== {{heading}} ==\\n")
            """,
        )
    )
    assert runner.invoke(command, ["--name", "ann"]).output == "hi ann\n"
    assert "== Options ==" in runner.invoke(command, ["--help"]).output
    assert isinstance(command, click.Command)
    registry.rollback()
    assert runner.invoke(command, ["--name", "ann"]).output == "hello ann\n"
    assert "Options:" in runner.invoke(command, ["--help"]).output
