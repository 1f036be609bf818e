"""Migrations (SPEC 4): once on apply, never on check, undone on rollback, rerun on replay."""

from __future__ import annotations

import logging
import types
from collections.abc import Callable
from pathlib import Path

import pytest

import hotpatch

MODULE = """
CALLS = []
RATE = 1

def price(x):
    return x * RATE
"""


@pytest.fixture
def mod(make_module: Callable[[str], types.ModuleType]) -> types.ModuleType:
    return make_module(MODULE)


def migration_patch(
    mod: types.ModuleType,
    version: str = "1.0.1",
    *,
    up: str = "module.CALLS.append('up {v}'); module.RATE = 2",
    down: str | None = "module.CALLS.append('down {v}'); module.RATE = 1",
    replace: bool = True,
) -> str:
    lines = [
        "from hotpatch import Patch",
        f"patch = Patch(version={version!r}, baseline='1.0')",
    ]
    if replace:
        lines += [
            f"@patch.replace('{mod.__name__}:price')",
            "def price(x):",
            f"    return (x * RATE, {version!r})",
        ]
    lines += [
        f"@patch.migrate({mod.__name__!r})",
        "def up(module):",
        "    " + up.format(v=version),
    ]
    if down is not None:
        lines += [
            f"@patch.unmigrate({mod.__name__!r})",
            "def down(module):",
            "    " + down.format(v=version),
        ]
    return "\n".join(lines) + "\n"


def test_migrate_runs_once_on_apply_and_never_on_check(mod, write_patch, registry):
    patch = hotpatch.load_patch(write_patch(migration_patch(mod)))
    report = registry.check(patch)
    assert report.hot
    registry.check(patch)
    assert mod.CALLS == []
    assert mod.RATE == 1

    registry.apply(patch)
    assert mod.CALLS == ["up 1.0.1"]
    assert mod.RATE == 2
    assert mod.price(5) == (10, "1.0.1")  # the new code sees the migrated state

    registry.apply(hotpatch.load_patch(write_patch(migration_patch(mod, "1.0.2"))))
    assert mod.CALLS == ["up 1.0.1", "up 1.0.2"]  # each patch's own, once


def test_unmigrate_runs_on_rollback(mod, write_patch, registry):
    registry.apply(hotpatch.load_patch(write_patch(migration_patch(mod))))
    registry.rollback()
    assert mod.CALLS == ["up 1.0.1", "down 1.0.1"]
    assert mod.RATE == 1
    assert mod.price(5) == 5


def test_rollback_of_several_patches_unmigrates_newest_first(mod, write_patch, registry):
    for version in ("1.0.1", "1.0.2", "1.0.3"):
        registry.apply(hotpatch.load_patch(write_patch(migration_patch(mod, version))))
    registry.rollback(to="1.0.1")
    assert mod.CALLS == ["up 1.0.1", "up 1.0.2", "up 1.0.3", "down 1.0.3", "down 1.0.2"]
    assert registry.level == ("1.0.1",)


def test_without_unmigrate_rollback_leaves_the_migrated_state(mod, write_patch, registry):
    registry.apply(hotpatch.load_patch(write_patch(migration_patch(mod, down=None))))
    registry.rollback()
    assert mod.CALLS == ["up 1.0.1"]
    assert mod.RATE == 2  # the state stays migrated ...
    assert mod.price(5) == 10  # ... while the code is the original again


def test_a_migration_only_patch_applies_and_rolls_back(mod, write_patch, registry):
    code = mod.price.__code__
    registry.apply(hotpatch.load_patch(write_patch(migration_patch(mod, replace=False))))
    assert registry.level == ("1.0.1",)
    assert mod.RATE == 2
    assert mod.price.__code__ is code
    registry.rollback()
    assert mod.CALLS == ["up 1.0.1", "down 1.0.1"]


def test_a_raising_migration_undoes_the_whole_apply(mod, write_patch, registry):
    registry.apply(hotpatch.load_patch(write_patch(migration_patch(mod, "1.0.1", replace=False))))
    code, alias = mod.price.__code__, mod.price
    bad = migration_patch(mod, "1.0.2", up="module.RATE = 3; raise KeyError('currency')")
    with pytest.raises(hotpatch.MigrationFailed) as info:
        registry.apply(hotpatch.load_patch(write_patch(bad)))
    err = info.value
    assert isinstance(err, hotpatch.PatchError)
    assert err.patch == "1.0.2"
    assert err.target == mod.__name__
    assert isinstance(err.__cause__, KeyError)
    assert "migration up" in str(err)
    assert "raised KeyError" in str(err)
    assert "undone" in str(err)
    assert "publish a newer version" in str(err)
    assert mod.price.__code__ is code
    assert alias(5) == 3 * 5  # the migration's own write is the migration's business
    assert registry.level == ("1.0.1",)
    assert [h.version for h in registry.history] == ["1.0.1"]
    registry.apply(hotpatch.load_patch(write_patch(migration_patch(mod, "1.0.2"))))
    assert registry.level == ("1.0.1", "1.0.2")


def test_a_later_migration_raising_unmigrates_the_earlier_ones(make_module, write_patch, registry):
    first = make_module("STATE = []\n\ndef f():\n    return 1\n")
    second = make_module("def g():\n    return 1\n")
    path = write_patch(
        f"""
        from hotpatch import Patch
        patch = Patch(version="1.0.1", baseline="1.0")

        @patch.replace("{first.__name__}:f")
        def f():
            return 2

        @patch.migrate("{first.__name__}")
        def up_first(module):
            module.STATE.append("up")

        @patch.unmigrate("{first.__name__}")
        def down_first(module):
            module.STATE.append("down")

        @patch.migrate("{second.__name__}")
        def up_second(module):
            raise RuntimeError("disk full")
        """
    )
    with pytest.raises(hotpatch.MigrationFailed, match="up_second") as info:
        registry.apply(hotpatch.load_patch(path))
    assert info.value.target == second.__name__
    assert first.STATE == ["up", "down"]
    assert first.f() == 1
    assert registry.level == ()


def test_a_raising_migration_leaves_the_journal_alone(mod, write_patch, tmp_path):
    journal = tmp_path / "journal.json"
    reg = hotpatch.Registry("1.0", journal=journal)
    try:
        reg.apply(hotpatch.load_patch(write_patch(migration_patch(mod, "1.0.1"))))
        before = journal.read_bytes()
        bad = migration_patch(mod, "1.0.2", up="raise ValueError('no')")
        with pytest.raises(hotpatch.MigrationFailed):
            reg.apply(hotpatch.load_patch(write_patch(bad)))
        assert journal.read_bytes() == before
    finally:
        reg.rollback(to="1.0")


def test_migrations_run_again_when_a_journal_is_replayed(mod, write_patch, tmp_path):
    journal = tmp_path / "journal.json"
    first = hotpatch.Registry("1.0", journal=journal)
    second = None
    try:
        first.apply(hotpatch.load_patch(write_patch(migration_patch(mod, "1.0.1"))))
        first.apply(hotpatch.load_patch(write_patch(migration_patch(mod, "1.0.2"))))
        assert mod.CALLS == ["up 1.0.1", "up 1.0.2"]

        # A restarted process builds its registry on the journal: fresh state needs
        # the migrations again. (Here the module state persists, so count the calls.)
        mod.RATE = 1
        second = hotpatch.Registry("1.0", journal=journal)
        assert second.level == ("1.0.1", "1.0.2")
        assert mod.CALLS == ["up 1.0.1", "up 1.0.2", "up 1.0.1", "up 1.0.2"]
        assert mod.RATE == 2
        assert mod.price(5) == (10, "1.0.2")
        assert [h.action for h in second.history][-2:] == ["replay", "replay"]

        # check() on the replayed registry runs nothing
        second.check(hotpatch.load_patch(write_patch(migration_patch(mod, "1.0.3"))))
        assert len(mod.CALLS) == 4
    finally:
        if second is not None:
            second.rollback(to="1.0")
        first.rollback(to="1.0")
    assert mod.price(5) == 5


def test_a_raising_unmigrate_is_logged_and_the_code_still_rolls_back(
    mod, write_patch, registry, caplog
):
    text = migration_patch(mod, down="raise RuntimeError('cannot undo')")
    registry.apply(hotpatch.load_patch(write_patch(text)))
    with caplog.at_level(logging.ERROR, logger="hotpatch"):
        result = registry.rollback()
    assert result.versions == ("1.0.1",)
    assert registry.level == ()
    assert mod.price(5) == 10  # code back to the original; RATE stays migrated
    assert any("unmigrate down" in r.getMessage() for r in caplog.records)


def test_a_migration_of_a_missing_module_is_refused_before_anything_runs(
    mod, write_patch, registry
):
    path: Path = write_patch(
        f"""
        from hotpatch import Patch
        patch = Patch(version="1.0.1", baseline="1.0")

        @patch.migrate("{mod.__name__}")
        def up(module):
            module.CALLS.append("up")

        @patch.migrate("no_such_module_for_hotpatch_tests")
        def other(module):
            pass
        """
    )
    with pytest.raises(hotpatch.TargetNotFound, match="does not exist") as info:
        registry.apply(hotpatch.load_patch(path))
    assert info.value.target == "no_such_module_for_hotpatch_tests"
    assert mod.CALLS == []
    assert registry.level == ()
