"""Journal replay: what a new process comes back to, and what it can go back to.

A replayed registry must be the registry that applied the patches: the same
functions running the same code at the top of the level, and a rollback from
there -- one step at a time, or to any level -- leaves every function as it
was at that level when the patches were first applied, down to the original
code objects at the baseline. Migrations run again, in order, with the code
of the level below them live; plugins that follow applies see every patch.

Each test records a journal with one registry (the "first process"), undoes
that in memory only (``detach_journal``, then a rollback), and replays copies
of the journal with fresh registries.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import importlib.util
import inspect
import marshal
import shutil
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import hotpatch
import hotpatch._journal
import hotpatch._journal_format
from hotpatch._codecache import CodeCache

MODULE = """
SEEN = []
RATE = 1

def f0(x, y=1):
    "f0 at the baseline"
    return x + y

def f1(x, y=1):
    return x + y + 1

def f2(x):
    return x + 2

def f3(x, *, z=3):
    return x + z

class C:
    def m(self, x):
        return x + 4

g = f0  # another name of f0: mod:g patches the same function
"""
FUNCTIONS = ("f0", "f1", "f2", "f3")


def _replacement(mod: str, n: int, target: str) -> str:
    value = n * 100 + len(target)
    if target == "f3":
        return (
            f"@patch.replace('{mod}:f3')\ndef f3(x, *, z={n}):\n    return x * 2 + z + {value}\n\n"
        )
    if target == "C.m":
        return f"@patch.replace('{mod}:C.m')\ndef m(self, x):\n    return x + {value}\n\n"
    name = "f0" if target == "g" else target
    params = "(x)" if name == "f2" else "(x, y=1)"
    doc = f'    "{target} at {n}"\n' if n % 2 else ""
    return (
        f"@patch.replace('{mod}:{target}')\n"
        f"def {name}{params}:\n{doc}"
        f"    return x * {n} + {value}\n\n"
    )


def patch_text(mod: str, n: int, targets: list[str], *, extra: str = "", more: str = "") -> str:
    head = (
        f"from hotpatch import Patch\n\npatch = Patch(version='1.0.{n}', baseline='1.0'{extra})\n\n"
    )
    return head + more + "".join(_replacement(mod, n, t) for t in targets)


def state(mod: types.ModuleType) -> list[Any]:
    """What a caller can see of the module's functions: answers, defaults, docs, signatures."""
    seen: list[Any] = []
    for name in FUNCTIONS:
        func = getattr(mod, name)
        seen.append((name, func(3), func.__defaults__))
        seen.append((func.__kwdefaults__, func.__doc__, str(inspect.signature(func))))
    seen.append(mod.C().m(3))
    seen.append(mod.g is mod.f0)
    return seen


def codes(mod: types.ModuleType) -> list[types.CodeType]:
    return [getattr(mod, n).__code__ for n in FUNCTIONS] + [mod.C.m.__code__]


class Recorded:
    """A journal written by a first registry, and the state at each of its levels."""

    def __init__(
        self,
        mod: types.ModuleType,
        journal: Path,
        states: dict[str, list[Any]],
        installed: dict[str, list[tuple[types.FunctionType, types.CodeType]]],
        originals: list[types.CodeType],
    ):
        self.mod = mod
        self.journal = journal
        self.states = states  # version (or the baseline) -> state at that level
        self.installed = installed  # version -> what it installed, as first applied
        self.originals = originals
        self.versions = [v for v in states if v != "1.0"]
        self.copies = 0

    def replay(self, **kwargs: Any) -> hotpatch.Registry:
        """A fresh registry on a copy of the journal (a new process would read the same)."""
        self.copies += 1
        copy = self.journal.with_name(f"copy-{self.copies}.json")
        shutil.copy(self.journal, copy)
        return hotpatch.Registry("1.0", journal=copy, **kwargs)


@pytest.fixture
def record(
    make_module: Callable[[str], types.ModuleType],
    write_patch: Callable[..., Path],
    tmp_path: Path,
) -> Callable[..., Recorded]:
    """``record(texts)`` applies ``texts(module name)`` one by one with a journal, then
    undoes them in memory: the functions are back at the baseline, the journal kept."""

    def make(texts: Callable[[str], list[str]]) -> Recorded:
        mod = make_module(MODULE)
        originals = codes(mod)
        journal = tmp_path / "journal.json"
        first = hotpatch.Registry("1.0", journal=journal)
        states = {"1.0": state(mod)}
        for text in texts(mod.__name__):
            result = first.apply(hotpatch.load_patch(write_patch(text)))
            states[result.version] = state(mod)
        installed = {v: list(first.installed(v)) for v in first.level}
        first.detach_journal()
        first.rollback(to="1.0")  # in memory: the journal keeps the level
        assert all(a is b for a, b in zip(codes(mod), originals, strict=True))
        return Recorded(mod, journal, states, installed, originals)

    return make


# A level where the top patch of each function is a different one, with a name two
# specs share (mod:g is mod:f0), a method, keyword-only defaults and docstrings.
def stacked(mod: str) -> list[str]:
    plan = [
        ["f0", "f1", "f2", "f3", "C.m"],
        ["f0", "f1"],
        ["f2"],
        ["g"],
        ["f1", "f3"],
        ["f0", "C.m"],
        ["f2", "f3"],
        ["f1"],
        ["g", "f2"],
        ["f0"],
    ]
    return [patch_text(mod, n, targets) for n, targets in enumerate(plan, start=1)]


def back_at_baseline(recorded: Recorded, registry: hotpatch.Registry) -> None:
    if registry.level:
        registry.rollback(to="1.0")
    assert state(recorded.mod) == recorded.states["1.0"]
    assert all(a is b for a, b in zip(codes(recorded.mod), recorded.originals, strict=True))


def test_a_replay_comes_back_at_the_top_of_every_function(record):
    recorded = record(stacked)
    registry = recorded.replay()
    try:
        assert list(registry.level) == recorded.versions
        assert state(recorded.mod) == recorded.states[recorded.versions[-1]]
        assert [h.action for h in registry.history][-len(recorded.versions) :] == ["replay"] * 10
        assert (
            registry.journal_report
            == f"replayed 10 patches from {registry._recording.journal.path}"
        )  # type: ignore[union-attr]
    finally:
        back_at_baseline(recorded, registry)


def test_after_a_replay_each_rollback_step_goes_back_one_level(record):
    recorded = record(stacked)
    registry = recorded.replay()
    try:
        for below in reversed(["1.0", *recorded.versions[:-1]]):
            result = registry.rollback()
            assert list(registry.level) == (
                [] if below == "1.0" else recorded.versions[: recorded.versions.index(below) + 1]
            )
            assert state(recorded.mod) == recorded.states[below], (result.rolled_back, below)
    finally:
        back_at_baseline(recorded, registry)


@pytest.mark.parametrize("goal", ["1.0", *(f"1.0.{n}" for n in range(1, 10))])
def test_after_a_replay_a_rollback_to_any_level_is_that_level(record, goal):
    recorded = record(stacked)
    registry = recorded.replay()
    try:
        registry.rollback(to=goal)
        assert state(recorded.mod) == recorded.states[goal]
        # and on down from there, one jump more
        if goal != "1.0":
            lower = recorded.versions[: recorded.versions.index(goal)]
            registry.rollback(to=lower[len(lower) // 2] if lower else "1.0")
            assert (
                state(recorded.mod) == recorded.states[lower[len(lower) // 2] if lower else "1.0"]
            )
    finally:
        back_at_baseline(recorded, registry)


def test_after_a_replay_what_each_version_installed_is_what_it_first_installed(record):
    recorded = record(stacked)
    registry = recorded.replay()
    try:
        for version in reversed(recorded.versions):
            assert registry.installed(version) == tuple(recorded.installed[version]), version
        top = registry.installed(recorded.versions[-1])
        assert all(f.__code__ is c for f, c in top)  # the top version's code is what runs
    finally:
        back_at_baseline(recorded, registry)


def test_a_patch_applied_after_a_replay_stacks_and_rolls_back_through_the_replayed_level(
    record, write_patch
):
    recorded = record(stacked)
    registry = recorded.replay()
    mod = recorded.mod.__name__
    try:
        top = state(recorded.mod)
        registry.apply(hotpatch.load_patch(write_patch(patch_text(mod, 11, ["f1", "f2"]))))
        assert state(recorded.mod) != top
        registry.rollback()
        assert state(recorded.mod) == top
        registry.apply(hotpatch.load_patch(write_patch(patch_text(mod, 12, ["f3"]))))
        registry.rollback(to="1.0.7")
        assert state(recorded.mod) == recorded.states["1.0.7"]
    finally:
        back_at_baseline(recorded, registry)


def test_a_cumulative_patch_after_a_replay_replaces_the_whole_replayed_level(record, write_patch):
    recorded = record(stacked)
    registry = recorded.replay()
    mod = recorded.mod.__name__
    try:
        text = patch_text(mod, 11, ["f2"], extra=", cumulative=True")
        registry.apply(hotpatch.load_patch(write_patch(text)))
        assert registry.level == ("1.0.11",)
        # what it does not patch is back at the baseline, what it patches is its own
        now = state(recorded.mod)
        base = recorded.states["1.0"]
        assert now[:4] == base[:4]  # f0, f1
        assert now[4] != base[4]  # f2
        registry.rollback()
        assert list(registry.level) == recorded.versions
        assert state(recorded.mod) == recorded.states[recorded.versions[-1]]
        registry.rollback(to="1.0.4")
        assert state(recorded.mod) == recorded.states["1.0.4"]
    finally:
        back_at_baseline(recorded, registry)


def test_a_cumulative_patch_inside_the_level_replays_and_rolls_back_through_it(record):
    def texts(mod: str) -> list[str]:
        texts = stacked(mod)[:5]
        texts.append(patch_text(mod, 6, ["f1", "C.m"], extra=", cumulative=True"))
        texts += [patch_text(mod, n, t) for n, t in ((7, ["f0"]), (8, ["f1", "f2"]), (9, ["f0"]))]
        return texts

    recorded = record(texts)
    for goal in ["1.0.8", "1.0.7", "1.0.6", "1.0"]:  # what 1.0.6 replaced is not recorded
        registry = recorded.replay()
        try:
            assert list(registry.level) == ["1.0.6", "1.0.7", "1.0.8", "1.0.9"]
            assert state(recorded.mod) == recorded.states["1.0.9"]
            registry.rollback(to=goal)
            assert state(recorded.mod) == recorded.states[goal], goal
        finally:
            back_at_baseline(recorded, registry)


def test_a_name_a_lower_patch_brought_is_there_for_the_patches_above_it(record):
    # 1.0.2 brings _helper into the module; 1.0.4's f1 calls the module's _helper
    # without bringing its own: the replay must bring it as the first apply did.
    def texts(mod: str) -> list[str]:
        head = "from hotpatch import Patch\n\npatch = Patch(version='1.0.{}', baseline='1.0')\n\n"
        return [
            patch_text(mod, 1, ["f0"]),
            head.format(2)
            + "def _helper(x):\n    return x * 7\n\n"
            + f"@patch.replace('{mod}:f2')\ndef f2(x):\n    return _helper(x)\n\n",
            patch_text(mod, 3, ["f0"]),
            head.format(4) + f"@patch.replace('{mod}:f1')\ndef f1(x, y=1):\n"
            "    return _helper(x) + 1\n\n",
        ]

    recorded = record(texts)
    registry = recorded.replay()
    try:
        assert recorded.mod.f1(3) == 22
        assert state(recorded.mod) == recorded.states["1.0.4"]
        registry.rollback(to="1.0.3")
        assert state(recorded.mod) == recorded.states["1.0.3"]
    finally:
        back_at_baseline(recorded, registry)
    assert not hasattr(recorded.mod, "_helper")


@pytest.mark.parametrize("inner", ["lambda", "def", "genexpr"])
def test_a_name_a_lower_patch_brings_for_code_of_its_own_is_there_above_it(record, inner):
    # 1.0.2's f2 looks _helper up only in code of its own (a lambda, an inner def, a
    # generator expression); 1.0.3 replaces f2 again, so only that lookup says 1.0.2
    # brings a name and must be applied in turn; 1.0.4's f1 calls the module's _helper.
    body = {
        "lambda": "    return (lambda v: _helper(v))(x)\n",
        "def": "    def inner(v):\n        return _helper(v)\n    return inner(x)\n",
        "genexpr": "    return sum(_helper(v) for v in (x,))\n",
    }[inner]

    def texts(mod: str) -> list[str]:
        head = "from hotpatch import Patch\n\npatch = Patch(version='1.0.{}', baseline='1.0')\n\n"
        return [
            patch_text(mod, 1, ["f0"]),
            head.format(2)
            + "def _helper(x):\n    return x * 7\n\n"
            + f"@patch.replace('{mod}:f2')\ndef f2(x):\n{body}\n",
            patch_text(mod, 3, ["f2"]),
            head.format(4) + f"@patch.replace('{mod}:f1')\ndef f1(x, y=1):\n"
            "    return _helper(x) + 1\n\n",
        ]

    recorded = record(texts)
    registry = recorded.replay()
    try:
        assert recorded.mod.f1(3) == 22
        assert state(recorded.mod) == recorded.states["1.0.4"]
        registry.rollback(to="1.0.2")
        assert recorded.mod.f2(3) == 21
        assert state(recorded.mod) == recorded.states["1.0.2"]
    finally:
        back_at_baseline(recorded, registry)
    assert not hasattr(recorded.mod, "_helper")


def test_migrations_run_again_in_order_with_the_level_below_them_live(record):
    migrate = (
        "@patch.migrate('{mod}')\n"
        "def up(module):\n"
        "    module.SEEN.append(('{v}', module.f0(3), module.RATE))\n"
        "    module.RATE += 1\n\n"
        "@patch.unmigrate('{mod}')\n"
        "def down(module):\n"
        "    module.SEEN.append(('down {v}', module.f0(3), module.RATE))\n"
        "    module.RATE -= 1\n\n"
    )

    def texts(mod: str) -> list[str]:
        out = stacked(mod)
        for n in (3, 7):
            out[n - 1] = patch_text(mod, n, ["f2"], more=migrate.format(mod=mod, v=f"1.0.{n}"))
        return out

    recorded = record(texts)
    seen = recorded.mod.SEEN
    at = {v: recorded.states[v][0][1] for v in recorded.states}  # f0(3) at each level
    assert seen == [
        ("1.0.3", at["1.0.2"], 1),
        ("1.0.7", at["1.0.6"], 2),
        ("down 1.0.7", at["1.0"], 3),  # the code goes back first, then the unmigrations
        ("down 1.0.3", at["1.0"], 2),
    ]
    del seen[:]
    registry = recorded.replay()
    try:
        # the same calls, seeing the same code and state, as when first applied
        assert seen == [("1.0.3", at["1.0.2"], 1), ("1.0.7", at["1.0.6"], 2)]
        registry.rollback(to="1.0.5")
        assert seen[2:] == [("down 1.0.7", at["1.0.5"], 3)]
        assert state(recorded.mod) == recorded.states["1.0.5"]
    finally:
        back_at_baseline(recorded, registry)
    assert seen[3:] == [("down 1.0.3", at["1.0"], 2)]
    assert recorded.mod.RATE == 1


def test_plugins_that_follow_applies_see_every_replayed_patch(record):
    class Follow:
        def __init__(self) -> None:
            self.seen: list[tuple[str, str]] = []

        @hotpatch.hookimpl
        def hotpatch_before_apply(self, patch: hotpatch.Patch, registry: Any) -> None:
            self.seen.append(("before", patch.version))

        @hotpatch.hookimpl
        def hotpatch_after_apply(self, patch: hotpatch.Patch, registry: Any, result: Any) -> None:
            self.seen.append(("after", result.version))

    recorded = record(stacked)
    follow = Follow()
    registry = recorded.replay(plugins=[follow])
    try:
        assert follow.seen == [(w, v) for v in recorded.versions for w in ("before", "after")]
    finally:
        back_at_baseline(recorded, registry)


def test_the_history_of_a_replay_is_recorded_with_the_next_change(record, write_patch):
    recorded = record(stacked)
    registry = recorded.replay()
    mod = recorded.mod.__name__
    try:
        registry.apply(hotpatch.load_patch(write_patch(patch_text(mod, 11, ["f0"]))))
        again = hotpatch.Registry("1.0", journal=registry._recording.journal.path)  # type: ignore[union-attr]
        try:
            replays = [h for h in again.history if h.action == "replay"]
            assert [h.version for h in replays][:10] == recorded.versions
            assert [list(h.level) for h in replays][:10] == [
                recorded.versions[: i + 1] for i in range(10)
            ]
        finally:
            again.detach_journal()
            again.rollback(to="1.0")
    finally:
        back_at_baseline(recorded, registry)


def test_a_strict_patch_after_a_replay_then_a_rollback_to_any_level(record, write_patch):
    recorded = record(stacked)
    mod = recorded.mod.__name__
    for goal in ["1.0.9", "1.0.6", "1.0.2", "1.0"]:
        registry = recorded.replay()
        try:
            text = patch_text(mod, 11, ["f1"], extra=", quiescence='strict'")
            registry.apply(hotpatch.load_patch(write_patch(text)))
            registry.rollback(to=goal)
            assert state(recorded.mod) == recorded.states[goal], goal
        finally:
            back_at_baseline(recorded, registry)


def test_wrapping_a_replayed_version_reaches_only_the_functions_that_run_its_code(record):
    recorded = record(stacked)
    registry = recorded.replay()
    calls: list[str] = []

    def counting(function: Any, impl: Any) -> Any:
        def count(*args: Any, **kwargs: Any) -> Any:
            calls.append(function.__name__)
            return impl(*args, **kwargs)

        return count

    try:
        top = state(recorded.mod)
        unwrap = registry.wrap("1.0.2", counting)  # every function it patched is patched again
        recorded.mod.f0(3)
        recorded.mod.f1(3)
        assert calls == []
        unwrap()
        unwrap = registry.wrap("1.0.9", counting)  # on top of f2 (and f0 through mod:g: 1.0.10)
        assert state(recorded.mod) == top
        assert calls == ["f2"]
        unwrap()
        registry.rollback(to="1.0.8")
        assert state(recorded.mod) == recorded.states["1.0.8"]
    finally:
        back_at_baseline(recorded, registry)


# -- the code a replay compiled, kept for the next one -------------------------------------


def _cache_of(journal: Path) -> Path:
    (found,) = journal.parent.glob(".hotpatch-code-*")
    assert found.name.endswith(f".{sys.implementation.cache_tag}")
    return found


def _forged(cache: Path, codes: dict[tuple[str, str], types.CodeType]) -> None:
    """A cache file as a replay writes it (magic, sha256 of the body, marshalled codes)."""
    body = marshal.dumps(codes)
    cache.write_bytes(importlib.util.MAGIC_NUMBER + hashlib.sha256(body).digest() + body)


def test_the_next_replay_takes_the_code_the_last_one_compiled(record, tmp_path):
    recorded = record(stacked)
    registry = recorded.replay()
    journal = registry._recording.journal.path  # type: ignore[union-attr]
    registry.detach_journal()  # undone in memory: the journal keeps the level
    back_at_baseline(recorded, registry)
    cache = _cache_of(journal)
    # The code kept for 1.0.10 (the top of f0) is taken as it is: here, one that
    # answers otherwise, written in its place as a replay would have.
    entry = hotpatch._journal.Journal(journal).read().level[-1]  # type: ignore[union-attr]
    key = (entry.sha256, f"<hotpatch {Path(entry.path).name} {entry.sha256[:12]}>")
    text = entry.text.replace("return x * 10 + 1002", "return -1")
    _forged(cache, {key: compile(text, key[1], "exec", dont_inherit=True)})
    again = hotpatch.Registry("1.0", journal=journal)
    try:
        assert recorded.mod.f0(3) == -1
    finally:
        back_at_baseline(recorded, again)


@pytest.mark.parametrize("damage", ["a byte", "another interpreter", "cut", "not codes"])
def test_a_cache_that_does_not_match_is_compiled_again_and_replaced(record, damage):
    recorded = record(stacked)
    registry = recorded.replay()
    journal = registry._recording.journal.path  # type: ignore[union-attr]
    registry.detach_journal()  # undone in memory: the journal keeps the level
    back_at_baseline(recorded, registry)
    cache = _cache_of(journal)
    good = cache.read_bytes()
    if damage == "a byte":
        cache.write_bytes(good[:-20] + bytes([good[-20] ^ 1]) + good[-19:])
    elif damage == "another interpreter":
        cache.write_bytes(b"\0\0\r\n" + good[4:])
    elif damage == "cut":
        cache.write_bytes(good[: len(good) // 2])
    else:
        _forged(cache, {"not": "codes"})  # type: ignore[dict-item]
    again = hotpatch.Registry("1.0", journal=journal)
    try:
        assert state(recorded.mod) == recorded.states[recorded.versions[-1]]
        kept = CodeCache(journal)  # written again, as the replay compiled it
        kept.load()
        assert len(kept._codes) == len(recorded.versions)
    finally:
        back_at_baseline(recorded, again)


# -- the garbage collector, held off while a level is loaded -------------------------------


@pytest.mark.parametrize("enabled", [True, False])
def test_a_replay_holds_the_collector_off_and_leaves_it_as_it_found_it(record, enabled):
    # 1.0.3 has a migration (applied in turn, as the replay loads the level): it sees
    # whether the collector runs meanwhile.
    def texts(mod: str) -> list[str]:
        out = stacked(mod)
        more = (
            f"import gc\n\n@patch.migrate('{mod}')\n"
            "def up(module):\n    module.SEEN.append(gc.isenabled())\n\n"
        )
        out[2] = patch_text(mod, 3, ["f2"], more=more)
        return out

    recorded = record(texts)
    del recorded.mod.SEEN[:]
    was = gc.isenabled()
    try:
        if not enabled:
            gc.disable()
        registry = recorded.replay()
        assert gc.isenabled() is enabled
        assert recorded.mod.SEEN == [False]
        assert state(recorded.mod) == recorded.states[recorded.versions[-1]]
        back_at_baseline(recorded, registry)
    finally:
        if was:
            gc.enable()


@pytest.mark.parametrize("enabled", [True, False])
def test_a_replay_that_fails_leaves_the_collector_as_it_found_it(record, enabled):
    recorded = record(stacked)
    f3 = recorded.mod.f3
    del recorded.mod.f3  # a target gone from the "restarted" process
    was = gc.isenabled()
    try:
        if not enabled:
            gc.disable()
        with pytest.raises(hotpatch.JournalError, match="cannot be replayed"):
            recorded.replay()
        assert gc.isenabled() is enabled
    finally:
        recorded.mod.f3 = f3
        if was:
            gc.enable()
    assert state(recorded.mod) == recorded.states["1.0"]


# -- what a replay reads is what the journal holds now -------------------------------------


def test_a_record_changed_since_the_last_read_is_read_anew(record):
    # Versions are parsed once per text: a record whose version changed is the new
    # version, and one changed to no version at all is refused, never the old one.
    recorded = record(stacked)
    journal = hotpatch._journal.Journal(recorded.journal)
    state_read = journal.read()
    assert state_read is not None
    assert [e.version for e in state_read.level] == recorded.versions
    top = state_read.level[-1]
    text = top.text.replace("version='1.0.10'", "version='1.0.10.post1'")
    moved = dataclasses.replace(
        top,
        version="1.0.10.post1",
        text=text,
        sha256=hashlib.sha256(text.encode()).hexdigest(),
    )
    journal.write(hotpatch._journal_format.JournalState("1.0", [*state_read.level[:-1], moved]))
    registry = hotpatch.Registry("1.0", journal=recorded.journal)
    try:
        assert registry.level[-1] == "1.0.10.post1"
        assert state(recorded.mod) == recorded.states["1.0.10"]
        registry.detach_journal()
    finally:
        back_at_baseline(recorded, registry)
    bad = dataclasses.replace(moved, version="1.0.10-x")
    journal.write(hotpatch._journal_format.JournalState("1.0", [*state_read.level[:-1], bad]))
    with pytest.raises(hotpatch.JournalError, match=r"corrupt.*1\.0\.10-x"):
        hotpatch.Registry("1.0", journal=recorded.journal)
