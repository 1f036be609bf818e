"""Registry: apply, check, rollback, stacking, level and history."""

from __future__ import annotations

import logging

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


def test_a_rollback_logs_the_top_of_a_deep_level_and_its_size(
    make_module, write_patch, registry, caplog
):
    """The log line of a rollback costs the same at level 11 and at 10,000: the top 10."""
    mod = make_module("def f():\n    return 0\n")
    for n in range(1, 13):
        path = write_patch(
            f"""
            from hotpatch import Patch
            patch = Patch(version="1.0.{n}", baseline="1.0")

            @patch.replace("{mod.__name__}:f")
            def f():
                return {n}
            """
        )
        registry.apply(hotpatch.load_patch(path))
    with caplog.at_level(logging.INFO, logger="hotpatch"):
        registry.rollback()
        registry.rollback()
        registry.rollback(to="1.0")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("rolled back")]
    top = ", ".join(f"1.0.{n}" for n in range(2, 12))
    assert lines[0].endswith(f"; level now ..., {top} (11 patches)"), lines
    whole = ", ".join(f"1.0.{n}" for n in range(1, 11))
    assert lines[1].endswith(f"; level now {whole}"), lines  # 10: all of it, as before
    assert lines[2].endswith("; level now baseline 1.0"), lines
    assert mod.f() == 0
