"""pytest plugin (entry point ``pytest11``): fixtures and helpers to test a patch.

* ``hotpatch_registry`` -- a fresh ``Registry`` (baseline from the ``hotpatch_baseline``
  ini option, default ``"0"``); whatever it applied is rolled back at teardown.
* ``check_patch_file(path)`` -- asserts that a patch file applies hot against the
  code it targets and rolls back leaving every target exactly as it was.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from hotpatch._codegen import capture
from hotpatch._loader import load_patch
from hotpatch._registry import CheckReport, Registry
from hotpatch._targets import resolve, resolve_class

__all__ = ["check_patch_file", "hotpatch_registry"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("hotpatch_baseline", "baseline of the hotpatch_registry fixture", default="0")


@pytest.fixture
def hotpatch_registry(request: pytest.FixtureRequest) -> Iterator[Registry]:
    """A fresh registry; everything it applied is rolled back at teardown."""
    baseline = str(request.config.getini("hotpatch_baseline"))
    try:
        registry = Registry(baseline)
    except ValueError as exc:
        msg = f"ini option hotpatch_baseline: {exc}"
        raise pytest.UsageError(msg) from None
    yield registry
    if registry.level:
        registry.rollback(to=registry.baseline, who="pytest teardown")


def _snapshot(specs: list[tuple[str, bool]], version: str) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for spec, is_class in specs:
        if is_class:
            module, cls = resolve_class(spec, patch=version)
            state[spec] = dict(vars(cls))
        else:
            target = resolve(spec, patch=version)
            module = target.module
            state[spec] = (target.function, capture(target.function))
        state[f"module {module.__name__}"] = dict(vars(module))
    return state


def check_patch_file(path: str | os.PathLike[str], *, baseline: str | None = None) -> CheckReport:
    """Apply the patch at ``path`` to a fresh registry, check it went in hot and
    that rolling it back restores every target and module namespace exactly.

    Returns the ``CheckReport``; raises ``AssertionError`` naming what is wrong,
    or the ``PatchError`` that refused the patch.
    """
    patch = load_patch(path)
    registry = Registry(baseline or patch.baseline or "0")
    report = registry.check(patch)
    if not report.hot:
        msg = f"patch {patch.version} would not go in hot: {'; '.join(report.reasons)}"
        raise AssertionError(msg)
    specs = [(r.target, r.is_class) for r in patch.replacements]
    before = _snapshot(specs, patch.version)
    registry.apply(patch, who="check_patch_file")
    try:
        for spec, is_class in specs:
            if not is_class:
                function, state = before[spec]
                if function.__code__ is state["__code__"]:
                    msg = f"patch {patch.version}: {spec} still runs its old code after apply"
                    raise AssertionError(msg)
    finally:
        registry.rollback(who="check_patch_file")
    after = _snapshot(specs, patch.version)
    for name, was in before.items():
        now = after[name]
        if isinstance(was, tuple):
            (function, state), (_, state_now) = was, now
            changed = [
                a for a in state if state[a] is not state_now[a] and state[a] != state_now[a]
            ]
            if changed or function.__code__ is not state["__code__"]:
                msg = f"patch {patch.version}: rollback left {name} changed ({', '.join(changed)})"
                raise AssertionError(msg)
        elif set(was) != set(now) or any(was[k] is not now[k] for k in was):
            diff = sorted(set(was) ^ set(now)) or sorted(k for k in was if was[k] is not now[k])
            msg = (
                f"patch {patch.version}: rollback left {name} changed: {', '.join(diff)}; "
                "if a migration set it, add a @patch.unmigrate that undoes it"
            )
            raise AssertionError(msg)
    return report
