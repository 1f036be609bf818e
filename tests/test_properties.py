"""Property-based test of the registry: random apply/cumulative/rollback runs against a model."""

from __future__ import annotations

import itertools
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

import hotpatch

MODULE = """
def price():
    return "base"

class Cart:
    def total(self):
        return "base"

def _make():
    currency = "base"

    def label():
        return currency

    return label

label = _make()
"""

# target qualname -> (replacement source with {marker}, how to call the live function)
TARGETS: dict[str, tuple[str, Callable[[types.ModuleType], object]]] = {
    "price": ("def price():\n    return {marker!r}\n", lambda m: m.price()),
    "Cart.total": ("def total(self):\n    return {marker!r}\n", lambda m: m.Cart().total()),
    "label": ("def label():\n    return {marker!r}\n", lambda m: m.label()),
}
NAMES = sorted(TARGETS)
BASELINE = "1.0"


@dataclass
class Level:
    """The model's entry for one applied patch: what every target returns, what it replaced."""

    n: int
    returns: dict[str, str]
    replaced: list[Level] = field(default_factory=list)

    @property
    def version(self) -> str:
        return f"1.0.{self.n}"


def unwind(stack: list[Level], goal: int | None) -> list[Level] | None:
    """The model's rollback: pop (a cumulative gives back what it replaced) until ``goal``.

    ``goal`` is a patch number, 0 for the baseline, ``None`` for one step. Returns
    the new stack, or ``None`` when the rollback must be refused.
    """
    stack = list(stack)
    if not stack:
        return None
    while stack:
        if goal is not None and stack[-1].n == goal:
            return stack
        top = stack.pop()
        stack.extend(top.replaced)
        if goal is None:
            return stack
    return stack if goal == 0 else None


class RegistryMachine(RuleBasedStateMachine):
    module: types.ModuleType
    folder: Path
    originals: dict[str, tuple[object, ...]]

    def __init__(self) -> None:
        super().__init__()
        self.registry = hotpatch.Registry(BASELINE)
        self.stack: list[Level] = []
        self.markers = itertools.count()
        self.files = itertools.count()

    # -- helpers -------------------------------------------------------------------------

    def top(self) -> int:
        return self.stack[-1].n if self.stack else 0

    def expected(self) -> dict[str, str]:
        return dict(self.stack[-1].returns) if self.stack else dict.fromkeys(NAMES, "base")

    def load(self, n: int, changes: dict[str, str], *, cumulative: bool) -> hotpatch.Patch:
        parts = [
            "from hotpatch import Patch\n"
            f"patch = Patch(version='1.0.{n}', baseline={BASELINE!r}, cumulative={cumulative})\n"
        ]
        for name, marker in changes.items():
            parts.append(f"@patch.replace('{self.module.__name__}:{name}')\n")
            parts.append(TARGETS[name][0].format(marker=marker))
        path = self.folder / f"patch_{next(self.files)}.py"
        path.write_text("".join(parts))
        return hotpatch.load_patch(path)

    def apply(self, n: int, names: list[str], cumulative: bool) -> None:
        changes = {name: f"m{next(self.markers)}" for name in names}
        patch = self.load(n, changes, cumulative=cumulative)
        if n <= self.top():
            with pytest.raises(hotpatch.VersionConflict):
                self.registry.apply(patch)
            return
        self.registry.apply(patch)
        if cumulative:
            returns = dict.fromkeys(NAMES, "base") | changes
            self.stack = [Level(n, returns, self.stack)]
        else:
            self.stack.append(Level(n, self.expected() | changes))

    def rollback_to(self, goal: int | None) -> None:
        to = None if goal is None else (BASELINE if goal == 0 else f"1.0.{goal}")
        after = unwind(self.stack, goal)
        if after is None:
            with pytest.raises(hotpatch.VersionConflict):
                self.registry.rollback(to=to)
            return
        self.registry.rollback(to=to)
        self.stack = after

    # -- rules -----------------------------------------------------------------------------

    subsets = st.lists(st.sampled_from(NAMES), min_size=1, max_size=len(NAMES), unique=True)

    @rule(step=st.integers(1, 3), names=subsets, cumulative=st.booleans())
    def apply_newer(self, step: int, names: list[str], cumulative: bool) -> None:
        self.apply(self.top() + step, names, cumulative)

    @rule(n=st.integers(1, 30), names=subsets, cumulative=st.booleans())
    def apply_any_version(self, n: int, names: list[str], cumulative: bool) -> None:
        self.apply(n, names, cumulative)

    @rule(data=st.data())
    def rollback(self, data: st.DataObject) -> None:
        # one step back; a level that is (or was, under a cumulative) applied, or the
        # baseline; or any version at all, which must be refused unless it is one of those
        known = [level.n for level in self.stack] + [0]
        goal = data.draw(
            st.one_of(st.none(), st.sampled_from(known), st.integers(0, 30)), label="goal"
        )
        self.rollback_to(goal)

    # -- what must always hold -----------------------------------------------------------

    @invariant()
    def functions_match_the_model(self) -> None:
        actual = {name: TARGETS[name][1](self.module) for name in NAMES}
        assert actual == self.expected()

    @invariant()
    def level_matches_the_model(self) -> None:
        assert self.registry.level == tuple(level.version for level in self.stack)
        assert self.registry.version == (self.stack[-1].version if self.stack else BASELINE)

    @invariant()
    def at_the_baseline_the_code_is_the_original(self) -> None:
        if not self.stack:
            assert snapshot(self.module) == self.originals

    def teardown(self) -> None:
        if self.registry.level:
            self.registry.rollback(to=BASELINE)
        assert snapshot(self.module) == self.originals


def snapshot(module: types.ModuleType) -> dict[str, tuple[object, ...]]:
    functions = {"price": module.price, "Cart.total": module.Cart.total, "label": module.label}
    return {
        name: (id(f.__code__), f.__defaults__, f.__kwdefaults__, f.__doc__)
        for name, f in functions.items()
    }


def test_registry_matches_a_stack_model(make_module, tmp_path):
    module = make_module(MODULE)
    folder = tmp_path / "generated"
    folder.mkdir()

    class Machine(RegistryMachine):
        pass

    Machine.module = module
    Machine.folder = folder
    Machine.originals = snapshot(module)
    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=60,
            stateful_step_count=20,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
    assert snapshot(module) == Machine.originals


@pytest.mark.parametrize(
    ("stack", "goal", "expected"),
    [
        ([], None, None),
        ([1], None, []),
        ([1, 2], 1, [1]),
        ([1, 2], 0, []),
        ([1, 2], 3, None),
        ([1, 2, "c3:1,2"], None, [1, 2]),
        ([1, 2, "c3:1,2"], 1, [1]),
        ([1, 2, "c3:1,2"], 0, []),
    ],
)
def test_the_model_unwinds_like_the_spec_says(stack, goal, expected):
    """The model itself, checked against SPEC section 4's rollback rules."""
    levels: list[Level] = []
    for item in stack:
        if isinstance(item, str):
            n, replaced = item[1:].split(":")
            below = [Level(int(m), {}) for m in replaced.split(",")]
            levels = [Level(int(n), {}, below)]
        else:
            levels.append(Level(item, {}))
    after = unwind(levels, goal)
    assert (None if after is None else [level.n for level in after]) == expected
