"""``replace_class`` on classes nobody here wrote: installed and standard library classes.

Each test patches a method of a real library class, checks it through
objects made before the patch, and rolls back; the classes are the library's
own (``__slots__`` in ``packaging`` and ``dataclasses``, an enum with its own
``__new__`` in ``inspect``).
"""

from __future__ import annotations

import dataclasses
import inspect
import textwrap
from collections.abc import Callable
from pathlib import Path

import packaging.version

import hotpatch

HEADER = "from hotpatch import Patch\npatch = Patch(version='1.0.1', baseline='1.0')\n"


def load(write_patch: Callable[..., Path], body: str) -> hotpatch.Patch:
    return hotpatch.load_patch(write_patch(HEADER + textwrap.dedent(body)))


def test_packaging_version_a_slotted_class(write_patch, registry):
    made_before = packaging.version.Version("2.0rc1")
    final = packaging.version.Version("2.0")
    is_prerelease = made_before.__class__.__dict__["is_prerelease"]
    patch = load(
        write_patch,
        """
        from packaging.version import Version as Running, _BaseVersion

        @patch.replace_class("packaging.version:Version")
        class Version(_BaseVersion):
            __slots__ = Running.__slots__

            @property
            def is_prerelease(self):
                return "patched"
        """,
    )
    for _ in range(2):
        assert registry.check(patch).hot
        registry.apply(patch)
        assert made_before.is_prerelease == "patched"
        assert final.is_prerelease == "patched"
        assert str(made_before) == "2.0rc1"  # the slots it reads are the class's own
        assert made_before < final
        registry.rollback()
        assert made_before.is_prerelease is True
        assert final.is_prerelease is False
        assert packaging.version.Version.__dict__["is_prerelease"] is is_prerelease


@dataclasses.dataclass
class Order:
    item: str
    count: int = 1


def test_dataclasses_field_a_slotted_standard_library_class(write_patch, registry):
    field = dataclasses.fields(Order)[0]  # made before the patch, by @dataclass
    text = repr(field)
    patch = load(
        write_patch,
        """
        import dataclasses
        import reprlib

        # the library's own decorator (3.11 and 3.12 have theirs, 3.13 uses reprlib's)
        guard = getattr(dataclasses, "_recursive_repr", None) or reprlib.recursive_repr()

        @patch.replace_class("dataclasses:Field")
        class Field:
            __slots__ = dataclasses.Field.__slots__

            @guard  # as the library's: the wrapper stays, the function it wraps changes
            def __repr__(self):
                return f"<field {self.name}>"
        """,
    )
    assert registry.check(patch).hot
    registry.apply(patch)
    try:
        assert repr(field) == "<field item>"
        assert repr(dataclasses.fields(Order)[1]) == "<field count>"
        assert Order("tea") == Order("tea", 1)  # dataclasses still work
    finally:
        registry.rollback()
    assert repr(field) == text


def test_an_enum_of_the_standard_library_with_its_own_new(write_patch, registry):
    kind = inspect.Parameter.POSITIONAL_ONLY  # a member, taken before the patch
    bound = kind.__str__
    members = "".join(
        f"    {m.name} = {m.description!r}\n" for m in inspect._ParameterKind.__members__.values()
    )
    text = (
        "import enum\n\n"
        "@patch.replace_class('inspect:_ParameterKind')\n"
        "class _ParameterKind(enum.IntEnum):\n"
        + members
        + textwrap.indent(
            textwrap.dedent(
                """
                def __new__(cls, description):
                    value = len(cls.__members__)
                    member = int.__new__(cls, value)
                    member._value_ = value
                    member.description = description
                    return member

                def __str__(self):
                    return self.name.lower()
                """
            ),
            "    ",
        )
    )
    patch = hotpatch.load_patch(write_patch(HEADER + text))
    assert registry.check(patch).hot, registry.check(patch).reasons
    registry.apply(patch)
    try:
        assert str(kind) == "positional_only"
        assert bound() == "positional_only"
        assert inspect.Parameter.POSITIONAL_ONLY is kind
        assert kind.description == "positional-only"
    finally:
        registry.rollback()
    assert str(kind) == "POSITIONAL_ONLY"
