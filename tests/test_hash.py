"""A class's ``__hash__`` is not replaced hot: sets and dict keys keep the old hash.

A set or a dict files each key under the hash it had when it went in; a lookup with
another hash misses it without a word (``x in seen`` False for an ``x`` that is
there). A patch that would change the hash of a running class's instances -- its
``__hash__`` replaced by a function, or a patch class whose ``__hash__`` differs from
the running class's (one written anew, or the ``None`` a class body defining only
``__eq__`` gets) -- is refused with ``RestartRequired`` naming the reason; a restart
files the keys again. Each test holds instances filed before in a set and a dict and
checks they are still found after the refusal.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

import hotpatch
from hotpatch import RestartRequired

HEADER = "from hotpatch import Patch\npatch = Patch(version='1.0.1', baseline='1.0')\n"

POINT = """
class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __eq__(self, other):
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

    def __hash__(self):
        return hash((self.x, self.y))

    def norm(self):
        return abs(self.x) + abs(self.y)
"""


def _load(write_patch: Callable[..., Path], body: str, mod: str) -> hotpatch.Patch:
    return hotpatch.load_patch(write_patch(HEADER + textwrap.dedent(body).format(mod=mod)))


def _refused(registry: hotpatch.Registry, patch: hotpatch.Patch, mod: str) -> str:
    assert not registry.check(patch).hot
    with pytest.raises(RestartRequired) as info:
        registry.apply(patch)
    message = str(info.value)
    assert f"{mod}:Point" in message, message
    assert "__hash__" in message, message
    assert "restart" in message, message
    assert registry.level == ()
    return message


@pytest.mark.parametrize(
    "body",
    [
        # a hand-written replacement of the method itself
        """
        @patch.replace("{mod}:Point.__hash__")
        def __hash__(self):
            return hash((self.y, self.x))
        """,
        # a patch class whose __hash__ is written anew
        """
        @patch.replace_class("{mod}:Point")
        class Point:
            def __eq__(self, other):
                return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

            def __hash__(self):
                return hash((self.y, self.x))
        """,
        # a patch class that defines __eq__ alone: Python gives it __hash__ = None
        """
        @patch.replace_class("{mod}:Point")
        class Point:
            def __eq__(self, other):
                return isinstance(other, Point) and self.x == other.x and self.y == other.y
        """,
    ],
    ids=["replace", "class-new-hash", "class-eq-alone"],
)
def test_a_patch_changing_the_hash_is_refused_and_keys_filed_before_are_found(
    make_module, write_patch, registry, body: str
) -> None:
    mod = make_module(POINT)
    p = mod.Point(1, 2)
    seen, table = {p}, {p: "here"}
    patch = _load(write_patch, body, mod.__name__)
    message = _refused(registry, patch, mod.__name__)
    assert "sets and dict keys" in message, message
    assert p in seen
    assert table[mod.Point(1, 2)] == "here"
    assert hash(p) == hash((1, 2))


def test_a_hash_added_to_a_class_hashed_by_identity_is_refused(
    make_module, write_patch, registry
) -> None:
    mod = make_module("class Token:\n    def __init__(self, name):\n        self.name = name\n")
    t = mod.Token("a")
    seen = {t}
    patch = _load(
        write_patch,
        """
        @patch.replace_class("{mod}:Token")
        class Token:
            def __hash__(self):
                return hash(self.name)
        """,
        mod.__name__,
    )
    assert not registry.check(patch).hot
    with pytest.raises(RestartRequired, match="__hash__"):
        registry.apply(patch)
    assert t in seen


def test_a_patch_class_keeping_the_same_hash_goes_in_hot(
    make_module, write_patch, registry
) -> None:
    # The running class's methods written again unchanged, one of them fixed: the
    # hash is the same code, so nothing filed moves.
    mod = make_module(POINT)
    p = mod.Point(-1, 2)
    seen = {p}
    patch = _load(
        write_patch,
        """
        @patch.replace_class("{mod}:Point")
        class Point:
            def __eq__(self, other):
                return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

            def __hash__(self):
                return hash((self.x, self.y))

            def norm(self):
                return (self.x**2 + self.y**2) ** 0.5
        """,
        mod.__name__,
    )
    assert registry.check(patch).hot
    registry.apply(patch)
    assert p.norm() == 5**0.5
    assert p in seen
    assert mod.Point(-1, 2) in seen
    registry.rollback()
    assert p.norm() == 3


def test_a_replaced_eq_alone_goes_in_hot(make_module, write_patch, registry) -> None:
    mod = make_module(POINT)
    p = mod.Point(1, 2)
    seen = {p}
    patch = _load(
        write_patch,
        """
        @patch.replace("{mod}:Point.__eq__")
        def __eq__(self, other):
            return isinstance(other, type(self)) and (self.x, self.y) == (other.x, other.y)
        """,
        mod.__name__,
    )
    registry.apply(patch)
    assert p in seen
    assert hash(p) == hash((1, 2))
