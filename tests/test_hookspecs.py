"""Hookspecs typed with the real classes, and the built-in plugins annotated the same way."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any

import pytest

import hotpatch
from hotpatch import _hookspecs
from hotpatch_plugins import audit, health_gate, metrics, signature

# What the hookspecs import for type checking only.
_SPEC_NAMES = {
    "Patch": hotpatch.Patch,
    "Registry": hotpatch.Registry,
    "ApplyResult": hotpatch.ApplyResult,
    "CheckReport": hotpatch.CheckReport,
    "RollbackResult": hotpatch.RollbackResult,
}
SPECS = {
    name: value
    for name, value in vars(_hookspecs).items()
    if name.startswith("hotpatch_") and callable(value)
}
PLUGINS = [audit.AuditLog, health_gate.HealthGate, metrics.Metrics, signature.SignatureCheck]


def hints(func: Callable[..., Any], localns: dict[str, Any] | None = None) -> dict[str, Any]:
    return typing.get_type_hints(func, localns=localns)


def test_no_hookspec_takes_any():
    for name, spec in SPECS.items():
        for param, hint in hints(spec, _SPEC_NAMES).items():
            assert hint is not Any, f"{name}({param}) is typed Any"


def test_every_hookspec_names_a_real_class_where_hotpatch_passes_one():
    typed = {
        (name, param): hint
        for name, spec in SPECS.items()
        for param, hint in hints(spec, _SPEC_NAMES).items()
    }
    assert typed[("hotpatch_validate", "patch")] is hotpatch.Patch
    assert typed[("hotpatch_validate", "report")] is hotpatch.CheckReport
    assert typed[("hotpatch_after_apply", "result")] is hotpatch.ApplyResult
    assert typed[("hotpatch_after_rollback", "result")] is hotpatch.RollbackResult
    assert typed[("hotpatch_health_check", "registry")] is hotpatch.Registry


@pytest.mark.parametrize("plugin", PLUGINS, ids=lambda p: p.__name__)
def test_plugin_hooks_are_annotated_as_the_specs(plugin):
    implemented = [
        (name, member)
        for name, member in inspect.getmembers(plugin, inspect.isfunction)
        if name in SPECS
    ]
    assert implemented, f"{plugin.__name__} implements no hook"
    for name, impl in implemented:
        spec = hints(SPECS[name], _SPEC_NAMES)
        mine = hints(impl)
        for param in inspect.signature(impl).parameters:
            if param == "self":
                continue
            assert mine.get(param) == spec[param], (
                f"{plugin.__name__}.{name}({param}) is typed {mine.get(param)}, "
                f"the hookspec says {spec[param]}"
            )
