"""Consistency under threads: stress, monotonic versions, running calls, strict quiescence."""

from __future__ import annotations

import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import hotpatch

MakeModule = Callable[[str], types.ModuleType]
WritePatch = Callable[[str], Path]

PAIR_MODULE = """
def f(x):
    return ("f", 0, x)


def g(x, *, y=1):
    return ("g", 0, x + y)
"""


def pair_patch(mod: types.ModuleType, version: int) -> str:
    """Patch 1.0.<version>: f and g return ``version`` as their second item."""
    return f"""
from hotpatch import Patch
patch = Patch(version="1.0.{version}", baseline="1.0")


@patch.replace("{mod.__name__}:f")
def f(x):
    return ("f", {version}, x)


@patch.replace("{mod.__name__}:g")
def g(x, *, y=1):
    return ("g", {version}, x + y)
"""


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Hand the GIL over as often as CPython allows, so threads interleave finely."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(interval)


# -- (a) stress --------------------------------------------------------------------------


def test_stress_eight_threads_through_a_thousand_apply_rollback_cycles(
    make_module: MakeModule, write_patch: WritePatch, registry: hotpatch.Registry
) -> None:
    """8 threads call f and g nonstop while one patch goes in and out 1,000 times."""
    mod = make_module(PAIR_MODULE)
    patch = hotpatch.load_patch(write_patch(pair_patch(mod, 1)))  # loaded once, reused
    f, g = mod.f, mod.g
    stop = threading.Event()
    errors: list[BaseException] = []
    calls = [0] * 8
    seen: list[set[tuple[object, ...]]] = [set() for _ in range(8)]

    def worker(n: int) -> None:
        try:
            while not stop.is_set():
                for i in range(50):
                    seen[n].add(f(i % 2))
                    seen[n].add(g(i % 2, y=2))
                calls[n] += 100
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,), name=f"caller-{n}") for n in range(8)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(1000):
            registry.apply(patch)
            registry.rollback()
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert errors == []
    assert all(n > 0 for n in calls)
    expected = {("f", v, x) for v in (0, 1) for x in (0, 1)}
    expected |= {("g", v, x + 2) for v in (0, 1) for x in (0, 1)}
    assert set().union(*seen) <= expected  # every result came whole from one version
    assert registry.level == ()
    assert (f(5), g(5)) == (("f", 0, 5), ("g", 0, 6))
    # the history keeps the last 1,000 changes: 500 applies and their rollbacks
    assert [h.action for h in registry.history] == ["apply", "rollback"] * 500


# -- (b) versions never go backwards ------------------------------------------------------


def test_versions_a_thread_sees_never_go_backwards(
    make_module: MakeModule,
    write_patch: WritePatch,
    registry: hotpatch.Registry,
    fast_switching: None,
) -> None:
    mod = make_module(PAIR_MODULE)
    count = 30
    patches = [hotpatch.load_patch(write_patch(pair_patch(mod, v))) for v in range(1, count + 1)]
    f, g = mod.f, mod.g
    stop = threading.Event()
    errors: list[BaseException] = []
    # Per thread, the versions it saw, each recorded when it differs from the previous one.
    sequences: list[list[int]] = [[0] for _ in range(6)]

    def worker(n: int) -> None:
        seq = sequences[n]
        try:
            while not stop.is_set():
                for value in (f(1)[1], g(1)[1]):
                    assert isinstance(value, int)
                    if value != seq[-1]:
                        seq.append(value)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    try:
        for version, patch in enumerate(patches, start=1):
            registry.apply(patch)
            # let every thread see this version before the next one goes in
            while any(s[-1] < version for s in sequences) and not errors:
                stop.wait(0.0005)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert errors == []
    assert registry.level == tuple(f"1.0.{v}" for v in range(1, count + 1))
    for seq in sequences:
        assert seq == sorted(seq), seq
        assert seq[-1] == count


# -- (c) a running call finishes on its old code --------------------------------------------

PARKING_MODULE = """
import threading

entered = threading.Event()
release = threading.Event()


def _park():
    entered.set()
    release.wait(60)


def f():
    _park()
    return "old"


def gen():
    yield "old-1"
    yield "old-2"
    return "old-done"
"""


def parking_patch(
    mod: types.ModuleType, version: str, *, strict: bool = False, timeout: float = 1.0
) -> str:
    options = f', quiescence="strict", quiescence_timeout={timeout}' if strict else ""
    return f"""
from hotpatch import Patch
patch = Patch(version="{version}", baseline="1.0"{options})


@patch.replace("{mod.__name__}:f")
def f():
    return "new"


@patch.replace("{mod.__name__}:gen")
def gen():
    yield "new-1"
    yield "new-2"
    return "new-done"


@patch.migrate("{mod.__name__}")
def mark(module):
    module.MIGRATED = True  # no unmigrate: a refused apply must not run it at all
"""


class Parked:
    """A thread running ``mod.f()``, held inside it until released."""

    def __init__(self, mod: types.ModuleType, name: str = "parked-in-f"):
        self.mod = mod
        self.result: list[object] = []
        mod.entered.clear()
        mod.release.clear()
        self.thread = threading.Thread(target=lambda: self.result.append(mod.f()), name=name)
        self.thread.start()
        assert mod.entered.wait(30)

    def finish(self) -> list[object]:
        self.mod.release.set()
        self.thread.join(30)
        assert not self.thread.is_alive()
        return self.result


@pytest.fixture
def parking(make_module: MakeModule) -> Iterator[types.ModuleType]:
    mod = make_module(PARKING_MODULE)
    yield mod
    mod.release.set()  # never leave a thread parked


def test_running_call_finishes_on_old_code(
    parking: types.ModuleType, write_patch: WritePatch, registry: hotpatch.Registry
) -> None:
    mod = parking
    parked = Parked(mod)
    registry.apply(hotpatch.load_patch(write_patch(parking_patch(mod, "1.0.1"))))
    assert mod.f() == "new"  # started after apply returned
    assert parked.finish() == ["old"]  # started before: finished on the code it started with


def test_started_generator_keeps_running_old_code(
    parking: types.ModuleType, write_patch: WritePatch, registry: hotpatch.Registry
) -> None:
    mod = parking
    started = mod.gen()
    assert next(started) == "old-1"
    registry.apply(hotpatch.load_patch(write_patch(parking_patch(mod, "1.0.1"))))
    fresh = mod.gen()
    assert next(started) == "old-2"
    with pytest.raises(StopIteration) as done:
        next(started)
    assert done.value.value == "old-done"
    assert list(fresh) == ["new-1", "new-2"]


# -- (d) strict quiescence ---------------------------------------------------------------


def state(mod: types.ModuleType) -> tuple[list[Any], list[dict[str, Any]]]:
    """What a patch of ``mod`` could change: function attributes, and namespaces."""
    funcs = [mod.f, mod.gen]
    attrs = ("__code__", "__defaults__", "__kwdefaults__", "__doc__", "__annotations__")
    values = [getattr(fn, a) for fn in funcs for a in attrs]
    return values, [*(dict(fn.__dict__) for fn in funcs), dict(vars(mod))]


def assert_same_state(
    before: tuple[list[Any], list[dict[str, Any]]], after: tuple[list[Any], list[dict[str, Any]]]
) -> None:
    """The very same objects, attribute by attribute and name by name."""
    assert [id(v) for v in before[0]] == [id(v) for v in after[0]]
    for old, new in zip(before[1], after[1], strict=True):
        assert old.keys() == new.keys(), set(old) ^ set(new)
        assert [k for k in old if old[k] is not new[k]] == []


def test_strict_quiescence_times_out_while_a_thread_is_inside(
    parking: types.ModuleType, write_patch: WritePatch, registry: hotpatch.Registry
) -> None:
    mod = parking
    timeout = 0.3
    patch = hotpatch.load_patch(
        write_patch(parking_patch(mod, "1.0.1", strict=True, timeout=timeout))
    )
    parked = Parked(mod)
    before = state(mod)

    report = registry.check(patch)
    assert not report.hot
    assert any("'parked-in-f'" in r and "is in f" in r for r in report.reasons), report.reasons

    start = time.monotonic()
    with pytest.raises(hotpatch.QuiescenceTimeout) as caught:
        registry.apply(patch)
    waited = time.monotonic() - start
    # A lower bound only: it did wait for the thread (no upper bound, machines vary).
    assert waited >= timeout
    error = caught.value
    assert isinstance(error, hotpatch.RestartRequired)
    assert error.patch == "1.0.1"
    assert len(error.reasons) == 1
    assert "'parked-in-f'" in error.reasons[0]
    assert "is in f" in error.reasons[0]
    assert_same_state(before, state(mod))
    assert not hasattr(mod, "MIGRATED")
    assert registry.level == ()
    assert [h.action for h in registry.history] == []

    assert parked.finish() == ["old"]
    assert registry.check(patch).hot
    registry.apply(patch)
    assert mod.f() == "new"
    assert mod.MIGRATED is True


def test_strict_apply_waits_for_the_thread_to_leave(
    parking: types.ModuleType, write_patch: WritePatch, registry: hotpatch.Registry
) -> None:
    mod = parking
    patch = hotpatch.load_patch(write_patch(parking_patch(mod, "1.0.1", strict=True, timeout=60)))
    parked = Parked(mod)
    releaser = threading.Timer(0.2, mod.release.set)
    releaser.start()
    try:
        registry.apply(patch)
        # apply could only switch once no thread was in f: the release came first,
        # and the parked call finished on the old code.
        assert mod.release.is_set()
        assert parked.finish() == ["old"]
    finally:
        releaser.cancel()
    assert registry.level == ("1.0.1",)
    assert mod.f() == "new"
