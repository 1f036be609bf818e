"""Registry: apply, check, rollback, stacking, level and history."""

from __future__ import annotations

import pytest

import hotpatch


def test_apply_switches_and_rollback_restores_exactly(make_module, write_patch, registry):
    mod = make_module(
        """
        def price(x):
            "Old doc."
            return x
        """
    )
    original = mod.price.__code__
    alias = mod.price
    path = write_patch(
        f"""
        from hotpatch import Patch
        patch = Patch(version="1.0.1", baseline="1.0", summary="double")

        @patch.replace("{mod.__name__}:price")
        def price(x):
            return x * 2
        """
    )
    result = registry.apply(hotpatch.load_patch(path))
    assert (result.version, result.hot, result.targets) == (
        "1.0.1",
        True,
        (f"{mod.__name__}:price",),
    )
    assert alias(21) == 42
    assert alias is mod.price
    assert mod.price.__doc__ == "Old doc."  # the replacement has none: the original's stays
    assert registry.level == ("1.0.1",)
    assert registry.version == "1.0.1"

    undone = registry.rollback()
    assert undone.versions == ("1.0.1",)
    assert mod.price.__code__ is original
    assert alias(21) == 21
    assert registry.level == ()
    assert registry.version == "1.0"
    assert [h.action for h in registry.history] == ["apply", "rollback"]


def test_check_changes_nothing(make_module, write_patch, registry):
    mod = make_module("def f():\n    return 1\n")
    code = mod.f.__code__
    path = write_patch(
        f"""
        from hotpatch import Patch
        patch = Patch(version="1.0.1", baseline="1.0")

        @patch.replace("{mod.__name__}:f")
        def f():
            return 2
        """
    )
    report = registry.check(hotpatch.load_patch(path))
    assert report.hot
    assert report.reasons == ()
    assert report.modes == {f"{mod.__name__}:f": "inline"}
    assert mod.f.__code__ is code
    assert registry.level == ()


def test_rollback_with_nothing_applied_is_a_version_conflict(registry):
    with pytest.raises(hotpatch.VersionConflict, match="nothing to roll back"):
        registry.rollback()
