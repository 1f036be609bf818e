"""Versions and the level: PEP 440 order, stacking, cumulative patches, rollback targets."""

from __future__ import annotations

import types
from collections.abc import Callable
from pathlib import Path

import pytest
from packaging.version import Version

import hotpatch
from hotpatch._patch import parse_version, version_key

MODULE = """
def f(x, y=1, *, z=2):
    "f, original."
    return ("f", "orig")

def g():
    return ("g", "orig")

def h():
    return ("h", "orig")
"""


def patch_text(
    mod: types.ModuleType,
    version: str,
    changes: dict[str, str],
    *,
    baseline: str = "1.0",
    cumulative: bool = False,
) -> str:
    """A patch file making each function in ``changes`` return ``(name, marker)``."""
    lines = [
        "from hotpatch import Patch",
        f"patch = Patch(version={version!r}, baseline={baseline!r}, cumulative={cumulative})",
    ]
    for name, marker in changes.items():
        params = "x, y=10, *, z=20" if name == "f" else ""
        lines += [
            "",
            f"@patch.replace('{mod.__name__}:{name}')",
            f"def {name}({params}):",
            f"    {f'{name} at {marker}.'!r}",
            f"    return ({name!r}, {marker!r})",
        ]
    return "\n".join(lines) + "\n"


@pytest.fixture
def mod(make_module: Callable[[str], types.ModuleType]) -> types.ModuleType:
    return make_module(MODULE)


@pytest.fixture
def load(
    mod: types.ModuleType, write_patch: Callable[[str], Path]
) -> Callable[..., hotpatch.Patch]:
    def load(version: str, changes: dict[str, str], **options: object) -> hotpatch.Patch:
        return hotpatch.load_patch(write_patch(patch_text(mod, version, changes, **options)))

    return load


def calls(mod: types.ModuleType) -> dict[str, str]:
    return {name: getattr(mod, name)(*(("x",) if name == "f" else ()))[1] for name in "fgh"}


# -- PEP 440 order ---------------------------------------------------------------------------


def test_versions_are_ordered_numerically_not_as_text(load, registry, mod):
    registry.apply(load("1.0.2", {"f": "2"}))
    registry.apply(load("1.0.10", {"f": "10"}))  # "1.0.10" < "1.0.2" as text
    assert registry.level == ("1.0.2", "1.0.10")
    assert calls(mod)["f"] == "10"
    with pytest.raises(hotpatch.VersionConflict, match=r"1\.0\.9 is not newer .* 1\.0\.10"):
        registry.apply(load("1.0.9", {"f": "9"}))
    assert registry.level == ("1.0.2", "1.0.10")
    assert calls(mod)["f"] == "10"


def test_a_release_candidate_comes_before_its_release(load, registry, mod):
    registry.apply(load("1.0.1rc1", {"f": "rc1"}))
    registry.apply(load("1.0.1", {"f": "final"}))
    assert registry.level == ("1.0.1rc1", "1.0.1")
    with pytest.raises(hotpatch.VersionConflict):
        registry.apply(load("1.0.1rc2", {"f": "rc2"}))
    assert calls(mod)["f"] == "final"


def test_a_post_release_comes_after_its_release(load, registry, mod):
    registry.apply(load("1.0.1", {"f": "final"}))
    registry.apply(load("1.0.1.post1", {"f": "post1"}))
    assert registry.level == ("1.0.1", "1.0.1.post1")
    assert registry.version == "1.0.1.post1"
    assert calls(mod)["f"] == "post1"


def test_a_dev_release_comes_before_the_pre_release(load, registry):
    registry.apply(load("1.0.1.dev1", {"f": "dev"}))
    registry.apply(load("1.0.1a1", {"f": "a1"}))
    with pytest.raises(hotpatch.VersionConflict):
        registry.apply(load("1.0.1.dev2", {"f": "dev2"}))
    assert registry.level == ("1.0.1.dev1", "1.0.1a1")


def test_the_baseline_itself_and_older_versions_are_not_newer(load, registry, mod):
    for version in ("1.0", "1.0.0", "0.9.9"):
        with pytest.raises(hotpatch.VersionConflict, match="not newer"):
            registry.apply(load(version, {"f": version}))
    assert registry.level == ()
    assert calls(mod) == {"f": "orig", "g": "orig", "h": "orig"}


def test_the_same_version_again_is_a_conflict_even_spelled_differently(load, registry, mod):
    registry.apply(load("1.0.1", {"f": "a"}))
    for spelling in ("1.0.1", "1.0.1.0", "v1.0.1"):
        with pytest.raises(hotpatch.VersionConflict, match="already applied") as info:
            registry.apply(load(spelling, {"f": "b"}))
        assert info.value.patch == spelling
    assert registry.level == ("1.0.1",)
    assert calls(mod)["f"] == "a"


def test_an_older_version_below_the_top_is_a_conflict_and_changes_nothing(load, registry, mod):
    registry.apply(load("1.0.1", {"f": "1"}))
    registry.apply(load("1.0.3", {"g": "3"}))
    with pytest.raises(hotpatch.VersionConflict, match=r"give it a version above 1\.0\.3"):
        registry.apply(load("1.0.2", {"h": "2"}))
    assert registry.level == ("1.0.1", "1.0.3")
    assert calls(mod) == {"f": "1", "g": "3", "h": "orig"}


def test_a_patch_for_another_baseline_is_refused(load, registry, mod):
    with pytest.raises(hotpatch.BaselineMismatch, match=r"baseline 2\.0.*runs baseline 1\.0"):
        registry.apply(load("2.0.1", {"f": "x"}, baseline="2.0"))
    assert registry.level == ()
    assert calls(mod)["f"] == "orig"


def test_an_equivalent_baseline_spelling_matches(load, registry, mod):
    registry.apply(load("1.0.1", {"f": "x"}, baseline="1.0.0"))
    assert calls(mod)["f"] == "x"


def test_each_version_text_is_parsed_once_and_another_text_anew():
    first = parse_version("2.3.1", "version")
    assert parse_version("2.3.1", "patch version") is first  # parsed once
    padded = parse_version("2.3.01", "version")  # another text: parsed, equal in order
    assert padded is not first
    assert padded == first
    assert parse_version("2.3.2", "version") > first
    for _ in range(2):  # a text that is no version is refused each time, never remembered
        with pytest.raises(ValueError, match=r"version '2\.3\.x' is not a PEP 440 version"):
            parse_version("2.3.x", "version")


@pytest.mark.parametrize("value", [231, ["2.3.1"], None])
def test_a_version_that_is_not_text_is_refused_naming_it(value):
    # Not remembered either (a list could not be): each is refused as it comes.
    for _ in range(2):
        with pytest.raises(ValueError, match="is not a PEP 440 version"):
            parse_version(value, "version")


# -- stacking --------------------------------------------------------------------------------


def test_hot_patches_stack_in_version_order(load, registry, mod):
    registry.apply(load("1.0.1", {"f": "1", "g": "1"}))
    registry.apply(load("1.0.2", {"g": "2"}))
    registry.apply(load("1.0.3", {"h": "3"}))
    assert registry.level == ("1.0.1", "1.0.2", "1.0.3")
    assert [p.version for p in registry.patches] == ["1.0.1", "1.0.2", "1.0.3"]
    assert calls(mod) == {"f": "1", "g": "2", "h": "3"}
    assert mod.f.__defaults__ == (10,)
    assert mod.f.__kwdefaults__ == {"z": 20}

    registry.rollback()
    assert calls(mod) == {"f": "1", "g": "2", "h": "orig"}
    registry.rollback()
    assert calls(mod) == {"f": "1", "g": "1", "h": "orig"}
    assert registry.level == ("1.0.1",)


def test_cumulative_replaces_the_whole_level_in_one_step(load, registry, mod):
    registry.apply(load("1.0.1", {"f": "1", "g": "1"}))
    registry.apply(load("1.0.2", {"g": "2", "h": "2"}))
    result = registry.apply(load("1.0.3", {"f": "3"}, cumulative=True))
    assert result.version == "1.0.3"
    assert registry.level == ("1.0.3",)
    assert registry.version == "1.0.3"
    # f is the cumulative's; g and h, which the earlier patches touched but the
    # cumulative does not, are back to the baseline's code, not the stacked versions.
    assert calls(mod) == {"f": "3", "g": "orig", "h": "orig"}
    assert mod.g.__doc__ is None


def test_rollback_after_a_cumulative_restores_the_level_it_replaced(load, registry, mod):
    registry.apply(load("1.0.1", {"f": "1", "g": "1"}))
    registry.apply(load("1.0.2", {"g": "2", "h": "2"}))
    stacked = calls(mod)
    docs = (mod.f.__doc__, mod.g.__doc__, mod.h.__doc__)
    registry.apply(load("1.0.3", {"f": "3"}, cumulative=True))

    result = registry.rollback()
    assert result.versions == ("1.0.3",)
    assert result.level == ("1.0.1", "1.0.2")
    assert registry.level == ("1.0.1", "1.0.2")
    assert calls(mod) == stacked == {"f": "1", "g": "2", "h": "2"}
    assert (mod.f.__doc__, mod.g.__doc__, mod.h.__doc__) == docs

    # and the replaced level rolls back one patch at a time as before
    registry.rollback()
    assert calls(mod) == {"f": "1", "g": "1", "h": "orig"}


def test_patches_stack_on_a_cumulative(load, registry, mod):
    registry.apply(load("1.0.1", {"f": "1"}))
    registry.apply(load("1.0.2", {"g": "2"}, cumulative=True))
    registry.apply(load("1.0.3", {"h": "3"}))
    assert registry.level == ("1.0.2", "1.0.3")
    assert calls(mod) == {"f": "orig", "g": "2", "h": "3"}
    registry.rollback(to="1.0.2")
    assert calls(mod) == {"f": "orig", "g": "2", "h": "orig"}
    registry.rollback()
    assert registry.level == ("1.0.1",)
    assert calls(mod) == {"f": "1", "g": "orig", "h": "orig"}


def test_a_cumulative_on_a_cumulative_still_goes_back_to_the_baseline(load, registry, mod):
    registry.apply(load("1.0.1", {"f": "1", "g": "1"}))
    registry.apply(load("1.0.2", {"f": "2"}, cumulative=True))
    assert calls(mod) == {"f": "2", "g": "orig", "h": "orig"}
    registry.apply(load("1.0.3", {"f": "3"}, cumulative=True))
    # g was touched by 1.0.1 only, which the first cumulative already dropped
    assert calls(mod) == {"f": "3", "g": "orig", "h": "orig"}
    assert registry.level == ("1.0.3",)
    registry.rollback()
    assert calls(mod) == {"f": "2", "g": "orig", "h": "orig"}
    registry.rollback()
    assert calls(mod) == {"f": "1", "g": "1", "h": "orig"}


def test_cumulative_on_an_empty_level_is_a_plain_patch(load, registry, mod):
    registry.apply(load("1.0.1", {"f": "1"}, cumulative=True))
    assert registry.level == ("1.0.1",)
    registry.rollback()
    assert registry.level == ()
    assert calls(mod)["f"] == "orig"


# -- rollback targets ------------------------------------------------------------------------


def test_rollback_to_a_middle_version(load, registry, mod):
    registry.apply(load("1.0.1", {"f": "1"}))
    registry.apply(load("1.0.2", {"f": "2", "g": "2"}))
    registry.apply(load("1.0.3", {"f": "3", "h": "3"}))
    result = registry.rollback(to="1.0.1")
    assert result.versions == ("1.0.3", "1.0.2")
    assert registry.level == ("1.0.1",)
    assert calls(mod) == {"f": "1", "g": "orig", "h": "orig"}


def test_rollback_to_the_top_changes_nothing(load, registry, mod):
    registry.apply(load("1.0.1", {"f": "1"}))
    result = registry.rollback(to="1.0.1")
    assert result.versions == ()
    assert registry.level == ("1.0.1",)
    assert calls(mod)["f"] == "1"


def test_rollback_to_a_version_inside_a_cumulatives_replaced_level(load, registry, mod):
    registry.apply(load("1.0.1", {"f": "1"}))
    registry.apply(load("1.0.2", {"g": "2"}))
    registry.apply(load("1.0.3", {"h": "3"}, cumulative=True))
    registry.rollback(to="1.0.1")
    assert registry.level == ("1.0.1",)
    assert calls(mod) == {"f": "1", "g": "orig", "h": "orig"}


def test_rolling_everything_back_restores_the_originals_exactly(load, registry, mod):
    funcs = {name: getattr(mod, name) for name in "fgh"}
    saved = {
        name: (f.__code__, f.__defaults__, f.__kwdefaults__, f.__doc__, dict(f.__annotations__))
        for name, f in funcs.items()
    }
    registry.apply(load("1.0.1", {"f": "1", "g": "1"}))
    registry.apply(load("1.0.2", {"f": "2", "h": "2"}, cumulative=True))
    registry.apply(load("1.0.3", {"f": "3", "g": "3"}))
    assert mod.f.__code__ is not saved["f"][0]

    result = registry.rollback(to="1.0")
    # back through the cumulative and the level it replaced, newest first
    assert result.versions == ("1.0.3", "1.0.2", "1.0.1")
    assert result.level == ()
    assert registry.level == ()
    assert registry.version == "1.0"
    for name, f in funcs.items():
        assert getattr(mod, name) is f
        code, defaults, kwdefaults, doc, annotations = saved[name]
        assert f.__code__ is code
        assert f.__defaults__ == defaults
        assert f.__kwdefaults__ == kwdefaults
        assert f.__doc__ == doc
        assert f.__annotations__ == annotations
        assert "__signature__" not in f.__dict__
    assert mod.f.__defaults__ == (1,)
    assert mod.f.__kwdefaults__ == {"z": 2}
    assert mod.f.__doc__ == "f, original."
    assert calls(mod) == {"f": "orig", "g": "orig", "h": "orig"}


def test_rollback_to_a_version_not_in_the_level_changes_nothing(load, registry, mod):
    registry.apply(load("1.0.1", {"f": "1"}))
    registry.apply(load("1.0.3", {"f": "3"}))
    history = registry.history
    for missing in ("1.0.2", "1.0.4", "0.9"):
        with pytest.raises(hotpatch.VersionConflict, match="neither in the level") as info:
            registry.rollback(to=missing)
        assert info.value.patch == missing
        assert "1.0.1, 1.0.3" in str(info.value)
    assert registry.level == ("1.0.1", "1.0.3")
    assert registry.history == history
    assert calls(mod)["f"] == "3"


def test_rollback_to_a_version_a_cumulative_replaced_undoes_the_cumulative(load, registry, mod):
    registry.apply(load("1.0.1", {"f": "1"}))
    registry.apply(load("1.0.2", {"f": "2"}, cumulative=True))
    # 1.0.1 is not in the level, but it is in what the cumulative replaced: going
    # back to it means undoing the cumulative, which is what rollback() does.
    registry.rollback(to="1.0.1")
    assert registry.level == ("1.0.1",)
    assert calls(mod)["f"] == "1"


def test_rollback_to_an_invalid_version_is_refused(load, registry):
    registry.apply(load("1.0.1", {"f": "1"}))
    with pytest.raises(ValueError, match="not a PEP 440 version"):
        registry.rollback(to="latest")
    assert registry.level == ("1.0.1",)


def test_history_records_applies_and_rollbacks(load, registry):
    registry.apply(load("1.0.1", {"f": "1"}), who="alice")
    registry.apply(load("1.0.2", {"f": "2"}, cumulative=True))
    registry.rollback(who="bob")
    rows = [(h.action, h.version, h.level, h.who) for h in registry.history]
    assert rows == [
        ("apply", "1.0.1", ("1.0.1",), "alice"),
        ("apply", "1.0.2", ("1.0.2",), "api"),
        ("rollback", "1.0.2", ("1.0.1",), "bob"),
    ]


VERSIONS = [
    "0", "0.0", "1", "1.0", "1.0.0", "1.0.0.0.1", "1.0.1", "1.0.2", "1.0.10", "1.1", "10",
    "1.0a1", "1.0a2", "1.0b1", "1.0rc1", "1.0c1", "1.0pre2", "1.0a1.dev1", "1.0.dev0",
    "1.0.dev1", "1.1.dev0", "1.1a0", "1.0.post0", "1.0.post1", "1.0.post1.dev1", "1.0.post2",
    "1.0-1", "1.0rc1.post1", "1.0rc1.post1.dev3", "1.0+7", "1.0+local", "1.0+local.7",
    "1.0+local.10", "1.0+abc.1", "1.0+abc.a", "1.0+1", "1.0+1.2", "1!0.1", "2!1.0",
]  # fmt: skip


def test_a_version_key_orders_versions_as_pep_440_does() -> None:
    """The folder's queue sorts drops by ``version_key``: every pair compares as the
    versions themselves do (release, pre, post, dev, local and epoch alike)."""
    versions = [Version(v) for v in VERSIONS]
    for a in versions:
        for b in versions:
            assert (version_key(a) < version_key(b)) == (a < b), (a, b)
            assert (version_key(a) == version_key(b)) == (a == b), (a, b)
    assert sorted(versions, key=version_key) == sorted(versions)
