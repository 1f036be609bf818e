"""The health gate plugin and ``Registry.wrap``: real patches, real threads calling them."""

from __future__ import annotations

import asyncio
import dis
import gc
import inspect
import logging
import sys
import textwrap
import threading
import time
import types
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import hotpatch
from hotpatch_plugins import health_gate
from hotpatch_plugins.health_gate import HealthGate

BASE = """
import asyncio

def price(x):
    return x * 2

def label(x):
    return f"item {x}"

def numbers(n):
    for i in range(n):
        yield i

async def fetch(x):
    await asyncio.sleep(0)
    return x

async def stream(n):
    for i in range(n):
        await asyncio.sleep(0)
        yield i

def make_counter():
    count = 0
    def bump(step=1):
        nonlocal count
        count += step
        return count
    return bump

bump = make_counter()

class Cart:
    def __init__(self, n):
        self.n = n
    def total(self, tax=0):
        return self.n + tax
"""

# The price patches: the good one returns the same answers by other code, the bad
# one raises for every fourth input.
GOOD_PRICE = """
@patch.replace("MOD:price")
def price(x):
    return x + x
"""
BAD_PRICE = """
@patch.replace("MOD:price")
def price(x):
    if x % 4 == 0:
        raise ValueError(f"bad price for {x}")
    return x * 3
"""
GOOD_LABEL = """
@patch.replace("MOD:label")
def label(x):
    return f"item #{x}"
"""
BAD_LABEL = """
@patch.replace("MOD:label")
def label(x):
    if x % 2:
        raise KeyError(x)
    return f"item #{x}"
"""

MECHANISMS = ["wrapper", *(["sys.monitoring"] if sys.version_info >= (3, 13) else [])]
# A window long enough for what a test does during probation, before it ends: an apply
# alone took over 1 s at load 28 on 2 cores (a 1 s window ended under the test). WAIT_S:
# the bound for a probation to end, its window included.
WITHIN_S = 5.0
WAIT_S = 30.0


# -- fixtures and helpers -------------------------------------------------------------


@pytest.fixture
def mod(make_module: Callable[[str], types.ModuleType]) -> types.ModuleType:
    return make_module(BASE)


@pytest.fixture
def make_patch(write_patch: Callable[..., Path], mod: types.ModuleType) -> Callable[..., Path]:
    """``make_patch(version, *bodies, **options)`` -> a real patch file on ``mod``."""

    def make(version: str, *bodies: str, **options: Any) -> Path:
        opts = "".join(f", {k}={v!r}" for k, v in options.items())
        head = "from hotpatch import Patch\n"
        head += f'patch = Patch(version="{version}", baseline="1.0"{opts})\n'
        code = "".join(textwrap.dedent(b) for b in bodies).replace("MOD", mod.__name__)
        return write_patch(head + code, name=f"{version}.py")

    return make


@pytest.fixture(params=MECHANISMS)
def mechanism(request: pytest.FixtureRequest) -> Iterator[str]:
    """How the gate counts. On 3.13+ "wrapper" is what it falls back to when every
    sys.monitoring tool id it may use is taken, so the test takes them (for real)."""
    taken: list[int] = []
    if request.param == "wrapper" and sys.version_info >= (3, 13):
        for tool in health_gate._TOOL_IDS:
            if sys.monitoring.get_tool(tool) is None:
                sys.monitoring.use_tool_id(tool, "test: taken")
                taken.append(tool)
    yield request.param
    for tool in taken:
        sys.monitoring.free_tool_id(tool)


class Recorder:
    """A plugin keeping what the gate reports through the registry's hooks."""

    def __init__(self) -> None:
        self.rejected: list[tuple[str | None, str, str, str]] = []

    @hotpatch.hookimpl
    def hotpatch_rejected(self, version: str | None, source: str, reason: str, who: str) -> None:
        self.rejected.append((version, source, reason, who))


class Raising:
    """A plugin that fails in every hook the gate relies on."""

    @hotpatch.hookimpl
    def hotpatch_before_apply(self, patch: Any, registry: Any) -> None:
        raise RuntimeError("broken plugin")

    @hotpatch.hookimpl
    def hotpatch_after_apply(self, patch: Any, registry: Any, result: Any) -> None:
        raise RuntimeError("broken plugin")

    @hotpatch.hookimpl
    def hotpatch_after_rollback(self, registry: Any, result: Any) -> None:
        raise RuntimeError("broken plugin")

    @hotpatch.hookimpl
    def hotpatch_rejected(self, version: str | None, source: str, reason: str, who: str) -> None:
        raise RuntimeError("broken plugin")

    @hotpatch.hookimpl
    def hotpatch_health_check(self, registry: Any) -> bool:
        raise RuntimeError("broken plugin")


@dataclass
class Gated:
    registry: hotpatch.Registry
    gate: HealthGate
    recorder: Recorder
    mechanism: str

    def apply(self, path: Path) -> dict[types.FunctionType, types.CodeType]:
        """Apply a patch file; returns its functions and the code it installed in each."""
        patch = hotpatch.load_patch(path)
        self.registry.apply(patch)
        return dict(self.registry.installed(patch.version))

    def healthy(self) -> list[Any]:
        return self.registry.plugins.notify("hotpatch_health_check", registry=self.registry)


@pytest.fixture
def gated(mechanism: str) -> Iterator[Callable[..., Gated]]:
    """``gated(**gate_options, plugins=[...])`` -> a Registry on 1.0 with a HealthGate."""
    made: list[Gated] = []

    def make(*, plugins: Iterable[object] = (), **options: Any) -> Gated:
        gate, recorder = HealthGate(**options), Recorder()
        registry = hotpatch.Registry("1.0", plugins=[*plugins, gate, recorder])
        made.append(Gated(registry, gate, recorder, mechanism))
        return made[-1]

    yield make
    for g in made:
        g.gate.close()
        assert g.gate._last_thread is None or not g.gate._last_thread.is_alive()
        if g.registry.level:
            g.registry.rollback(to="1.0")
    assert health_gate._MONITOR.tool_id is None


@dataclass
class Callers:
    """Real threads calling ``func`` on ``args`` over and over until the block ends."""

    func: Callable[[Any], Any]
    args: Iterable[Any]
    threads: int = 3
    outcomes: list[tuple[Any, Any]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _running: list[threading.Thread] = field(default_factory=list)

    def _run(self) -> None:
        args = list(self.args)
        while not self._stop.is_set():
            for arg in args:
                try:
                    outcome = self.func(arg)
                except Exception as exc:
                    outcome = exc
                self.outcomes.append((arg, outcome))  # list.append: atomic
            time.sleep(0.001)

    def __enter__(self) -> Callers:
        for _ in range(self.threads):
            thread = threading.Thread(target=self._run, daemon=True)
            thread.start()
            self._running.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._running:
            thread.join(5)

    def errors(self) -> list[BaseException]:
        return [o for _, o in self.outcomes if isinstance(o, BaseException)]


def tool_of(gate: HealthGate, version: str) -> int | None:
    return gate.status()[version]["tool_id"]


def counting_is_off(g: Gated, tool: int | None, codes: Iterable[types.CodeType]) -> None:
    """The mechanism itself is gone (besides each test's ``__code__`` identity checks)."""
    if g.mechanism != "sys.monitoring":
        return
    assert tool is not None
    mon = sys.monitoring
    assert mon.get_tool(tool) is None  # the tool id was freed
    assert mon.get_events(tool) == 0  # PY_UNWIND is off
    for code in codes:
        assert mon.get_local_events(tool, code) == 0
        ops = [i.opname for i in dis.get_instructions(code, adaptive=True)]
        assert not [op for op in ops if op.startswith("INSTRUMENTED_")], ops


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


# -- a good patch, a bad patch ----------------------------------------------------------


def test_good_patch_passes_probation_and_stays(gated, make_patch, mod, caplog):
    caplog.set_level(logging.INFO, logger="hotpatch")
    g = gated(window_s=WITHIN_S, min_calls=5)
    original = mod.price.__code__
    installed = g.apply(make_patch("1.1", GOOD_PRICE))
    tool = tool_of(g.gate, "1.1")
    with Callers(mod.price, range(8)) as callers:
        wait_for(lambda: g.gate.status()["1.1"]["calls"] >= 20)
        status = g.gate.status()["1.1"]
        assert status["errors"] == 0
        assert status["failing"] is False
        assert status["mechanism"] == g.mechanism
        assert status["functions"] == [f"{mod.__name__}:price"]
        assert g.healthy() == [True]
        if g.mechanism == "wrapper":  # counting through a trampoline, for now
            assert mod.price.__code__ is not installed[mod.price]
        else:
            assert sys.monitoring.get_tool(tool) == "hotpatch health gate"
        assert g.gate.wait(WAIT_S)
    assert not callers.errors()
    assert g.registry.level == ("1.1",)
    assert g.gate.status() == {}
    assert mod.price.__code__ is installed[mod.price] is not original
    counting_is_off(g, tool, installed.values())
    assert [mod.price(x) for x in range(4)] == [0, 2, 4, 6]
    passed = [r for r in caplog.records if "passed probation" in r.getMessage()]
    assert len(passed) == 1
    assert passed[0].levelno == logging.INFO
    assert "1.1" in passed[0].getMessage()
    assert g.recorder.rejected == []
    assert all(h.who != "health-gate" for h in g.registry.history)


def test_bad_patch_is_rolled_back_automatically(gated, make_patch, mod, caplog):
    caplog.set_level(logging.INFO, logger="hotpatch")
    g = gated(window_s=10, max_error_rate=0.05, min_calls=20)
    original = mod.price.__code__
    installed = g.apply(make_patch("1.1", BAD_PRICE))
    tool = tool_of(g.gate, "1.1")
    with Callers(mod.price, range(8)) as callers:
        assert g.gate.wait(5)  # long before the 10 s window ends
        answers_after = len(callers.outcomes)
        wait_for(lambda: len(callers.outcomes) > answers_after + 50)
    assert g.registry.level == ()
    assert mod.price.__code__ is original
    counting_is_off(g, tool, installed.values())
    # every call after the rollback got the baseline's answer
    late = callers.outcomes[answers_after + 3 * 8 :]
    assert late
    assert all(result == 2 * x for x, result in late)
    assert {type(e) for e in callers.errors()} == {ValueError}
    last = g.registry.history[-1]
    assert (last.action, last.version, last.who) == ("rollback", "1.1", "health-gate")
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    text = warning.getMessage()
    assert "rolled back patch 1.1" in text
    assert " errors in " in text
    assert " calls (" in text
    assert "%" in text
    [(version, source, reason, who)] = g.recorder.rejected
    assert (version, source, who) == ("1.1", "health-gate", "health-gate")
    assert "errors in" in reason
    assert g.healthy() == [True]  # the failing patch is gone


def test_health_check_is_false_while_a_patch_on_probation_fails(gated, make_patch, mod):
    g = gated(window_s=10, max_errors=3, min_calls=1000)
    g.apply(make_patch("1.1", BAD_PRICE))
    assert g.healthy() == [True]
    with g.registry.lock:  # the gate cannot roll back while the test holds the lock
        for x in (0, 4, 8):
            with pytest.raises(ValueError, match="bad price"):
                mod.price(x)
        assert g.gate.status()["1.1"]["failing"] is True
        assert g.healthy() == [False]
        assert g.registry.level == ("1.1",)
    assert g.gate.wait(5)
    assert g.registry.level == ()
    assert g.healthy() == [True]


# -- rolled back by hand ------------------------------------------------------------------


def test_patch_rolled_back_by_hand_is_left_alone(gated, make_patch, mod, caplog):
    caplog.set_level(logging.INFO, logger="hotpatch")
    g = gated(window_s=WITHIN_S, min_calls=1000)
    g.apply(make_patch("1.1", BAD_PRICE))
    g.registry.rollback(who="ops")
    assert g.gate.status() == {}
    installed = g.apply(make_patch("1.2", GOOD_PRICE))
    assert list(g.gate.status()) == ["1.2"]
    assert g.gate.wait(WAIT_S)
    assert g.registry.level == ("1.2",)
    assert mod.price.__code__ is installed[mod.price]
    assert [h.who for h in g.registry.history] == ["api", "ops", "api"]
    assert any("1.1 was rolled back during its probation" in r.getMessage() for r in caplog.records)


def test_a_failing_patch_rolled_back_by_hand_before_the_gate_acts_is_left_alone(
    gated, make_patch, mod
):
    g = gated(window_s=10, max_errors=2)
    g.apply(make_patch("1.1", BAD_PRICE))
    with g.registry.lock:  # the gate sees 1.1 failing, then waits for the lock
        for x in (0, 4):
            with pytest.raises(ValueError, match="bad price"):
                mod.price(x)
        g.registry.rollback(who="ops")
        installed = g.apply(make_patch("1.2", GOOD_PRICE))
    # 1.2 is on probation, healthy: the gate must not roll it back for 1.1's errors
    assert list(g.gate.status()) == ["1.2"]
    g.gate.close()
    assert g.registry.level == ("1.2",)
    assert mod.price.__code__ is installed[mod.price]
    assert all(h.who != "health-gate" for h in g.registry.history)
    assert g.recorder.rejected == []


# -- stacking --------------------------------------------------------------------------


def test_a_bad_patch_on_a_good_one_rolls_back_alone(gated, make_patch, mod):
    g = gated(window_s=WITHIN_S, max_error_rate=0.05, min_calls=10)
    good = g.apply(make_patch("1.1", GOOD_PRICE))
    g.apply(make_patch("1.2", BAD_LABEL))
    assert set(g.gate.status()) == {"1.1", "1.2"}
    with Callers(mod.label, range(6)), Callers(mod.price, range(6)):
        wait_for(lambda: g.registry.level == ("1.1",))
        assert g.gate.wait(WAIT_S)
    assert g.registry.level == ("1.1",)
    assert mod.price.__code__ is good[mod.price]
    assert mod.label(3) == "item 3"
    rollbacks = [h for h in g.registry.history if h.action == "rollback"]
    assert [(h.version, h.who) for h in rollbacks] == [("1.2", "health-gate")]
    assert [r[0] for r in g.recorder.rejected] == ["1.2"]


def test_a_bad_patch_takes_the_patches_stacked_on_it_along(gated, make_patch, mod):
    g = gated(window_s=10, max_errors=3, min_calls=1000)
    original = mod.price.__code__, mod.label.__code__
    g.apply(make_patch("1.1", BAD_PRICE))
    g.apply(make_patch("1.2", GOOD_LABEL))
    with Callers(mod.price, range(8)), Callers(mod.label, range(4)):
        assert g.gate.wait(5)
    assert g.registry.level == ()
    assert (mod.price.__code__, mod.label.__code__) == original
    last = g.registry.history[-1]
    assert (last.action, last.version, last.who) == ("rollback", "1.2, 1.1", "health-gate")
    assert [r[0] for r in g.recorder.rejected] == ["1.1"]


def test_a_bad_cumulative_patch_goes_back_to_the_level_it_replaced(gated, make_patch, mod):
    g = gated(window_s=10, max_errors=2, min_calls=1000)
    priced = g.apply(make_patch("1.1", GOOD_PRICE))
    labelled = g.apply(make_patch("1.2", GOOD_LABEL))
    g.apply(make_patch("1.3", BAD_PRICE, GOOD_LABEL, cumulative=True))
    assert g.registry.level == ("1.3",)
    for x in (0, 4):
        with pytest.raises(ValueError, match="bad price"):
            mod.price(x)
    wait_for(lambda: "1.3" not in g.gate.status())
    assert g.registry.level == ("1.1", "1.2")
    assert (mod.price(4), mod.label(4)) == (8, "item #4")
    # 1.1 and 1.2 are back in the level, and on the rest of their probation
    assert set(g.gate.status()) == {"1.1", "1.2"}
    g.gate.close()
    assert mod.price.__code__ is priced[mod.price]
    assert mod.label.__code__ is labelled[mod.label]


def test_wrapped_functions_uncovered_by_a_rollback_are_counted_again(gated, make_patch, mod):
    # 1.1 patches price; 1.2, on top, patches price again. While 1.2 is there,
    # price runs 1.2's code; once 1.2 is rolled back by hand, 1.1's again, counted.
    g = gated(window_s=10, max_errors=2, min_calls=1000)
    g.apply(make_patch("1.1", BAD_PRICE))
    g.apply(make_patch("1.2", GOOD_PRICE))
    assert mod.price(4) == 8  # 1.2's answer
    g.registry.rollback(who="ops")
    assert list(g.gate.status()) == ["1.1"]
    for x in (0, 4):
        with pytest.raises(ValueError, match="bad price"):
            mod.price(x)
    assert g.gate.wait(5)
    assert g.registry.level == ()
    assert mod.price(4) == 8


def test_a_rollback_that_fails_leaves_the_patch_reported_unhealthy(
    gated, make_patch, mod, monkeypatch, caplog
):
    g = gated(window_s=10, max_errors=1)
    g.apply(make_patch("1.1", BAD_PRICE))
    real_rollback = g.registry.rollback

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OSError("disk full")

    monkeypatch.setattr(g.registry, "rollback", broken)
    with pytest.raises(ValueError, match="bad price"):
        mod.price(0)
    assert g.gate.wait(5)
    assert g.registry.level == ("1.1",)
    assert g.healthy() == [False]
    assert any("rolling it back failed" in r.getMessage() for r in caplog.records)
    assert g.recorder.rejected == []
    monkeypatch.setattr(g.registry, "rollback", real_rollback)
    g.registry.rollback(who="ops")
    assert g.healthy() == [True]


# -- windows and thresholds ---------------------------------------------------------


def test_a_rate_under_the_threshold_is_confirmed(gated, make_patch, mod):
    g = gated(window_s=WITHIN_S, max_error_rate=0.2, min_calls=10)
    installed = g.apply(make_patch("1.1", BAD_PRICE))
    outcomes = []
    for x in range(1, 11):  # x = 4 and 8 raise: 2 errors in 10 calls, 20%: not over
        try:
            outcomes.append(mod.price(x))
        except ValueError:
            outcomes.append("error")
    assert outcomes.count("error") == 2
    assert g.gate.status()["1.1"]["failing"] is False
    assert g.gate.wait(WAIT_S)
    assert g.registry.level == ("1.1",)
    assert mod.price.__code__ is installed[mod.price]


def test_errors_count_only_once_there_are_min_calls(gated, make_patch, mod):
    g = gated(window_s=10, max_error_rate=0.05, min_calls=10)
    g.apply(make_patch("1.1", BAD_PRICE))
    for x in (0, 4):
        with pytest.raises(ValueError, match="bad price"):
            mod.price(x)
    for x in range(1, 8):
        if x != 4:
            mod.price(x)
    status = g.gate.status()["1.1"]
    assert (status["calls"], status["errors"], status["failing"]) == (8, 2, False)
    assert g.registry.level == ("1.1",)
    mod.price(1)
    mod.price(2)  # the 10th call: 2 errors in 10 calls is over 5%
    assert g.gate.wait(5)
    assert g.registry.level == ()


def test_max_errors_rolls_back_whatever_the_number_of_calls(gated, make_patch, mod):
    g = gated(window_s=10, min_calls=1000, max_errors=3)
    g.apply(make_patch("1.1", BAD_PRICE))
    for x in (0, 4):
        with pytest.raises(ValueError, match="bad price"):
            mod.price(x)
    assert g.gate.status()["1.1"]["failing"] is False
    with pytest.raises(ValueError, match="bad price"):
        mod.price(8)
    assert g.gate.wait(5)
    assert g.registry.level == ()


def test_after_the_window_errors_are_not_counted(gated, make_patch, mod):
    g = gated(window_s=0.3, max_errors=1)
    installed = g.apply(make_patch("1.1", BAD_PRICE))
    tool = tool_of(g.gate, "1.1")
    assert g.gate.wait(5)  # confirmed, no call made
    for x in (0, 4, 8):
        with pytest.raises(ValueError, match="bad price"):
            mod.price(x)
    time.sleep(0.05)  # a gate still counting would roll back now
    assert g.registry.level == ("1.1",)
    assert mod.price.__code__ is installed[mod.price]
    counting_is_off(g, tool, installed.values())


def warmed_instructions(function: Callable[[int], object]) -> list[str]:
    """``function``'s instructions as the interpreter runs them after 200 calls."""
    for x in range(200):
        function(x)
    return [i.opname for i in dis.get_instructions(function.__code__, adaptive=True)]


def test_after_probation_the_code_runs_as_if_never_watched(gated, make_patch, mod):
    # On 3.12, a code object ever given a local sys.monitoring event loses its
    # superinstructions for good (LOAD_FAST__LOAD_FAST of `x + x` here): the gate must
    # leave the patch's code as a never-watched copy of it runs, specialised the same way.
    g = gated(window_s=0.3)
    installed = g.apply(make_patch("1.1", GOOD_PRICE))
    assert [mod.price(x) for x in range(4)] == [0, 2, 4, 6]
    assert g.gate.wait(5)  # confirmed
    assert g.gate.status() == {}
    code = mod.price.__code__
    assert code is installed[mod.price]
    fresh = types.FunctionType(code.replace(), mod.price.__globals__)
    assert fresh.__code__ is not code
    assert warmed_instructions(mod.price) == warmed_instructions(fresh)


def test_close_ends_every_probation(gated, make_patch, mod):
    g = gated(window_s=10)
    installed = g.apply(make_patch("1.1", BAD_PRICE, GOOD_LABEL))
    tool = tool_of(g.gate, "1.1")
    g.gate.close()
    assert g.gate.status() == {}
    assert g.gate.wait(0)
    assert mod.price.__code__ is installed[mod.price]
    assert mod.label.__code__ is installed[mod.label]
    counting_is_off(g, tool, installed.values())
    g.apply(make_patch("1.2", GOOD_PRICE))  # a closed gate watches nothing more
    assert g.gate.status() == {}


# -- kinds of functions ----------------------------------------------------------------

BAD_NUMBERS = """
@patch.replace("MOD:numbers")
def numbers(n):
    for i in range(n):
        if i == 2:
            raise RuntimeError("bad number")
        yield i
"""
BAD_FETCH = """
@patch.replace("MOD:fetch")
async def fetch(x):
    await asyncio.sleep(0)
    if x < 0:
        raise LookupError(x)
    return x
"""
BAD_STREAM = """
@patch.replace("MOD:stream")
async def stream(n):
    for i in range(n):
        await asyncio.sleep(0)
        if i == 2:
            raise OSError("bad stream")
        yield i
"""
BAD_TOTAL = """
@patch.replace("MOD:Cart.total")
def total(self, tax=0):
    if tax < 0:
        raise ArithmeticError(tax)
    return self.n + tax + 0
"""
BAD_BUMP = """
@patch.replace("MOD:bump")
def bump(step=1):
    global count  # the closure's variable, by name
    if step < 0:
        raise ValueError(step)
    count += step
    return count
"""


async def _drain(agen: Any) -> list[Any]:
    return [item async for item in agen]


def _fail_numbers(mod: types.ModuleType) -> None:
    # an early close is GeneratorExit, not an error
    for _ in range(3):
        it = mod.numbers(5)
        next(it)
        it.close()
    with pytest.raises(RuntimeError, match="bad number"):
        list(mod.numbers(5))


def _fail_fetch(mod: types.ModuleType) -> None:
    assert asyncio.run(mod.fetch(3)) == 3
    with pytest.raises(LookupError):
        asyncio.run(mod.fetch(-1))


def _fail_stream(mod: types.ModuleType) -> None:
    assert asyncio.run(_drain(mod.stream(2))) == [0, 1]
    with pytest.raises(OSError, match="bad stream"):
        asyncio.run(_drain(mod.stream(5)))


def _fail_total(mod: types.ModuleType) -> None:
    assert mod.Cart(2).total(tax=1) == 3
    with pytest.raises(ArithmeticError):
        mod.Cart(2).total(-1)


def _fail_bump(mod: types.ModuleType) -> None:
    start = mod.bump(0)
    assert mod.bump(2) == start + 2
    with pytest.raises(ValueError, match="-1"):
        mod.bump(-1)


KINDS = {
    "generator": (BAD_NUMBERS, "numbers", _fail_numbers),
    "coroutine": (BAD_FETCH, "fetch", _fail_fetch),
    "async generator": (BAD_STREAM, "stream", _fail_stream),
    "method": (BAD_TOTAL, "Cart.total", _fail_total),
    "closure": (BAD_BUMP, "make_counter.<locals>.bump", _fail_bump),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_errors_of_every_kind_of_function_count(gated, make_patch, mod, kind):
    body, name, fail = KINDS[kind]
    g = gated(window_s=10, max_errors=1, min_calls=1000)
    installed = g.apply(make_patch("1.1", "import asyncio\n", body))
    [(func, code)] = installed.items()
    original_signature = inspect.signature(func)
    tool = tool_of(g.gate, "1.1")
    assert g.gate.status()["1.1"]["functions"] == [f"{mod.__name__}:{name}"]
    fail(mod)
    assert g.gate.wait(5)
    assert g.registry.level == ()
    status_errors = [r for r in g.recorder.rejected if r[0] == "1.1"]
    assert "1 errors in" in status_errors[0][2]
    assert inspect.signature(func) == original_signature
    counting_is_off(g, tool, [code])


# -- plugins, install, replay, options ---------------------------------------------------


def test_a_raising_plugin_elsewhere_does_not_break_the_gate(gated, make_patch, mod):
    g = gated(window_s=10, max_errors=3, min_calls=1000, plugins=[Raising()])
    g.registry.plugins.manager.register(Raising())  # one before the gate, one after
    g.apply(make_patch("1.1", BAD_PRICE))
    assert g.healthy() == [True]
    with Callers(mod.price, range(8)):
        assert g.gate.wait(5)
    assert g.registry.level == ()
    assert g.registry.history[-1].who == "health-gate"
    assert [r[0] for r in g.recorder.rejected] == ["1.1"]


def test_installed_through_the_agent(mechanism, make_patch, mod, tmp_path):
    gate = HealthGate(window_s=10, max_errors=2, min_calls=1000)
    with hotpatch.install(
        "1.0", journal=tmp_path / "journal", plugins=[gate], entry_points=False
    ) as agent:
        assert agent.registry is not None
        agent.registry.apply(hotpatch.load_patch(make_patch("1.1", BAD_PRICE)))
        assert gate.status()["1.1"]["mechanism"] == mechanism
        with Callers(mod.price, range(8)):
            assert gate.wait(5)
        assert agent.registry.level == ()
    gate.close()
    assert health_gate._MONITOR.tool_id is None


def test_patches_replayed_from_the_journal_are_not_on_probation_again(
    mechanism, make_patch, mod, tmp_path
):
    journal = tmp_path / "journal"
    first = hotpatch.Registry("1.0", journal=journal)
    first.apply(hotpatch.load_patch(make_patch("1.1", GOOD_PRICE)))
    gate = HealthGate(window_s=10)
    second = hotpatch.Registry("1.0", journal=journal, plugins=[gate])
    try:
        assert second.level == ("1.1",)
        assert gate.status() == {}
        second.apply(hotpatch.load_patch(make_patch("1.2", GOOD_LABEL)))
        assert list(gate.status()) == ["1.2"]
    finally:
        gate.close()
        second.rollback(to="1.0")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"window_s": 0}, "window_s must be a positive"),
        ({"window_s": float("nan")}, "window_s must be a positive"),
        ({"max_error_rate": 1.5}, "max_error_rate is a share"),
        ({"max_error_rate": -0.1}, "max_error_rate is a share"),
        ({"min_calls": 0}, "min_calls must be at least 1"),
        ({"max_errors": 0}, "max_errors must be at least 1"),
    ],
)
def test_options_are_checked(options, message):
    with pytest.raises(ValueError, match=message):
        HealthGate(**options)


# -- Registry.wrap and Registry.installed ---------------------------------------------


def _recording(seen: list[str]) -> Callable[..., Any]:
    def wrapper(function: types.FunctionType, impl: types.FunctionType) -> Any:
        def through(*args: Any, **kwargs: Any) -> Any:
            seen.append(function.__qualname__)
            return impl(*args, **kwargs)

        return through

    return wrapper


def test_wrap_routes_calls_and_unwrap_puts_the_code_back(registry, make_patch, mod):
    path = make_patch("1.1", GOOD_PRICE, BAD_TOTAL, BAD_BUMP)
    registry.apply(hotpatch.load_patch(path))
    installed = dict(registry.installed("1.1"))
    total = mod.Cart.total
    assert set(installed) == {mod.price, total, mod.bump}
    signatures = {f: inspect.signature(f) for f in installed}
    seen: list[str] = []
    unwrap = registry.wrap("1.1", _recording(seen))
    assert all(f.__code__ is not code for f, code in installed.items())
    assert {f: inspect.signature(f) for f in installed} == signatures
    start = mod.bump(0)
    assert (mod.price(3), mod.Cart(2).total(tax=1), mod.bump(step=2)) == (6, 3, start + 2)
    assert seen == [
        "make_counter.<locals>.bump",
        "price",
        "Cart.total",
        "make_counter.<locals>.bump",
    ]
    assert registry.wrap("1.1", _recording(seen))() is None  # already wrapped: nothing to do
    unwrap()
    assert all(f.__code__ is code for f, code in installed.items())
    unwrap()  # again: nothing
    mod.price(1)
    assert len(seen) == 4


def test_apply_and_rollback_see_through_a_wrapper(registry, make_patch, mod):
    original = mod.price.__code__
    registry.apply(hotpatch.load_patch(make_patch("1.1", GOOD_PRICE, GOOD_LABEL)))
    installed = dict(registry.installed("1.1"))
    seen: list[str] = []
    unwrap = registry.wrap("1.1", _recording(seen))
    registry.apply(hotpatch.load_patch(make_patch("1.2", BAD_PRICE)))
    assert mod.price(3) == 9
    registry.rollback()  # 1.2 goes: price runs 1.1's own code, not the wrapper
    assert mod.price.__code__ is installed[mod.price]
    assert mod.label.__code__ is not installed[mod.label]  # still wrapped
    mod.price(1)
    mod.label(1)
    assert seen == ["label"]
    registry.rollback()  # 1.1 goes, wrapper and all
    assert mod.price.__code__ is original
    assert mod.price(3) == 6
    unwrap()
    assert mod.price.__code__ is original
    assert mod.label(1) == "item 1"
    assert seen == ["label"]


def test_the_registry_forgets_trampolines_it_switched_out(registry, make_patch, mod):
    registry.apply(hotpatch.load_patch(make_patch("1.1", GOOD_PRICE)))
    unwrap = registry.wrap("1.1", _recording([]))
    trampoline = weakref.ref(mod.price.__code__)
    registry.rollback()
    del unwrap  # never called: the rollback took the trampoline out
    gc.collect()
    assert trampoline() is None


def test_a_cumulative_patch_over_a_wrapped_one(registry, make_patch, mod):
    originals = mod.price.__code__, mod.label.__code__
    registry.apply(hotpatch.load_patch(make_patch("1.1", GOOD_PRICE, GOOD_LABEL)))
    unwrap = registry.wrap("1.1", _recording([]))
    registry.apply(hotpatch.load_patch(make_patch("1.2", BAD_LABEL, cumulative=True)))
    assert mod.price.__code__ is originals[0]  # 1.2 does not patch price: back to the original
    assert mod.label(2) == "item #2"
    registry.rollback()
    installed = dict(registry.installed("1.1"))
    assert mod.price.__code__ is installed[mod.price]
    assert mod.label.__code__ is installed[mod.label]
    unwrap()
    registry.rollback()
    assert (mod.price.__code__, mod.label.__code__) == originals


def test_installed_and_wrap_name_only_applied_versions(registry, make_patch):
    registry.apply(hotpatch.load_patch(make_patch("1.1", GOOD_PRICE)))
    with pytest.raises(hotpatch.VersionConflict, match=r"patch 1\.2 is not applied"):
        registry.installed("1.2")
    with pytest.raises(hotpatch.VersionConflict, match=r"patch 1\.0 is not applied"):
        registry.wrap("1.0", _recording([]))
