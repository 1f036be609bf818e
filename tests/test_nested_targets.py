"""Nested function targets (``mod:outer.<locals>.inner``, a decorator's wrapper code):
every function object already made from the code runs the new code, and so do
those made afterwards; rollback puts both back."""

from __future__ import annotations

import gc
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import pytest
from test_health_gate import gated, mechanism, wait_for

import hotpatch

__all__ = ["gated", "mechanism"]  # the health gate's fixtures, from test_health_gate

PatchWriter = Callable[..., Path]
HEADER = "from hotpatch import Patch\npatch = Patch(version={version!r}, baseline='1.0'{extra})\n"


def load(
    write_patch: PatchWriter, body: str, version: str = "1.0.1", extra: str = ""
) -> hotpatch.Patch:
    """A real patch file: the standard header, then ``body`` (dedented)."""
    header = HEADER.format(version=version, extra=extra)
    return hotpatch.load_patch(write_patch(header + textwrap.dedent(body)))


ADDERS = """
def make_adder(n):
    def add(x):
        return x + n
    return add

add2 = make_adder(2)
ADDERS = [make_adder(i) for i in range(3)]
"""


def adder_patch(mod_name: str, body: str = "x + n * 10") -> str:
    return f"""
        @patch.replace("{mod_name}:make_adder.<locals>.add")
        def add(x):
            return {body}
        """


def test_closures_made_before_and_after_run_the_new_code(make_module, write_patch, registry):
    mod = make_module(ADDERS)
    held = mod.add2  # a reference taken before the patch
    old_code, outer_code = held.__code__, mod.make_adder.__code__
    patch = load(write_patch, adder_patch(mod.__name__))
    report = registry.check(patch)
    assert report.hot
    assert held.__code__ is old_code  # check changes nothing
    result = registry.apply(patch)
    spec = f"{mod.__name__}:make_adder.<locals>.add"
    assert result.patched == {spec: 4}  # add2 and the three in ADDERS
    assert held(1) == 21
    assert [f(1) for f in mod.ADDERS] == [1, 11, 21]
    later = mod.make_adder(5)  # made after the patch: the enclosing code's constant
    assert later(1) == 51
    assert held.__closure__[0].cell_contents == 2  # each keeps its own closure

    registry.rollback()
    assert held.__code__ is old_code
    assert mod.make_adder.__code__ is outer_code
    assert later.__code__ is old_code  # made under the patch, back too
    assert (held(1), later(1), mod.make_adder(7)(1)) == (3, 6, 8)
    assert [f(1) for f in mod.ADDERS] == [1, 2, 3]

    registry.apply(load(write_patch, adder_patch(mod.__name__, "x - n"), version="1.0.2"))
    assert (held(1), later(1), mod.make_adder(7)(1)) == (-1, -4, -6)


RETRY = """
import functools

def retry(times):
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            for _ in range(times - 1):
                try:
                    return fn(*args, **kwargs)
                except ValueError:
                    pass
            return None  # the bug: the last attempt is never made
        return wrapper
    return deco

ATTEMPTS = []

@retry(3)
def crunch(x):
    ATTEMPTS.append(x)
    if len(ATTEMPTS) < 3:
        raise ValueError("flaky")
    return x * 2

@retry(2)
def steady(x):
    return x
"""


def test_a_decorators_wrapper_code_is_fixed_for_every_function_it_wrapped(
    make_module, write_patch, registry
):
    mod = make_module(RETRY)
    crunch, steady = mod.crunch, mod.steady
    wrapper_code = crunch.__code__
    spec = f"{mod.__name__}:retry.<locals>.deco.<locals>.wrapper"
    patch = load(
        write_patch,
        f"""
        @patch.replace("{spec}")
        def wrapper(*args, **kwargs):
            for _ in range(times - 1):
                try:
                    return fn(*args, **kwargs)
                except ValueError:
                    pass
            return fn(*args, **kwargs)  # the last attempt, its error passes
        """,
    )
    result = registry.apply(patch)
    assert result.patched[spec] == 2
    assert crunch(4) == 8  # the wrapper made at import now makes the third attempt
    assert mod.ATTEMPTS == [4, 4, 4]
    assert steady(1) == 1
    assert crunch.__wrapped__.__name__ == "crunch"  # the decorator's wraps() kept

    @mod.retry(2)
    def fresh() -> int:
        raise ValueError("always")

    with pytest.raises(ValueError, match="always"):
        fresh()
    registry.rollback()
    assert crunch.__code__ is wrapper_code
    assert fresh.__code__ is wrapper_code
    assert fresh() is None


KEPT = """
import functools

def retry(times):
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            return ("old", times, fn(*args, **kwargs))
        return wrapper
    return deco

retry3 = retry(3)  # a decorator made at import, applied to functions later

@retry3
def made_before(x):
    return x
"""

KEPT_FIX = """
@patch.replace("{mod}:retry.<locals>.deco.<locals>.wrapper")
def wrapper(*args, **kwargs):
    return ("{tag}", times, fn(*args, **kwargs))
"""


def double(x: int) -> int:
    return x * 2


def test_a_decorator_made_before_the_patch_wraps_with_the_new_code(
    make_module, write_patch, registry
):
    """``retry3 = retry(3)`` holds the old ``deco`` code, whose constant is the old
    wrapper code: moved onto ``deco`` code that makes the new one, and back."""
    mod = make_module(KEPT)
    retry3, deco_code = mod.retry3, mod.retry3.__code__
    wrapper_code = mod.made_before.__code__
    spec = f"{mod.__name__}:retry.<locals>.deco.<locals>.wrapper"
    patch = load(write_patch, KEPT_FIX.format(mod=mod.__name__, tag="new"))
    assert registry.check(patch).hot
    assert retry3.__code__ is deco_code  # check changes nothing
    result = registry.apply(patch)
    assert result.patched == {spec: 1, f"{mod.__name__}:retry.<locals>.deco": 1}
    assert mod.made_before(1) == ("new", 3, 1)
    after = retry3(double)  # made after the patch by the decorator kept from before
    assert after(2) == ("new", 3, 4)
    assert mod.retry(4)(double)(1) == ("new", 4, 2)
    assert retry3.__closure__[0].cell_contents == 3  # its own closure kept

    registry.rollback()
    assert retry3.__code__ is deco_code
    assert (mod.made_before.__code__, after.__code__) == (wrapper_code, wrapper_code)
    assert retry3(double)(2) == ("old", 3, 4)
    assert after(2) == ("old", 3, 4)
    assert mod.retry(4)(double)(1) == ("old", 4, 2)

    again = load(write_patch, KEPT_FIX.format(mod=mod.__name__, tag="again"), version="1.0.2")
    assert registry.apply(again).patched[f"{mod.__name__}:retry.<locals>.deco"] == 1
    assert (retry3(double)(2), after(2), mod.made_before(1)) == (
        ("again", 3, 4),
        ("again", 3, 4),
        ("again", 3, 1),
    )
    registry.rollback()
    assert retry3.__code__ is deco_code


def test_decorators_made_under_stacked_nested_patches_roll_back_level_by_level(
    make_module, write_patch, registry
):
    mod = make_module(KEPT)
    retry3, deco_code = mod.retry3, mod.retry3.__code__
    registry.apply(load(write_patch, KEPT_FIX.format(mod=mod.__name__, tag="one")))
    retry5 = mod.retry(5)  # made under 1.0.1
    second = KEPT_FIX.format(mod=mod.__name__, tag="two")
    result = registry.apply(load(write_patch, second, version="1.0.2"))
    assert result.patched[f"{mod.__name__}:retry.<locals>.deco"] == 2
    assert (retry3(double)(1), retry5(double)(1)) == (("two", 3, 2), ("two", 5, 2))
    retry7 = mod.retry(7)  # made under 1.0.2
    registry.rollback()  # back to 1.0.1
    assert (retry3(double)(1), retry5(double)(1), retry7(double)(1)) == (
        ("one", 3, 2),
        ("one", 5, 2),
        ("one", 7, 2),
    )
    registry.rollback()
    assert all(d.__code__ is deco_code for d in (retry3, retry5, retry7))
    assert retry7(double)(1) == ("old", 7, 2)

    registry.apply(load(write_patch, KEPT_FIX.format(mod=mod.__name__, tag="3"), version="1.0.3"))
    registry.apply(load(write_patch, KEPT_FIX.format(mod=mod.__name__, tag="4"), version="1.0.4"))
    registry.rollback(to="1.0")  # both at once
    assert all(d.__code__ is deco_code for d in (retry3, retry5, retry7))
    assert retry5(double)(1) == ("old", 5, 2)


def test_a_cumulative_patch_puts_the_decorators_it_drops_back(make_module, write_patch, registry):
    mod = make_module(KEPT)
    retry3, deco_code = mod.retry3, mod.retry3.__code__
    registry.apply(load(write_patch, KEPT_FIX.format(mod=mod.__name__, tag="one")))
    retry5 = mod.retry(5)
    other = f'@patch.replace("{mod.__name__}:made_before")\ndef made_before(x):\n    return -x\n'
    path = write_patch(HEADER.format(version="1.0.2", extra=", cumulative=True") + other)
    registry.apply(hotpatch.load_patch(path))  # replaces 1.0.1: its nested target goes
    assert (retry3.__code__, retry5.__code__) == (deco_code, deco_code)
    assert (retry3(double)(1), retry5(double)(1)) == (("old", 3, 2), ("old", 5, 2))
    registry.rollback()  # 1.0.1 comes back
    assert (retry3(double)(1), retry5(double)(1)) == (("one", 3, 2), ("one", 5, 2))
    registry.rollback(to="1.0")
    assert (retry3.__code__, retry5.__code__) == (deco_code, deco_code)


THREE_DEEP = """
def policy(name):
    def retry(times):
        def deco(fn):
            def wrapper(x):
                return ("old", name, times, fn(x))
            return wrapper
        return deco
    return retry

strict = policy("strict")  # each level kept from before the patch
strict3 = strict(3)
kept = strict3(abs)
"""


def test_three_deep_every_level_kept_from_before_makes_the_new_code(
    make_module, write_patch, registry
):
    mod = make_module(THREE_DEEP)
    strict, strict3, kept = mod.strict, mod.strict3, mod.kept
    codes = (strict.__code__, strict3.__code__, kept.__code__)
    name = mod.__name__
    spec = f"{name}:policy.<locals>.retry.<locals>.deco.<locals>.wrapper"
    body = f"""
        @patch.replace("{spec}")
        def wrapper(x):
            return ("new", name, times, fn(x))
        """
    result = registry.apply(load(write_patch, body))
    assert result.patched == {
        spec: 1,
        f"{name}:policy.<locals>.retry.<locals>.deco": 1,
        f"{name}:policy.<locals>.retry": 1,
    }
    assert kept(-1) == ("new", "strict", 3, 1)
    assert strict3(abs)(-2) == ("new", "strict", 3, 2)
    assert strict(4)(abs)(-2) == ("new", "strict", 4, 2)
    assert mod.policy("loose")(5)(abs)(-2) == ("new", "loose", 5, 2)
    later = strict(6)  # a middle level made after the patch, by one made before

    registry.rollback()
    assert (strict.__code__, strict3.__code__, kept.__code__) == codes
    assert later.__code__ is codes[1]
    assert (kept(-1), strict3(abs)(-1), later(abs)(-1)) == (
        ("old", "strict", 3, 1),
        ("old", "strict", 3, 1),
        ("old", "strict", 6, 1),
    )
    assert registry.apply(load(write_patch, body, version="1.0.2")).patched[spec] == 1
    assert (kept(-1), later(abs)(-1)) == (("new", "strict", 3, 1), ("new", "strict", 6, 1))


def test_three_deep_levels_made_by_another_version_roll_back_to_their_own_code(
    make_module, write_patch, registry
):
    """``policy`` itself patched by a level rolled back since: the ``retry`` and ``deco``
    functions its other version made are rebuilt to make the new wrapper code, so are
    the ``deco`` functions such a ``retry`` makes under the patch; rollback puts each
    back to its own version's code."""
    mod = make_module(THREE_DEEP)
    name = mod.__name__
    other = THREE_DEEP.partition("strict =")[0].replace('"old"', '"other"')
    registry.apply(load(write_patch, f"@patch.replace('{name}:policy')" + other))
    odd = mod.policy("odd")
    odd3 = odd(3)
    made = [odd3(abs), mod.kept]
    codes = {f: f.__code__ for f in (odd, odd3, *made, mod.strict, mod.strict3)}
    registry.rollback()
    spec = f"{name}:policy.<locals>.retry.<locals>.deco.<locals>.wrapper"
    body = f"""
        @patch.replace("{spec}")
        def wrapper(x):
            return ("new", name, times, fn(x))
        """
    result = registry.apply(load(write_patch, body, version="1.0.2"))
    assert result.patched[f"{name}:policy.<locals>.retry"] == 2  # strict and odd
    odd4 = odd(4)  # made under the patch by the other version's retry
    made += [odd4(abs), odd3(abs), mod.strict(5)(abs), odd(6)(abs)]
    assert {f(-1)[0] for f in made} == {"new"}
    registry.rollback()
    assert [f(-1)[0] for f in made] == ["other", "old", "other", "other", "old", "other"]
    assert all(f.__code__ is code for f, code in codes.items())
    assert odd4.__code__ is odd3.__code__


def test_a_decorator_from_another_version_whose_wrapper_cannot_take_the_new_code_is_refused(
    make_module, write_patch, registry
):
    """A ``deco`` made by a patched ``retry`` whose wrapper holds another closure: the new
    wrapper code cannot run in what it makes, so the target is refused, not half done."""
    mod = make_module(KEPT)
    name, deco_code = mod.__name__, mod.retry3.__code__
    registry.apply(
        load(
            write_patch,
            f"""
            @patch.replace("{name}:retry")
            def retry(times):
                def deco(fn):
                    def wrapper(*args, **kwargs):
                        return ("other", fn(*args, **kwargs))
                    return wrapper
                return deco
            """,
        )
    )
    odd = mod.retry(2)  # its wrapper code holds fn only, not times
    registry.rollback()
    patch = load(write_patch, KEPT_FIX.format(mod=name, tag="new"), version="1.0.2")
    message = refused(registry, patch, hotpatch.NotPatchable, "retry.<locals>.deco")
    assert "restart" in message
    assert odd(double)(1) == ("other", 2)
    assert mod.retry3.__code__ is deco_code
    assert mod.made_before(1) == ("old", 3, 1)


OTHER_RETRY = """
@patch.replace("{mod}:retry")
def retry(times):
    def deco(fn):
        def wrapper(*args, **kwargs):
            return ("other", times, fn(*args, **kwargs))
        return wrapper
    return deco
"""


@pytest.mark.parametrize("earlier", ["rolled back", "applied"])
def test_what_a_decorator_from_another_version_made_rolls_back_to_its_own_code(
    make_module, write_patch, registry, earlier
):
    """``retry`` itself patched by an earlier level (rolled back since, or still applied):
    the decorators made by one version of it and those made by the other both make the
    new wrapper code under the nested patch, and each goes back to its own version's
    code, exactly, with the wrappers it made -- before, during and between the levels."""
    mod = make_module(KEPT)
    name = mod.__name__
    registry.apply(load(write_patch, OTHER_RETRY.format(mod=name)))
    odd = mod.retry(4)  # a decorator made by the other version of retry
    made = {mod.made_before: "old", odd(double): "other"}
    codes = {f: f.__code__ for f in (*made, odd, mod.retry3)}
    if earlier == "rolled back":
        registry.rollback()
    level = registry.level
    main = "other" if earlier == "applied" else "old"  # what retry makes at that level
    for version, tag in (("1.0.2", "new"), ("1.0.3", "newer")):
        registry.apply(load(write_patch, KEPT_FIX.format(mod=name, tag=tag), version=version))
        made |= {mod.retry3(double): "old", odd(double): "other", mod.retry(5)(double): main}
        assert {f(1)[0] for f in made} == {tag}
    registry.rollback()
    assert {f(1)[0] for f in made} == {"new"}
    registry.rollback()
    assert registry.level == level
    assert [f(1)[0] for f in made] == list(made.values())
    assert all(f.__code__ is code for f, code in codes.items())
    assert (mod.retry3(double)(1)[0], odd(double)(1)[0]) == ("old", "other")
    fixed = registry.apply(load(write_patch, KEPT_FIX.format(mod=name, tag="x"), version="1.0.4"))
    assert fixed.patched[f"{name}:retry.<locals>.deco"] == 2
    assert {f(1)[0] for f in made} == {"x"}
    registry.rollback(to=level[-1] if level else "1.0")
    assert [f(1)[0] for f in made] == list(made.values())


def test_a_nested_target_and_a_function_enclosing_it_in_one_patch(
    make_module, write_patch, registry
):
    mod = make_module(KEPT)
    patch = load(
        write_patch,
        f"""
        @patch.replace("{mod.__name__}:retry.<locals>.deco")
        def deco(fn):
            return fn

        @patch.replace("{mod.__name__}:retry.<locals>.deco.<locals>.wrapper")
        def wrapper(*args, **kwargs):
            return None
        """,
    )
    refused(registry, patch, hotpatch.VerificationFailed, "keep one of the two")
    assert mod.made_before(1) == ("old", 3, 1)


def test_a_function_under_the_fixed_wrapper_is_still_its_own_target(
    make_module, write_patch, registry
):
    mod = make_module(RETRY)
    registry.apply(
        load(
            write_patch,
            f"""
            @patch.replace("{mod.__name__}:steady")
            def steady(x):
                return x + 1

            @patch.replace("{mod.__name__}:retry.<locals>.deco.<locals>.wrapper")
            def wrapper(*args, **kwargs):
                return fn(*args, **kwargs) * 10
            """,
        )
    )
    assert mod.steady(1) == 20
    registry.rollback()
    assert mod.steady(1) == 1


def test_stacked_and_cumulative_nested_patches_roll_back_exactly(
    make_module, write_patch, registry
):
    mod = make_module(ADDERS)
    first = mod.add2
    code = first.__code__
    registry.apply(load(write_patch, adder_patch(mod.__name__, "x + n * 10")))
    between = mod.make_adder(3)  # made under 1.0.1
    registry.apply(load(write_patch, adder_patch(mod.__name__, "x + n * 100"), version="1.0.2"))
    assert (first(0), between(0), mod.make_adder(4)(0)) == (200, 300, 400)
    registry.rollback()  # back to 1.0.1
    assert (first(0), between(0), mod.make_adder(4)(0)) == (20, 30, 40)
    registry.rollback()
    assert first.__code__ is code
    assert between.__code__ is code
    assert (first(0), between(0), mod.make_adder(4)(0)) == (2, 3, 4)

    registry.apply(load(write_patch, adder_patch(mod.__name__, "x + n * 10"), version="1.0.3"))
    made = mod.make_adder(5)
    other = f'@patch.replace("{mod.__name__}:make_adder")\ndef make_adder(n):\n'
    other += "    def add(x):\n        return x + n\n    return add\n"
    path = write_patch(HEADER.format(version="1.0.4", extra=", cumulative=True") + other)
    registry.apply(hotpatch.load_patch(path))  # replaces 1.0.3: the nested patch goes
    assert (first(0), made(0)) == (2, 5)
    registry.rollback()  # 1.0.3 comes back
    assert (first(0), made(0), mod.make_adder(6)(0)) == (20, 50, 60)
    registry.rollback(to="1.0")
    assert (first.__code__, made.__code__) == (code, code)


def test_rollback_to_baseline_over_many_levels(make_module, write_patch, registry):
    mod = make_module(ADDERS)
    code = mod.add2.__code__
    made = []
    for i, scale in enumerate((10, 100, 1000)):
        body = adder_patch(mod.__name__, f"x + n * {scale}")
        registry.apply(load(write_patch, body, version=f"1.0.{i + 1}"))
        made.append(mod.make_adder(1))
    registry.rollback(to="1.0")
    assert all(f.__code__ is code for f in (*made, mod.add2, *mod.ADDERS))


def test_method_of_a_class_made_inside_a_function(make_module, write_patch, registry):
    mod = make_module(
        """
        def make_shape(side):
            class Square:
                def area(self):
                    return side * side
            return Square

        Small = make_shape(2)
        small = Small()
        """
    )
    spec = f"{mod.__name__}:make_shape.<locals>.Square.area"
    registry.apply(
        load(
            write_patch,
            f"""
            @patch.replace("{spec}")
            def area(self):
                return side * side + 1
            """,
        )
    )
    assert mod.small.area() == 5
    assert mod.make_shape(3)().area() == 10
    registry.rollback()
    assert mod.small.area() == 4


def test_nested_generator_and_async(make_module, write_patch, registry):
    mod = make_module(
        """
        import asyncio

        def make(n):
            def count():
                yield from range(n)
            async def fetch():
                return n
            return count, fetch

        count, fetch = make(2)
        """
    )
    registry.apply(
        load(
            write_patch,
            f"""
            @patch.replace("{mod.__name__}:make.<locals>.count")
            def count():
                yield from range(n, n + 2)

            @patch.replace("{mod.__name__}:make.<locals>.fetch")
            async def fetch():
                return n * 10
            """,
        )
    )
    import asyncio

    assert list(mod.count()) == [2, 3]
    assert asyncio.run(mod.fetch()) == 20
    registry.rollback()
    assert list(mod.count()) == [0, 1]


def test_functions_made_by_another_thread_during_the_apply(make_module, write_patch, registry):
    """Functions made while the switch is prepared are not left on the old code.

    Another thread makes closures all the time. Those whose making started after
    ``apply()`` (or ``rollback()``) returned run the new code; of those made
    before, only one whose making was already running at the switch may not (a
    call already running finishes on the code it started with).
    """
    mod = make_module(ADDERS)
    made: list[tuple[int, Callable[[int], int]]] = []
    epoch = [0]
    stop = threading.Event()

    def keep_making() -> None:
        while not stop.is_set():
            started = epoch[0]
            made.append((started, mod.make_adder(1)))
            if len(made) > 20_000:
                time.sleep(0.001)

    thread = threading.Thread(target=keep_making)
    thread.start()
    try:
        for i in range(4):
            time.sleep(0.01)
            registry.apply(load(write_patch, adder_patch(mod.__name__), version=f"1.0.{i + 1}"))
            epoch[0] += 1
            time.sleep(0.01)
            old = [e for e, f in made if f(0) != 10]
            assert len(old) <= 1, old[:3]
            assert all(e < epoch[0] for e in old)
            registry.rollback()
            epoch[0] += 1
            time.sleep(0.01)
            new = [e for e, f in made if f(0) != 1]
            assert len(new) <= 1, new[:3]
            assert all(e < epoch[0] for e in new)
            made.clear()
    finally:
        stop.set()
        thread.join()


def test_decorators_made_by_another_thread_during_the_apply(make_module, write_patch, registry):
    """Two deep: the decorators another thread keeps making (``retry(1)``) wrap with the
    new code once ``apply()`` returned, and with the old once ``rollback()`` did; only
    one whose making was running at the switch may not."""
    mod = make_module(KEPT)
    made: list[tuple[int, Callable[[Callable[[int], int]], Callable[[int], object]]]] = []
    epoch = [0]
    stop = threading.Event()

    def keep_making() -> None:
        while not stop.is_set():
            started = epoch[0]
            made.append((started, mod.retry(1)))
            if len(made) > 20_000:
                time.sleep(0.001)

    thread = threading.Thread(target=keep_making)
    thread.start()
    try:
        for i in range(3):
            time.sleep(0.01)
            fix = KEPT_FIX.format(mod=mod.__name__, tag="new")
            registry.apply(load(write_patch, fix, version=f"1.0.{i + 1}"))
            epoch[0] += 1
            time.sleep(0.01)
            old = [e for e, deco in made if deco(double)(1)[0] != "new"]
            assert len(old) <= 1, old[:3]
            assert all(e < epoch[0] for e in old)
            registry.rollback()
            epoch[0] += 1
            time.sleep(0.01)
            new = [e for e, deco in made if deco(double)(1)[0] != "old"]
            assert len(new) <= 1, new[:3]
            assert all(e < epoch[0] for e in new)
            made.clear()
    finally:
        stop.set()
        thread.join()


class Cycle:
    """An object in a reference cycle: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


def test_a_scan_leaves_garbage_collectable(make_module, write_patch, registry):
    """The scan unfreezes what ``gc.freeze()`` froze only to see it. Python 3.12 starts
    with objects of its own frozen (immortal ones); freezing again after the scan froze
    the whole heap, so garbage cycles alive then were never collected."""
    mod = make_module(ADDERS)
    cycle = Cycle()
    gone = weakref.ref(cycle)
    del cycle
    registry.check(load(write_patch, adder_patch(mod.__name__)))
    gc.collect()
    assert gone() is None


def test_gc_frozen_functions_are_found(make_module, write_patch, registry):
    """A pre-fork server freezes what its workers inherit; the scan sees it."""
    mod = make_module(ADDERS)
    gc.freeze()
    frozen = gc.get_freeze_count()
    try:
        result = registry.apply(load(write_patch, adder_patch(mod.__name__)))
        assert mod.add2(0) == 20
        assert gc.get_freeze_count() >= frozen  # frozen again
        assert result.patched[f"{mod.__name__}:make_adder.<locals>.add"] == 4
        registry.rollback()
        assert mod.add2(0) == 2
    finally:
        gc.unfreeze()


# -- refused, naming the target, the reason and the way in ---------------------------------


def refused(registry: hotpatch.Registry, patch: hotpatch.Patch, error: type, match: str) -> str:
    for attempt in (registry.check, registry.apply):
        with pytest.raises(error, match=match) as info:
            attempt(patch)
        assert info.value.target is not None
    assert registry.level == ()
    return str(info.value)


def test_a_changed_closure_shape_is_refused(make_module, write_patch, registry):
    mod = make_module(
        """
        def make_adder(n, scale=1):
            def add(x):
                return x + n
            return add

        add2 = make_adder(2)
        """
    )
    code = mod.add2.__code__
    patch = load(
        write_patch,
        f"""
        @patch.replace("{mod.__name__}:make_adder.<locals>.add")
        def add(x):
            return (x + n) * scale
        """,
    )
    message = refused(registry, patch, hotpatch.NotPatchable, "scale")
    assert "closure" in message
    assert f"patch {mod.__name__}:make_adder" in message  # the way in
    assert mod.add2.__code__ is code


def test_changed_parameters_are_refused(make_module, write_patch, registry):
    mod = make_module(ADDERS)
    patch = load(
        write_patch,
        f"""
        @patch.replace("{mod.__name__}:make_adder.<locals>.add")
        def add(x, y=0):
            return x + n + y
        """,
    )
    refused(registry, patch, hotpatch.SignatureIncompatible, "parameters")
    assert mod.add2(1) == 3


INNER_READS = {
    "def": """
        def inner():
            return x + n
        return inner()
    """,
    "lambda": "return (lambda: x + n)()",
    "genexpr": "return sum(x + n for _ in range(1))",
}


@pytest.mark.parametrize("kind", sorted(INNER_READS))
def test_code_inside_the_replacement_reading_the_closure_is_refused(
    make_module, write_patch, registry, kind
):
    # The closure's variables reach the replaced function's own code only: code
    # nested in it would look them up as globals and raise NameError when it runs.
    mod = make_module(ADDERS)
    body = textwrap.indent(textwrap.dedent(INNER_READS[kind]).strip(), " " * 12)
    patch = load(
        write_patch,
        f"""
        @patch.replace("{mod.__name__}:make_adder.<locals>.add")
        def add(x):
{body}
        """,
    )
    message = refused(registry, patch, hotpatch.NotPatchable, "n")
    assert "nested" in message
    assert f"patch {mod.__name__}:make_adder" in message
    assert mod.add2(1) == 3


def test_code_inside_the_replacement_reading_only_its_own_names_is_hot(
    make_module, write_patch, registry
):
    mod = make_module(ADDERS)
    patch = load(
        write_patch,
        f"""
        @patch.replace("{mod.__name__}:make_adder.<locals>.add")
        def add(x):
            scaled = n * 10
            return (lambda: x + scaled)()
        """,
    )
    registry.apply(patch)
    assert mod.add2(1) == 21
    registry.rollback()
    assert mod.add2(1) == 3


def test_a_replacement_with_its_own_closure_is_refused(make_module, write_patch, registry):
    mod = make_module(ADDERS)
    patch = load(
        write_patch,
        f"""
        def factory():
            k = 3

            @patch.replace("{mod.__name__}:make_adder.<locals>.add")
            def add(x):
                return x + n + k

        factory()
        """,
    )
    refused(registry, patch, hotpatch.NotPatchable, "own closure")


def test_unknown_and_ambiguous_nested_names(make_module, write_patch, registry):
    mod = make_module(
        """
        def outer():
            def inner():
                return 1
            first = lambda: 1  # noqa: E731
            second = lambda: 2  # noqa: E731
            return inner, first, second
        """
    )
    missing = load(
        write_patch,
        f'@patch.replace("{mod.__name__}:outer.<locals>.iner")\ndef iner():\n    return 0\n',
    )
    message = refused(registry, missing, hotpatch.TargetNotFound, "no nested function")
    assert "outer.<locals>.inner" in message  # what there is
    lam = load(
        write_patch,
        f'@patch.replace("{mod.__name__}:outer.<locals>.<lambda>")\ndef f():\n    return 0\n',
    )
    refused(registry, lam, hotpatch.NotPatchable, "2 nested functions")
    no_outer = load(
        write_patch,
        f'@patch.replace("{mod.__name__}:nope.<locals>.inner")\ndef inner():\n    return 0\n',
    )
    refused(registry, no_outer, hotpatch.TargetNotFound, "nested in")


def test_the_enclosing_function_and_its_nested_one_in_one_patch(make_module, write_patch, registry):
    mod = make_module(ADDERS)
    patch = load(
        write_patch,
        f"""
        @patch.replace("{mod.__name__}:make_adder.<locals>.add")
        def add(x):
            return x

        @patch.replace("{mod.__name__}:make_adder")
        def make_adder(n):
            def add(x):
                return x
            return add
        """,
    )
    refused(registry, patch, hotpatch.VerificationFailed, "keep one of the two")


def test_the_verifier_resolves_a_nested_target(make_module, write_patch):
    """A dropped patch is checked in a child first: a nested target passes, a wrong name not."""
    from hotpatch.agent._verify import verify_in_child

    mod = make_module(ADDERS)
    good = write_patch(
        HEADER.format(version="1.0.1", extra="") + textwrap.dedent(adder_patch(mod.__name__))
    )
    report = verify_in_child(good, sys_path=list(sys.path), timeout=30)
    assert report.targets == (f"{mod.__name__}:make_adder.<locals>.add",)
    bad = write_patch(
        HEADER.format(version="1.0.1", extra="")
        + f'@patch.replace("{mod.__name__}:make_adder.<locals>.sub")\ndef sub(x):\n    return x\n'
    )
    with pytest.raises(hotpatch.VerificationFailed, match="no nested function") as info:
        verify_in_child(bad, sys_path=list(sys.path), timeout=30)
    assert info.value.target == f"{mod.__name__}:make_adder.<locals>.sub"


def test_a_dropped_nested_patch_is_verified_applied_and_counted(make_module, tmp_path):
    """Through the watched folder: the verifier child, the apply, the result file."""
    from drops import DropFolder

    mod = make_module(ADDERS)
    held = mod.add2
    folder = DropFolder(tmp_path)
    source = HEADER.format(version="1.0.1", extra="") + textwrap.dedent(adder_patch(mod.__name__))
    with hotpatch.install("1.0", watch=folder.path, journal=folder.journal) as agent:
        folder.drop("fix.py", source)
        result = folder.filed("fix.py")
        assert result["patched"] == {f"{mod.__name__}:make_adder.<locals>.add": 4}
        assert held(1) == 21
        assert agent.registry is not None
        agent.registry.rollback()
    assert held(1) == 3


def test_a_dropped_two_deep_patch_counts_the_decorators_it_moved(make_module, tmp_path):
    """The result file has the functions in between moved, under their own qualname."""
    from drops import DropFolder

    mod = make_module(KEPT)
    folder = DropFolder(tmp_path)
    body = textwrap.dedent(KEPT_FIX.format(mod=mod.__name__, tag="new"))
    with hotpatch.install("1.0", watch=folder.path, journal=folder.journal) as agent:
        folder.drop("fix.py", HEADER.format(version="1.0.1", extra="") + body)
        result = folder.filed("fix.py")
        assert result["patched"] == {
            f"{mod.__name__}:retry.<locals>.deco.<locals>.wrapper": 1,
            f"{mod.__name__}:retry.<locals>.deco": 1,
        }
        assert mod.retry3(double)(1) == ("new", 3, 2)
        assert agent.registry is not None
        agent.registry.rollback()
    assert mod.retry3(double)(1) == ("old", 3, 2)


def test_nested_in_a_method_and_a_decorated_method(make_module, write_patch, registry):
    """A helper made inside a method, and a decorator's wrapper around methods, through
    bound methods taken before the patch."""
    mod = make_module(
        """
        import functools

        def audited(fn):
            @functools.wraps(fn)
            def wrapper(self, *args):
                self.log.append(fn.__name__)
                return fn(self, *args)
            return wrapper

        class Cart:
            def __init__(self):
                self.log = []

            def pricer(self, rate):
                def price(x):
                    return x * rate
                return price

            @audited
            def total(self, n):
                return n
        """
    )
    cart = mod.Cart()
    price, total = cart.pricer(2), cart.total  # made and bound before the patch
    registry.apply(
        load(
            write_patch,
            f"""
            @patch.replace("{mod.__name__}:Cart.pricer.<locals>.price")
            def price(x):
                return x * rate + 1

            @patch.replace("{mod.__name__}:audited.<locals>.wrapper")
            def wrapper(self, *args):
                self.log.append(fn.__name__.upper())
                return fn(self, *args)
            """,
        )
    )
    assert (price(3), cart.pricer(3)(3)) == (7, 10)
    assert total(5) == 5
    assert cart.log == ["TOTAL"]
    registry.rollback()
    assert (price(3), total(5)) == (6, 5)
    assert cart.log == ["TOTAL", "total"]


def test_a_new_process_replays_a_nested_patch_from_the_journal(make_module, write_patch, tmp_path):
    """What a restart does: the journal's nested patch reaches the closures made at import."""
    import subprocess

    mod = make_module(ADDERS)
    journal = tmp_path / "journal.json"
    registry = hotpatch.Registry("1.0", journal=journal)
    registry.apply(load(write_patch, adder_patch(mod.__name__)))
    assert mod.add2(0) == 20
    script = textwrap.dedent(
        f"""
        import sys
        sys.path[:0] = {sys.path!r}
        import hotpatch, {mod.__name__} as mod
        before = mod.add2
        registry = hotpatch.Registry("1.0", journal={str(journal)!r})
        print(registry.level, before(0), [f(1) for f in mod.ADDERS], mod.make_adder(5)(0))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[0] == "('1.0.1',) 20 [1, 11, 21] 50"
    registry.rollback()


@pytest.mark.parametrize("kind", ["<genexpr>", "<listcomp>", "<setcomp>", "<dictcomp>"])
def test_a_comprehension_is_no_target_and_says_so(make_module, write_patch, registry, kind):
    """A generator expression or comprehension is part of its function (inlined since
    3.12, a ``.0`` argument before): the refusal names it and points to the function."""
    mod = make_module(
        """
        def totals(rows):
            gen = sum(r for r in rows)
            return gen, [r for r in rows], {r for r in rows}, {r: r for r in rows}
        """
    )
    patch = load(
        write_patch,
        f"""
        @patch.replace("{mod.__name__}:totals.<locals>.{kind}")
        def comprehension(rows):
            return 0
        """,
    )
    message = refused(registry, patch, hotpatch.NotPatchable, "comprehension or generator")
    assert f"{mod.__name__}:totals.<locals>.{kind}" in message  # the target
    assert f"patch {mod.__name__}:totals" in message  # the way in
    assert mod.totals([1, 2]) == (3, [1, 2], {1, 2}, {1: 1, 2: 2})


# -- the health gate over a nested target ------------------------------------------------


def failing_adder(mod_name: str) -> str:
    return adder_patch(mod_name, "x + n * 10 if x % 2 == 0 else x / 0")


@pytest.mark.parametrize("made", ["before", "during"])
def test_the_health_gate_rolls_back_a_failing_nested_patch(gated, make_module, write_patch, made):
    """The gate counts the calls of every function running the nested target's code:
    those made before the patch (found by the scan) and those made during probation."""
    mod = make_module(ADDERS)
    code = mod.add2.__code__
    g = gated(window_s=10, max_errors=3, min_calls=1000)
    g.registry.apply(load(write_patch, failing_adder(mod.__name__)))
    status = g.gate.status()["1.0.1"]
    assert status["functions"] == [f"{mod.__name__}:make_adder.<locals>.add"]
    caller = mod.add2 if made == "before" else mod.make_adder(5)
    assert caller(2) == 2 + caller.__closure__[0].cell_contents * 10
    for x in (1, 3, 5):
        with pytest.raises(ZeroDivisionError):
            caller(x)
    assert g.gate.wait(5)  # long before the window ends
    assert g.registry.level == ()
    assert g.registry.history[-1].who == "health-gate"
    n = caller.__closure__[0].cell_contents
    assert (caller(1), mod.add2(1), mod.make_adder(7)(1)) == (1 + n, 3, 8)
    assert caller.__code__ is code
    assert mod.add2.__code__ is code


def test_the_health_gate_watches_a_nested_target_nothing_was_made_from_yet(
    gated, make_module, write_patch
):
    """No closure made before the patch: the ones made during probation are counted."""
    mod = make_module(ADDERS.partition("add2 =")[0])
    g = gated(window_s=10, max_errors=3, min_calls=1000)
    g.registry.apply(load(write_patch, failing_adder(mod.__name__)))
    assert "1.0.1" in g.gate.status()
    caller = mod.make_adder(5)
    for x in (1, 3, 5):
        with pytest.raises(ZeroDivisionError):
            caller(x)
    assert g.gate.wait(5)  # long before the window ends
    assert g.registry.level == ()
    assert (caller(1), mod.make_adder(7)(1)) == (6, 8)


def test_functions_made_during_probation_go_back_with_a_rollback_by_hand(
    gated, make_module, write_patch
):
    mod = make_module(ADDERS)
    code, outer = mod.add2.__code__, mod.make_adder.__code__
    g = gated(window_s=30, min_calls=1000)
    g.registry.apply(load(write_patch, adder_patch(mod.__name__)))
    during = mod.make_adder(5)
    assert (during(1), mod.add2(1)) == (51, 21)
    g.registry.apply(load(write_patch, adder_patch(mod.__name__, "x - n"), version="1.0.2"))
    stacked = mod.make_adder(6)
    assert (during(1), stacked(1), mod.add2(1)) == (-4, -5, -1)
    g.registry.rollback()  # 1.0.2 goes: 1.0.1, still on probation
    assert (during(1), stacked(1), mod.add2(1)) == (51, 61, 21)
    g.registry.rollback()  # 1.0.1 goes, with whatever counted its calls
    assert (during(1), stacked(1), mod.add2(1), mod.make_adder(7)(1)) == (6, 7, 3, 8)
    assert all(f.__code__ is code for f in (during, stacked, mod.add2, *mod.ADDERS))
    assert mod.make_adder.__code__ is outer
    assert g.gate.wait(5)


def test_after_probation_a_nested_target_runs_its_own_code(gated, make_module, write_patch):
    """A patch that passes: every function, made before or during probation, then runs
    the patch's code itself, and so do those made afterwards."""
    mod = make_module(ADDERS)
    g = gated(window_s=3, min_calls=1)
    result = g.registry.apply(load(write_patch, adder_patch(mod.__name__)))
    installed = dict(g.registry.installed("1.0.1"))
    assert set(installed) == {mod.add2, *mod.ADDERS}
    assert result.patched == {f"{mod.__name__}:make_adder.<locals>.add": 4}
    new = installed[mod.add2]
    # Made during probation, not as it ends: a function whose making straddles the end
    # keeps the stand-in (by design), and the end takes the registry's lock.
    with g.registry.lock:
        assert "1.0.1" in g.gate.status()
        during = mod.make_adder(5)
    assert (during(1), mod.add2(1)) == (51, 21)
    assert g.gate.wait(30)
    assert g.registry.level == ("1.0.1",)
    after = mod.make_adder(6)
    assert all(f.__code__ is new for f in (during, after, mod.add2, *mod.ADDERS))
    assert new in mod.make_adder.__code__.co_consts  # no counting trampoline left in it


FAILING_WRAPPER = """
@patch.replace("{mod}:retry.<locals>.deco.<locals>.wrapper")
def wrapper(*args, **kwargs):
    return ("new", times, fn(*args, **kwargs) // (args[0] % 2 == 0))
"""


@pytest.mark.parametrize("made", ["kept", "during"])
def test_the_health_gate_counts_wrappers_made_by_a_decorator_kept_from_before(
    gated, make_module, write_patch, made
):
    """Two deep: the wrappers a decorator kept from before the patch makes during
    probation are counted, and the gate's rollback puts every level back."""
    mod = make_module(KEPT)
    retry3, deco_code, wrapper_code = mod.retry3, mod.retry3.__code__, mod.made_before.__code__
    g = gated(window_s=10, max_errors=3, min_calls=1000)
    g.registry.apply(load(write_patch, FAILING_WRAPPER.format(mod=mod.__name__)))
    deco = retry3 if made == "kept" else mod.retry(4)  # a decorator made before or during
    caller = deco(double)
    assert caller(2) == ("new", deco.__closure__[0].cell_contents, 4)
    for x in (1, 3, 5):
        with pytest.raises(ZeroDivisionError):
            caller(x)
    assert g.gate.wait(5)  # counted: long before the window ends
    assert g.registry.level == ()
    assert (deco.__code__, retry3.__code__) == (deco_code, deco_code)
    assert (caller.__code__, mod.made_before.__code__) == (wrapper_code, wrapper_code)
    assert deco(double)(1)[0] == "old"
    assert caller(1)[0] == "old"


@pytest.mark.parametrize("earlier", ["rolled back", "applied"])
def test_the_health_gate_counts_wrappers_made_by_a_decorator_from_another_version(
    gated, make_module, write_patch, earlier
):
    """A decorator made by another version of the enclosing code (``retry`` itself
    patched by an earlier level, rolled back since or still under the nested patch):
    its code is rebuilt to make the new wrapper code, and the wrappers it makes during
    probation are counted too; the gate's rollback puts each decorator back."""
    mod = make_module(KEPT)
    name, retry3, deco_code = mod.__name__, mod.retry3, mod.retry3.__code__
    g = gated(window_s=10, max_errors=3, min_calls=1000)
    g.registry.apply(load(write_patch, OTHER_RETRY.format(mod=name)))
    odd = mod.retry(4)  # a decorator made by the other version of retry
    odd_code = odd.__code__
    if earlier == "rolled back":
        g.registry.rollback()
    version = "1.0.2"
    g.registry.apply(load(write_patch, FAILING_WRAPPER.format(mod=name), version=version))
    assert g.gate.status()[version]["functions"]
    below = g.registry.level
    # the decorator of the other version: retry4 (rolled back) or retry3 (made before it)
    other = odd if earlier == "rolled back" else retry3
    caller = other(double)  # made during probation
    assert caller(2)[0] == "new"
    for x in (1, 3, 5):
        with pytest.raises(ZeroDivisionError):
            caller(x)
    # counted: rolled back long before the window ends
    wait_for(lambda: g.registry.history[-1].who == "health-gate")
    assert g.registry.level == below[:-1]
    assert (odd.__code__, retry3.__code__) == (odd_code, deco_code)
    # what each decorator makes at the level below: its own version's wrapper
    assert (caller(1)[0], odd(double)(1)[0], retry3(double)(1)[0]) == (
        ("other", "other", "old") if earlier == "rolled back" else ("old", "other", "old")
    )


def test_after_probation_decorators_kept_or_made_during_it_make_the_patchs_own_code(
    gated, make_module, write_patch
):
    mod = make_module(KEPT)
    g = gated(window_s=3, min_calls=1)
    g.registry.apply(load(write_patch, KEPT_FIX.format(mod=mod.__name__, tag="new")))
    new = dict(g.registry.installed("1.0.1"))[mod.made_before]
    with g.registry.lock:  # made during probation, not as it ends (see above)
        assert "1.0.1" in g.gate.status()
        during = mod.retry(4)
        made = (mod.retry3(double), during(double))
    assert [f(1) for f in made] == [("new", 3, 2), ("new", 4, 2)]
    assert g.gate.wait(30)
    assert g.registry.level == ("1.0.1",)
    later = (mod.retry3(double), during(double), mod.retry(5)(double))
    assert all(f.__code__ is new for f in (*made, *later, mod.made_before))
    deco = mod.retry3.__code__
    assert during.__code__ is deco  # no counting trampoline left in what it makes
    assert new in deco.co_consts


def test_wrap_of_nested_generators_coroutines_and_nonlocal_writes(
    make_module, write_patch, registry
):
    """Through ``wrap()``'s stand-in, a function made before or while wrapped keeps its
    own cells (a ``nonlocal`` write lands in them) and its kind (generator, coroutine)."""
    import asyncio

    mod = make_module(
        """
        def make(n):
            total = 0
            def bump(step=1):
                nonlocal total
                total += step * n
                return total
            def count():
                yield from range(n)
            async def fetch():
                return n
            return bump, count, fetch

        bump, count, fetch = make(2)
        """
    )
    registry.apply(
        load(
            write_patch,
            f"""
            @patch.replace("{mod.__name__}:make.<locals>.bump")
            def bump(step=1):
                global total  # the closure's variable, by name
                total += step * n * 10
                return total

            @patch.replace("{mod.__name__}:make.<locals>.count")
            def count():
                yield from range(n, n + 2)

            @patch.replace("{mod.__name__}:make.<locals>.fetch")
            async def fetch():
                return n * 10
            """,
        )
    )
    seen: list[str] = []

    def wrapper(function, impl):
        def through(*args, **kwargs):
            seen.append(function.__qualname__.rpartition(".")[2])
            return impl(*args, **kwargs)

        return through

    unwrap = registry.wrap("1.0.1", wrapper)
    bump2, count3, fetch3 = mod.make(3)  # made while wrapped
    assert (mod.bump(), mod.bump(step=2), bump2()) == (20, 60, 30)
    assert (list(mod.count()), list(count3())) == ([2, 3], [3, 4])
    assert (asyncio.run(mod.fetch()), asyncio.run(fetch3())) == (20, 30)
    assert sorted(seen) == sorted(["bump"] * 3 + ["count"] * 2 + ["fetch"] * 2)
    unwrap()
    assert (mod.bump(), bump2(), list(count3())) == (80, 60, [3, 4])
    assert len(seen) == 7  # nothing goes through the wrapper any more
    assert mod.bump.__code__ is bump2.__code__ is dict(registry.installed("1.0.1"))[bump2]
    registry.rollback()
    assert (mod.bump(), bump2(), list(count3())) == (82, 63, [0, 1, 2])
