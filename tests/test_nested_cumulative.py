"""Cumulative patches over nested targets: a new version that replaces the previous
level's patch and keeps, drops or adds some of the nested targets under one middle
function (``deco`` making ``wrapper`` and ``other``). Every function -- made before
the first patch, while a level was applied, after the last -- runs what the level
in force makes, through rollbacks and re-applies; rolled all the way back, every one
runs its original code object."""

from __future__ import annotations

import gc
import textwrap
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_health_gate import gated, mechanism

import hotpatch

__all__ = ["gated", "mechanism"]  # the health gate's fixtures, from test_health_gate

PatchWriter = Callable[..., Path]


def load(
    write_patch: PatchWriter, version: str, body: str, *, cumulative: bool = False
) -> hotpatch.Patch:
    extra = ", cumulative=True" if cumulative else ""
    header = (
        f"from hotpatch import Patch\npatch = Patch(version={version!r}, baseline='1.0'{extra})\n"
    )
    return hotpatch.load_patch(write_patch(header + textwrap.dedent(body)))


def double(x: int) -> int:
    return x * 2


@dataclass(frozen=True)
class Shape:
    """Where ``deco`` lives: its module's source, the qualname of the function that
    makes it, and how to make a new one (``times`` -> decorator) from the module."""

    source: str
    outer: str
    make: Callable[[Any, int], Callable[..., Any]]
    enclosing: Callable[[Any], types.FunctionType]


DECO = """
    def deco(fn):
        def wrapper(x):
            return ("old", times, fn(x))
        def other(x):
            return ("old-other", times, fn(x))
        wrapper.other = other
        return wrapper
    return deco
"""

KEPT = """
retry3 = {maker}(3)  # a decorator made before any patch

@retry3
def made_before(x):
    return x
"""

SHAPES = {
    "function": Shape(
        "def retry(times):" + DECO + KEPT.format(maker="retry"),
        "retry",
        lambda mod, times: mod.retry(times),
        lambda mod: mod.retry,
    ),
    "method": Shape(
        "class Service:\n    def retry(self, times):"
        + textwrap.indent(DECO, "    ")
        + "\nservice = Service()\n"
        + KEPT.format(maker="service.retry"),
        "Service.retry",
        lambda mod, times: mod.service.retry(times),
        lambda mod: mod.Service.retry,
    ),
}


def fix(mod: str, outer: str, *tags: tuple[str, str]) -> str:
    """Replacements of the nested targets named in ``tags`` ((leaf, tag) pairs)."""
    return "".join(
        f"""
@patch.replace("{mod}:{outer}.<locals>.deco.<locals>.{leaf}")
def {leaf}(x):
    return ("{tag}", times, fn(x))
"""
        for leaf, tag in tags
    )


def outcome(wrapped: Any) -> tuple[str, str]:
    """(what a decorated function answers, what its sibling ``other`` answers): tags only."""
    return wrapped(1)[0], wrapped.other(1)[0]


def tree(code: types.CodeType) -> dict[str, types.CodeType]:
    """Every code object nested in ``code``, by qualname."""
    found: dict[str, types.CodeType] = {}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            found[const.co_qualname] = const
            found.update(tree(const))
    return found


def assert_original(mod: types.ModuleType, codes: dict[str, types.CodeType]) -> None:
    """Every live function of ``mod`` made from nested code runs that code's original."""
    made = [
        f
        for f in gc.get_objects()
        if type(f) is types.FunctionType and f.__globals__ is mod.__dict__
    ]
    nested = [f for f in made if f.__code__.co_qualname in codes]
    assert nested
    assert all(f.__code__ is codes[f.__code__.co_qualname] for f in nested)


@dataclass
class Scene:
    """One module under test, and every decorator and decorated function made in it."""

    mod: types.ModuleType
    shape: Shape
    decos: list[Callable[..., Any]]
    made: list[Callable[..., Any]]

    def more(self, times: int) -> None:
        """A new decorator, and a function decorated by it and by each decorator held."""
        self.decos.append(self.shape.make(self.mod, times))
        self.made += [d(double) for d in self.decos]

    def answers(self) -> set[tuple[str, str]]:
        return {outcome(f) for f in self.made}


def scene(make_module: Callable[[str], types.ModuleType], shape: Shape) -> Scene:
    mod = make_module(shape.source)
    return Scene(mod, shape, [mod.retry3], [mod.made_before])


@pytest.mark.parametrize("route", ["level by level", "at once"])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_a_cumulative_patch_dropping_one_of_two_targets_under_one_decorator(
    make_module, write_patch, registry, shape, route
):
    """1.0.1 fixes ``wrapper`` and ``other``, cumulative 1.0.2 only ``wrapper``: ``other``
    goes back to the original code in every function, those made by decorators made while
    1.0.1 was applied included, and comes back with 1.0.1."""
    s = scene(make_module, SHAPES[shape])
    name, outer = s.mod.__name__, s.shape.outer
    original = tree(s.shape.enclosing(s.mod).__code__)
    registry.apply(
        load(write_patch, "1.0.1", fix(name, outer, ("wrapper", "one"), ("other", "one-o")))
    )
    s.more(5)  # a decorator made while 1.0.1 is applied
    assert s.answers() == {("one", "one-o")}

    v2 = load(write_patch, "1.0.2", fix(name, outer, ("wrapper", "two")), cumulative=True)
    assert registry.check(v2).hot
    result = registry.apply(v2)
    assert result.patched[f"{name}:{outer}.<locals>.deco"] == 2  # retry3, one made under 1.0.1
    s.more(7)
    assert s.answers() == {("two", "old-other")}
    assert {f.other.__code__ for f in s.made} == {original[f"{outer}.<locals>.deco.<locals>.other"]}
    assert_original(s.mod, {q: c for q, c in original.items() if q.endswith(".other")})

    if route == "level by level":
        registry.rollback()  # 1.0.1 comes back: both of its targets
        s.more(9)
        assert s.answers() == {("one", "one-o")}
    registry.rollback(to="1.0")
    s.more(11)
    assert s.answers() == {("old", "old-other")}
    assert_original(s.mod, original)

    registry.apply(load(write_patch, "1.0.3", fix(name, outer, ("wrapper", "three"))))  # again
    s.more(13)
    assert s.answers() == {("three", "old-other")}
    both = fix(name, outer, ("wrapper", "four"), ("other", "four-o"))
    registry.apply(load(write_patch, "1.0.4", both, cumulative=True))
    s.more(15)
    assert s.answers() == {("four", "four-o")}
    registry.rollback(to="1.0")
    assert s.answers() == {("old", "old-other")}
    assert_original(s.mod, original)


@pytest.mark.parametrize("route", ["level by level", "at once"])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_a_cumulative_patch_dropping_one_target_and_adding_another(
    make_module, write_patch, registry, shape, route
):
    """1.0.1 fixes ``wrapper``, cumulative 1.0.2 ``other`` instead: in one step, every
    function made from ``wrapper`` runs the original again and every one made from
    ``other`` the new code, whichever decorator made it."""
    s = scene(make_module, SHAPES[shape])
    name, outer = s.mod.__name__, s.shape.outer
    original = tree(s.shape.enclosing(s.mod).__code__)
    registry.apply(load(write_patch, "1.0.1", fix(name, outer, ("wrapper", "one"))))
    s.more(5)
    assert s.answers() == {("one", "old-other")}

    v2 = load(write_patch, "1.0.2", fix(name, outer, ("other", "two-o")), cumulative=True)
    assert registry.check(v2).hot
    registry.apply(v2)
    s.more(7)
    assert s.answers() == {("old", "two-o")}
    assert_original(s.mod, {q: c for q, c in original.items() if q.endswith(".wrapper")})

    if route == "level by level":
        registry.rollback()
        s.more(9)
        assert s.answers() == {("one", "old-other")}
    registry.rollback(to="1.0")
    s.more(11)
    assert s.answers() == {("old", "old-other")}
    assert_original(s.mod, original)

    registry.apply(load(write_patch, "1.0.3", fix(name, outer, ("other", "three-o"))))
    registry.apply(load(write_patch, "1.0.4", fix(name, outer, ("wrapper", "four"))))  # stacked
    s.more(13)
    assert s.answers() == {("four", "three-o")}
    swap = load(write_patch, "1.0.5", fix(name, outer, ("wrapper", "five")), cumulative=True)
    registry.apply(swap)  # drops 1.0.3's target, keeps 1.0.4's
    s.more(15)
    assert s.answers() == {("five", "old-other")}
    registry.rollback()
    assert s.answers() == {("four", "three-o")}
    registry.rollback(to="1.0")
    assert_original(s.mod, original)


THREE_DEEP = """
def policy(name):
    def retry(times):
        def deco(fn):
            def wrapper(x):
                return ("old", name, times, fn(x))
            def other(x):
                return ("old-other", name, times, fn(x))
            wrapper.other = other
            return wrapper
        return deco
    return retry

strict = policy("strict")  # each level kept from before the patch
strict3 = strict(3)
kept = strict3(abs)
"""


def deep_fix(mod: str, *tags: tuple[str, str]) -> str:
    return "".join(
        f"""
@patch.replace("{mod}:policy.<locals>.retry.<locals>.deco.<locals>.{leaf}")
def {leaf}(x):
    return ("{tag}", name, times, fn(x))
"""
        for leaf, tag in tags
    )


@pytest.mark.parametrize("route", ["level by level", "at once"])
def test_three_deep_a_cumulative_patch_dropping_one_of_two_targets(
    make_module, write_patch, registry, route
):
    """Two levels in between (``retry`` and ``deco`` functions), each made before 1.0.1,
    while it was applied, and after the cumulative 1.0.2 that drops ``other``."""
    mod = make_module(THREE_DEEP)
    name = mod.__name__
    original = tree(mod.policy.__code__)
    retries, decos, made = [mod.strict], [mod.strict3], [mod.kept]

    def more(times: int) -> None:
        retries.append(mod.policy(f"p{times}"))
        decos.extend(r(times) for r in retries)
        made.extend(d(abs) for d in decos)

    def answers() -> set[tuple[str, str]]:
        return {(f(-1)[0], f.other(-1)[0]) for f in made}

    registry.apply(load(write_patch, "1.0.1", deep_fix(name, ("wrapper", "one"), ("other", "1o"))))
    more(4)
    assert answers() == {("one", "1o")}
    registry.apply(load(write_patch, "1.0.2", deep_fix(name, ("wrapper", "two")), cumulative=True))
    more(5)
    assert answers() == {("two", "old-other")}
    assert_original(mod, {q: c for q, c in original.items() if q.endswith(".other")})
    if route == "level by level":
        registry.rollback()
        more(6)
        assert answers() == {("one", "1o")}
    registry.rollback(to="1.0")
    more(7)
    assert answers() == {("old", "old-other")}
    assert_original(mod, original)
    registry.apply(load(write_patch, "1.0.3", deep_fix(name, ("other", "3o"))))
    more(8)
    assert answers() == {("old", "3o")}
    registry.rollback()
    assert_original(mod, original)


def test_a_cumulative_patch_over_stacked_levels_drops_what_each_of_them_made(
    make_module, write_patch, registry
):
    """1.0.1 fixes both targets, 1.0.2 stacks on it fixing ``wrapper`` again (moving the
    decorators made under 1.0.1 once more), cumulative 1.0.3 fixes only ``wrapper``: no
    decorator keeps making 1.0.1's ``other``."""
    s = scene(make_module, SHAPES["function"])
    name, outer = s.mod.__name__, s.shape.outer
    original = tree(s.shape.enclosing(s.mod).__code__)
    registry.apply(load(write_patch, "1.0.1", fix(name, outer, ("wrapper", "1"), ("other", "1o"))))
    s.more(5)
    registry.apply(load(write_patch, "1.0.2", fix(name, outer, ("wrapper", "2"))))
    s.more(7)
    assert s.answers() == {("2", "1o")}
    registry.apply(load(write_patch, "1.0.3", fix(name, outer, ("wrapper", "3")), cumulative=True))
    s.more(9)
    assert s.answers() == {("3", "old-other")}
    registry.rollback()
    s.more(11)
    assert s.answers() == {("2", "1o")}
    registry.rollback(to="1.0")
    assert s.answers() == {("old", "old-other")}
    assert_original(s.mod, original)


def test_a_cumulative_patch_during_the_previous_levels_probation(gated, make_module, write_patch):
    """1.0.1 is on probation (its functions and what its decorators make counted) when
    cumulative 1.0.2 drops one of its targets: the counting goes with it, and every
    function runs what 1.0.2 makes, then 1.0.1's own code again after a rollback."""
    g = gated(window_s=30, min_calls=1000)
    s = scene(make_module, SHAPES["function"])
    name, outer = s.mod.__name__, s.shape.outer
    original = tree(s.shape.enclosing(s.mod).__code__)
    both = fix(name, outer, ("wrapper", "one"), ("other", "one-o"))
    g.registry.apply(load(write_patch, "1.0.1", both))
    s.more(5)  # made while 1.0.1 is counted
    assert s.answers() == {("one", "one-o")}
    g.registry.apply(
        load(write_patch, "1.0.2", fix(name, outer, ("wrapper", "two")), cumulative=True)
    )
    s.more(7)
    assert s.answers() == {("two", "old-other")}
    assert_original(s.mod, {q: c for q, c in original.items() if q.endswith(".other")})
    g.registry.rollback()
    s.more(9)
    assert s.answers() == {("one", "one-o")}
    g.registry.rollback(to="1.0")
    assert s.answers() == {("old", "old-other")}
    assert_original(s.mod, original)


def test_a_cumulative_patch_replacing_the_enclosing_function_drops_the_nested_one(
    make_module, write_patch, registry
):
    """1.0.1 fixes ``make_adder.<locals>.add``; cumulative 1.0.2 replaces ``make_adder``
    itself (new calls only), with an ``add`` reading another closure: the closures made
    before go back to the original code, not to 1.0.2's ``add`` (whose closure they do
    not have), and 1.0.2's ``make_adder`` makes its own."""
    mod = make_module(
        """
        def make_adder(n):
            def add(x):
                return x + n
            return add

        add2 = make_adder(2)
        """
    )
    name, first = mod.__name__, mod.add2
    code = first.__code__
    fixed = f"""
        @patch.replace("{name}:make_adder.<locals>.add")
        def add(x):
            return x + n * 10
        """
    registry.apply(load(write_patch, "1.0.1", fixed))
    made = mod.make_adder(5)
    assert (first(0), made(0)) == (20, 50)
    whole = f"""
        @patch.replace("{name}:make_adder")
        def make_adder(n):
            scale = 1000
            def add(x):
                return x + n + scale
            return add
        """
    v2 = load(write_patch, "1.0.2", whole, cumulative=True)
    assert registry.check(v2).hot
    registry.apply(v2)
    assert (first(0), made(0), mod.make_adder(6)(0)) == (2, 5, 1006)
    assert (first.__code__, made.__code__) == (code, code)
    registry.rollback()
    assert (first(0), made(0), mod.make_adder(6)(0)) == (20, 50, 60)
    registry.rollback(to="1.0")
    assert (first(0), made(0), mod.make_adder(6)(0)) == (2, 5, 6)
    assert (first.__code__, made.__code__) == (code, code)
