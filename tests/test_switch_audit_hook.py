"""The targets of a patch switch together even under an audit hook written in Python.

CPython audits each assignment of a function's ``__code__``, ``__defaults__`` and
``__kwdefaults__``: a hook added with ``sys.addaudithook`` runs Python code before
each such store, and another thread can run there. The hook here hands the GIL
over at each of them. It runs in a process of its own: a hook cannot be removed.
"""

from __future__ import annotations

import functools
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pychild import run_python_json

import hotpatch
from hotpatch import _switch

MODULE = """
class Base:
    def who(self):
        return "base"


class Child(Base):
    def v(self, x):
        return ("m", 0, super().who())


def f(x):
    return ("f", 0, x)


def g(x, *, y=1):
    return ("g", 0, x + y)


def h(x, y=1):
    return ("h", 0, x + y)


def gen(x):
    yield ("gen", 0, x)


async def co(x):
    return ("co", 0, x)
"""

# The scenario's module has a closure too (a nested target, found by the heap scan).
NESTED = """

def make(k):
    def inner(x):
        return ("n", 0, x + k)
    return inner


made = make(0)
"""

SCENARIO = """
import json, sys, tempfile, textwrap, threading, time
from pathlib import Path
sys.path[:0] = {paths!r}
import hotpatch

folder = Path(tempfile.mkdtemp())
(folder / "pairmod.py").write_text({module!r})
sys.path.insert(0, str(folder))
import pairmod


def patch_source(v):
    return textwrap.dedent(f'''
        from hotpatch import Patch
        patch = Patch(version="1.0.{{v}}", baseline="1.0")


        @patch.replace("pairmod:f")
        def f(x):
            return ("f", {{v}}, x)


        @patch.replace("pairmod:g")
        def g(x, *, y={{v + 1}}):
            return ("g", {{v}}, x + y)


        @patch.replace("pairmod:h")
        def h(x, y={{v + 1}}):
            return ("h", {{v}}, x + y)


        @patch.replace("pairmod:gen")
        def gen(x):
            yield ("gen", {{v}}, x)


        @patch.replace("pairmod:co")
        async def co(x):
            return ("co", {{v}}, x)


        @patch.replace("pairmod:Child.v")
        def v(self, x):
            return ("m", {{v}}, super().who())


        @patch.replace("pairmod:make.<locals>.inner")
        def inner(x):
            return ("n", {{v}}, x + k)
    ''')


patches = []
for v in (1, 2):
    path = folder / f"p{{v}}.py"
    path.write_text(patch_source(v))
    patches.append(hotpatch.load_patch(path))
registry = hotpatch.Registry("1.0")


def hook(event, args):
    if event in ("object.__setattr__", "object.__delattr__"):
        time.sleep(0)  # hands the GIL over: another thread runs here


sys.addaudithook(hook)
sys.setswitchinterval(1e-6)
f, g, h, gen, co, child, made = (
    pairmod.f, pairmod.g, pairmod.h, pairmod.gen, pairmod.co, pairmod.Child(), pairmod.made
)
targets = [f, g, h, gen, co, pairmod.Child.v, made, pairmod.make]
codes = [t.__code__ for t in targets]


def run(coroutine):
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("the coroutine did not finish")


done = [0]  # switches completed
levels = [0, *[1, 2, 1, 0] * {cycles}]  # the level after each switch of the loop below
stop = threading.Event()
observed = [0]
bad = []
errors = []


# Could a reader have seen these versions, in this order, between switches i0 and
# i1 + 1: one level per target, never an earlier level after a later one?
def check(i0, i1, versions, whole):
    pos, last = i0, min(i1 + 1, len(levels) - 1)
    for v in versions:
        while pos <= last and levels[pos] != v:
            pos += 1
    if pos > last or not whole:
        bad.append((i0, i1, versions, whole))


def read():
    try:
        while not stop.is_set():
            i0 = done[0]
            results = (f(0), g(0), h(0), next(gen(0)), run(co(0)), child.v(0), made(0))
            i1 = done[0]
            versions = [r[1] for r in results]
            # whole: each version's code ran with that version's defaults
            whole = results[1][2] == versions[1] + 1 and results[2][2] == versions[2] + 1
            check(i0, i1, versions, whole and results[5][2] == "base")
            observed[0] += 1
    except BaseException as exc:
        errors.append(repr(exc))


readers = [threading.Thread(target=read) for _ in range(2)]
for t in readers:
    t.start()


def step(action):
    action()
    done[0] += 1
    start = observed[0]
    while observed[0] < start + 3 and not errors:
        time.sleep(0.0002)


try:
    for _ in range({cycles}):
        step(lambda: registry.apply(patches[0]))
        step(lambda: registry.apply(patches[1]))
        step(registry.rollback)
        step(registry.rollback)
finally:
    stop.set()
    for t in readers:
        t.join()

print(json.dumps({{
    "observed": observed[0], "bad": len(bad), "first": bad[:3], "errors": errors,
    "switches": done[0], "bad_switches": len({{b[0] for b in bad}}),
    "level": list(registry.level), "after": [list(f(0)), list(g(0)), list(h(0))],
    "same_code": [t.__code__ is c for t, c in zip(targets, codes)],
}}))
"""


def test_targets_switch_together_under_a_python_audit_hook() -> None:
    """Readers call seven targets in order (plain, keyword default, positional default,
    generator, coroutine, method with ``super()``, a closure found by the heap scan)
    while two patches go in and out under a hook that yields the GIL at every audited
    store. Each reader's results must be one version per target, in an order the
    levels went through: never a target ahead of one called after it, never new code
    with old defaults. Before the two-step switch, 99-100 of the 100 switches showed
    such a mix (3.11-3.13)."""
    result = run_python_json(SCENARIO.format(paths=sys.path, cycles=25, module=MODULE + NESTED))
    assert result["errors"] == []
    assert result["observed"] > 100
    assert result["bad"] == 0, (result["bad_switches"], result["switches"], result["first"])
    assert result["level"] == []
    assert result["after"] == [["f", 0, 0], ["g", 0, 1], ["h", 0, 1]]
    assert all(result["same_code"])  # back on the very code objects: nothing left between


PATCH = """
from hotpatch import Patch
patch = Patch(version="1.0.1", baseline="1.0")


@patch.replace("{m}:f")
def f(x):
    return ("f", 1, x)


@patch.replace("{m}:g")
def g(x, *, y=2):
    return ("g", 1, x + y)


@patch.replace("{m}:h")
def h(x, y=2):
    return ("h", 1, x + y)


@patch.replace("{m}:gen")
def gen(x):
    yield ("gen", 1, x)


@patch.replace("{m}:co")
async def co(x):
    return ("co", 1, x)


@patch.replace("{m}:Child.v")
def v(self, x):
    return ("m", 1, super().who())
"""


def _versions(mod: types.ModuleType) -> list[tuple[object, ...]]:
    """(version, last item) of each target's answer, called as a thread would."""
    coroutine = mod.co(0)
    try:
        coroutine.send(None)
    except StopIteration as done:
        co = done.value
    answers = [mod.f(0), mod.g(0), mod.h(0), next(mod.gen(0)), co, mod.Child().v(0)]
    return [(a[1], a[2]) for a in answers]


OLD = [(0, 0), (0, 1), (0, 1), (0, 0), (0, 0), (0, "base")]
NEW = [(1, 0), (1, 2), (1, 2), (1, 0), (1, 0), (1, "base")]


def _audited(op: Any) -> bool:
    """Is ``op`` a store CPython audits (where a Python audit hook runs, before it)?"""
    if not isinstance(op, functools.partial) or op.func is not setattr:
        return False
    return isinstance(op.args[0], types.FunctionType) and op.args[1] in _switch._AUDITED


def _seen_at_hooks(steps: Any, mod: types.ModuleType) -> list[tuple[str, list[Any]]]:
    """Run ``steps`` as ``_Steps.run`` does, calling every target wherever a hook could."""
    seen: list[tuple[str, list[Any]]] = []
    for name, ops in steps.steps():
        for i, op in enumerate(ops):
            if _audited(op):
                assert name != "flip" or i == 0, "an audited store inside the flip"
                seen.append((name, _versions(mod)))
            op()
    seen.append(("done", _versions(mod)))
    return seen


@pytest.mark.parametrize("direction", ["apply", "rollback"])
def test_every_point_an_audit_hook_runs_at_sees_one_version(
    make_module: Callable[[str], types.ModuleType],
    write_patch: Callable[[str], Path],
    registry: hotpatch.Registry,
    direction: str,
) -> None:
    """Wherever a hook can run -- before each audited store -- every target still runs
    the old version (up to the flip's first store) or already runs the new one (after
    the flip); once done, each function holds the planned values, no chooser left."""
    mod = make_module(MODULE)
    patch = hotpatch.load_patch(write_patch(PATCH.format(m=mod.__name__)))
    funcs = [mod.f, mod.g, mod.h, mod.gen, mod.co, mod.Child.v]
    attrs = ("__code__", "__defaults__", "__kwdefaults__")
    start = {(id(fn), a): getattr(fn, a) for fn in funcs for a in attrs}
    plan = registry._plan(patch)
    changes = list(plan.changes.values())
    if direction == "rollback":  # from the patch's values back to the baseline's
        _switch._Steps(changes, ()).run()
        changes = [(fn, a, start[id(fn), a]) for fn, a, _ in changes if (id(fn), a) in start]
    old, new = (OLD, NEW) if direction == "apply" else (NEW, OLD)
    steps = _switch._Steps(changes, ())
    assert len(steps.chosen) == 5  # one function switches by itself, in the flip
    seen = _seen_at_hooks(steps, mod)
    up_to_flip = [versions for step, versions in seen if step in ("before", "flip")]
    from_flip = [versions for step, versions in seen if step in ("after", "done")]
    assert up_to_flip
    assert from_flip
    assert all(versions == old for versions in up_to_flip), up_to_flip
    assert all(versions == new for versions in from_flip), from_flip
    for fn, attr, value in changes:
        assert _switch.current(fn, attr) is value, (fn, attr)
