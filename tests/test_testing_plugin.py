"""The pytest plugin: ``--hotpatch-apply``, the ``hotpatch_registry`` fixture, check_patch_file."""

from __future__ import annotations

import importlib
import itertools
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import pytest

import hotpatch
from hotpatch.testing import check_patch_file

_names = itertools.count()


def test_registered_as_a_pytest11_entry_point():
    found = {ep.name: ep.value for ep in entry_points(group="pytest11")}
    assert found.get("hotpatch") == "hotpatch.testing"


@pytest.fixture
def inner(pytester):
    """A target module importable by the inner session and already imported here,
    so what the inner session leaves behind can be checked after it ends."""
    name = f"plugin_target_{next(_names)}"
    pytester.makepyfile(**{name: "def price(x):\n    return x\n"})
    pytester.syspathinsert()
    module = importlib.import_module(name)
    yield module
    sys.modules.pop(name, None)


def _patch_file(pytester, module, version: str, baseline: str, **options: str) -> str:
    extra = "".join(f", {k}={v}" for k, v in options.items())
    path = pytester.path / "patches" / f"p_{version.replace('.', '_')}.py"
    path.parent.mkdir(exist_ok=True)
    path.write_text(
        textwrap.dedent(
            f"""
            from hotpatch import Patch
            patch = Patch(version="{version}", baseline="{baseline}"{extra})

            @patch.replace("{module.__name__}:price")
            def price(x):
                return x * 2
            """
        )
    )
    return str(path)


def test_fixture_applies_and_rolls_back_at_teardown(pytester, inner):
    original = inner.price.__code__
    pytester.makeini("[pytest]\nhotpatch_baseline = 0\n")
    patch = _patch_file(pytester, inner, "0.1", "0")
    pytester.makepyfile(
        test_inner=f"""
        import hotpatch
        import {inner.__name__} as target

        def test_apply(hotpatch_registry):
            assert hotpatch_registry.baseline == "0"
            result = hotpatch_registry.apply(hotpatch.load_patch({patch!r}))
            assert result.hot
            assert hotpatch_registry.level == ("0.1",)
            assert target.price(10) == 20

        def test_next_test_sees_the_original():
            assert target.price(10) == 10

        def test_a_failing_test_is_rolled_back_too(hotpatch_registry):
            hotpatch_registry.apply(hotpatch.load_patch({patch!r}))
            assert target.price(10) == 0, "fails on purpose"

        def test_and_after_it_the_original_again():
            assert target.price(10) == 10
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--strict-config")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*fails on purpose*"])
    # after the session: the teardown rolled the target back to its exact code
    assert inner.price.__code__ is original
    assert inner.price(10) == 10


def test_fixture_with_nothing_applied_tears_down_quietly(pytester):
    pytester.makeini("[pytest]\nhotpatch_baseline = 1.0\n")
    pytester.makepyfile(
        test_inner="""
        def test_nothing(hotpatch_registry):
            assert hotpatch_registry.level == ()
        """
    )
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_baseline_ini_option_sets_the_registry_baseline(pytester, inner):
    original = inner.price.__code__
    pytester.makeini("[pytest]\nhotpatch_baseline = 2.5\n")
    good = _patch_file(pytester, inner, "2.5.1", "2.5")
    other = _patch_file(pytester, inner, "0.1", "0")
    pytester.makepyfile(
        test_inner=f"""
        import pytest
        import hotpatch
        import {inner.__name__} as target

        def test_baseline(hotpatch_registry):
            assert hotpatch_registry.baseline == "2.5"
            with pytest.raises(hotpatch.BaselineMismatch):
                hotpatch_registry.apply(hotpatch.load_patch({other!r}))
            hotpatch_registry.apply(hotpatch.load_patch({good!r}))
            assert hotpatch_registry.version == "2.5.1"
            assert target.price(10) == 20
        """
    )
    # --strict-config: the option is registered by the plugin, not an unknown ini key
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--strict-config")
    result.assert_outcomes(passed=1)
    assert inner.price.__code__ is original
    assert "hotpatch_baseline" in pytester.runpytest_inprocess("--help").stdout.str()


def test_missing_baseline_ini_option_is_reported_as_such(pytester):
    pytester.makepyfile(
        test_inner="""
        def test_uses(hotpatch_registry):
            pass

        def test_does_not_use():
            pass
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        ["*hotpatch_registry fixture needs the baseline*set the ini option hotpatch_baseline*"]
    )
    assert "against 0" not in result.stdout.str()


def test_errors_are_shown_under_their_public_names(pytester, inner):
    pytester.makeini("[pytest]\nhotpatch_baseline = 2.0\n")
    other = _patch_file(pytester, inner, "1.0.1", "1.0")
    pytester.makepyfile(
        test_inner=f"""
        import hotpatch

        def test_apply(hotpatch_registry):
            hotpatch_registry.apply(hotpatch.load_patch({other!r}))
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["E *hotpatch.BaselineMismatch: patch 1.0.1 is for baseline 1.0*"])
    assert "hotpatch._errors" not in result.stdout.str()


def test_invalid_baseline_ini_option_is_named(pytester):
    pytester.makeini("[pytest]\nhotpatch_baseline = next\n")
    pytester.makepyfile(
        test_inner="""
        def test_uses(hotpatch_registry):
            pass
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*hotpatch_baseline*'next' is not a PEP 440 version*"])


def test_fixture_comes_from_the_plugin(pytester):
    pytester.makepyfile(
        test_inner="""
        def test_uses(hotpatch_registry):
            pass
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:hotpatch")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'hotpatch_registry' not found*"])


def test_fixture_in_a_subprocess_session(pytester, inner):
    pytester.makeini("[pytest]\nhotpatch_baseline = 0\n")
    patch = _patch_file(pytester, inner, "0.1", "0")
    pytester.makepyfile(
        test_inner=f"""
        import hotpatch
        import {inner.__name__} as target

        def test_apply(hotpatch_registry):
            hotpatch_registry.apply(hotpatch.load_patch({patch!r}))
            assert target.price(10) == 20
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


# -- check_patch_file -----------------------------------------------------------------


TARGET = """
def price(x):
    "Price of x."
    return x

class Cart:
    def total(self):
        return 1
"""


def test_check_patch_file_passes_a_good_patch(make_module, write_patch):
    mod = make_module(TARGET)
    code, namespace = mod.price.__code__, dict(vars(mod))
    path = write_patch(
        f"""
        from hotpatch import Patch
        patch = Patch(version="1.0.1", baseline="1.0")

        def helper(x):
            return x * 3

        @patch.replace("{mod.__name__}:price")
        def price(x):
            return helper(x)
        """
    )
    report = check_patch_file(path)
    assert isinstance(report, hotpatch.CheckReport)
    assert (report.version, report.hot, report.reasons) == ("1.0.1", True, ())
    assert report.targets == (f"{mod.__name__}:price",)
    assert report.names == (f"{mod.__name__}.helper",)
    # applied and rolled back: the target and its module are exactly as before
    assert mod.price.__code__ is code
    assert vars(mod).keys() == namespace.keys()
    assert mod.price(5) == 5


def test_check_patch_file_passes_a_class_patch(make_module, write_patch):
    mod = make_module(TARGET)
    path = write_patch(
        f"""
        from hotpatch import Patch
        patch = Patch(version="1.0.1", baseline="1.0")

        @patch.replace_class("{mod.__name__}:Cart")
        class Cart:
            def total(self):
                return 2

            def count(self):
                return 0
        """
    )
    assert check_patch_file(path).hot
    assert not hasattr(mod.Cart, "count")
    assert mod.Cart().total() == 1


def test_check_patch_file_refuses_a_patch_that_is_not_hot(make_module, write_patch):
    mod = make_module(TARGET)
    code = mod.price.__code__
    path = write_patch(
        f"""
        from hotpatch import Patch
        patch = Patch(version="1.0.1", baseline="1.0", restart=True)

        @patch.replace("{mod.__name__}:price")
        def price(x):
            return x
        """
    )
    with pytest.raises(AssertionError, match=r"1\.0\.1 would not go in hot.*restart=True"):
        check_patch_file(path)
    assert mod.price.__code__ is code


def test_check_patch_file_refuses_a_class_change_that_is_not_hot(make_module, write_patch):
    mod = make_module(TARGET)
    path = write_patch(
        f"""
        from hotpatch import Patch
        patch = Patch(version="1.0.1", baseline="1.0")

        @patch.replace_class("{mod.__name__}:Cart")
        class Cart(dict):
            def total(self):
                return 2
        """
    )
    with pytest.raises(AssertionError, match=r"would not go in hot.*bases"):
        check_patch_file(path)


def test_check_patch_file_flags_state_a_rollback_leaves(make_module, write_patch):
    mod = make_module(TARGET)
    path = write_patch(
        f"""
        from hotpatch import Patch
        patch = Patch(version="1.0.1", baseline="1.0")

        @patch.replace("{mod.__name__}:price")
        def price(x):
            return x

        @patch.migrate("{mod.__name__}")
        def add(module):
            module.CURRENCY = "EUR"
        """
    )
    with pytest.raises(AssertionError, match=r"rollback left module .*CURRENCY.*unmigrate"):
        check_patch_file(path)
    del mod.CURRENCY

    # with an unmigrate that undoes it, the patch passes
    fixed = write_patch(
        path.read_text()
        + textwrap.dedent(
            f"""
            @patch.unmigrate("{mod.__name__}")
            def remove(module):
                del module.CURRENCY
            """
        )
    )
    assert check_patch_file(fixed).hot
    assert not hasattr(mod, "CURRENCY")


@pytest.mark.parametrize(
    ("body", "error", "match"),
    [
        ('@patch.replace("{mod}:nope")\ndef nope(x):\n    return x\n', "TargetNotFound", "nope"),
        (
            '@patch.replace("{mod}:price")\ndef price():\n    return 1\n',
            "SignatureIncompatible",
            "",
        ),
        ("def broken(:\n", "VerificationFailed", "syntax error"),
        ('@patch.replace("builtins:len")\ndef len(x):\n    return 0\n', "NotPatchable", "len"),
    ],
)
def test_check_patch_file_propagates_the_patch_error(make_module, write_patch, body, error, match):
    mod = make_module(TARGET)
    header = 'from hotpatch import Patch\npatch = Patch(version="1.0.1", baseline="1.0")\n'
    path = write_patch(header + body.format(mod=mod.__name__))
    with pytest.raises(getattr(hotpatch, error)) as info:
        check_patch_file(path)
    assert type(info.value).__name__ == error
    assert match in str(info.value)


def test_check_patch_file_baseline_argument(make_module, write_patch):
    mod = make_module(TARGET)
    path = write_patch(
        f"""
        from hotpatch import Patch
        patch = Patch(version="1.0.1", baseline="1.0")

        @patch.replace("{mod.__name__}:price")
        def price(x):
            return x
        """
    )
    assert check_patch_file(path, baseline="1.0").hot
    with pytest.raises(hotpatch.BaselineMismatch, match=r"baseline 2\.0"):
        check_patch_file(path, baseline="2.0")


def test_check_patch_file_in_an_inner_session(pytester, inner):
    good = _patch_file(pytester, inner, "0.1", "0")
    bad = _patch_file(pytester, inner, "0.2", "0", restart="True")
    pytester.makepyfile(
        test_inner=f"""
        from hotpatch.testing import check_patch_file

        def test_good():
            assert check_patch_file({good!r}).hot

        def test_bad():
            check_patch_file({bad!r})
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*AssertionError: patch 0.2 would not go in hot*restart=True*"])


# -- pytest --hotpatch-apply ------------------------------------------------------------


def _project(pytester) -> str:
    """A package at release 1.0 whose 1.0.1 tests fail on it; returns its name."""
    name = f"shop_{next(_names)}"
    pytester.makeini("[pytest]\npythonpath = .\n")
    pkg = pytester.mkpydir(name)
    (pkg / "pricing.py").write_text(
        "def discount(price, pct):\n    return price * (100 - pct) // 100\n"
    )
    pytester.makepyfile(
        test_pricing=f"""
        from {name}.pricing import CURRENCY, discount  # CURRENCY is new in 1.0.1

        def test_rounds_half_up():
            assert discount(999, 50) == 500

        def test_currency():
            assert CURRENCY == "EUR"

        def test_round_numbers_unchanged():
            assert discount(1000, 10) == 900
        """
    )
    (pytester.path / "fix.py").write_text(
        textwrap.dedent(
            f"""
            from hotpatch import Patch
            patch = Patch(version="1.0.1", baseline="1.0", summary="round discounts")

            @patch.replace("{name}.pricing:discount")
            def discount(price, pct):
                return round(price * (100 - pct) / 100)

            @patch.migrate("{name}.pricing")
            def add_currency(module):
                module.CURRENCY = "EUR"

            @patch.unmigrate("{name}.pricing")
            def drop_currency(module):
                del module.CURRENCY
            """
        )
    )
    return name


def test_apply_runs_the_new_tests_against_the_patched_code(pytester):
    _project(pytester)
    # the old code fails the new version's tests (the module-level import, even)
    before = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert before.ret != 0
    before.stdout.fnmatch_lines(["*ImportError*CURRENCY*"])
    # applied before collection: the tests' module-level import sees the migration
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--hotpatch-apply", "fix.py")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["hotpatch: baseline 1.0, applied 1.0.1 (fix.py)"])


def test_apply_is_rolled_back_when_the_session_ends(pytester, inner):
    original = inner.price.__code__
    patch = _patch_file(pytester, inner, "0.1", "0")
    pytester.makepyfile(
        test_inner=f"""
        import {inner.__name__} as target

        def test_patched():
            assert target.price(10) == 20
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--hotpatch-apply", patch)
    result.assert_outcomes(passed=1)
    assert inner.price.__code__ is original
    assert inner.price(10) == 10


def test_apply_several_files_in_version_order(pytester, inner):
    first = _patch_file(pytester, inner, "0.1", "0")
    second = Path(_patch_file(pytester, inner, "0.2", "0"))
    second.write_text(second.read_text().replace("x * 2", "x * 3"))
    pytester.makepyfile(
        test_inner=f"""
        import {inner.__name__} as target

        def test_both():
            assert target.price(10) == 30
        """
    )
    args = ["--hotpatch-apply", str(second), "--hotpatch-apply", first]
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", *args)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["hotpatch: baseline 0, applied 0.1 (*), 0.2 (*)"])
    assert inner.price(10) == 10


def test_fixture_under_apply_builds_on_the_applied_patches(pytester, inner):
    first = _patch_file(pytester, inner, "0.1", "0")
    second = Path(_patch_file(pytester, inner, "0.2", "0"))
    second.write_text(second.read_text().replace("x * 2", "x * 3"))
    pytester.makepyfile(
        test_inner=f"""
        import hotpatch
        import {inner.__name__} as target

        def test_fixture(hotpatch_registry):
            assert hotpatch_registry.baseline == "0"
            hotpatch_registry.apply(hotpatch.load_patch({str(second)!r}))
            assert target.price(10) == 30

        def test_after_teardown_the_session_patch_is_still_in():
            assert target.price(10) == 20
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--hotpatch-apply", first)
    result.assert_outcomes(passed=2)
    assert inner.price(10) == 10


@pytest.mark.parametrize(
    ("second", "expected"),
    [
        (
            'patch = Patch(version="0.2", baseline="0")\n'
            '@patch.replace("{mod}:nope")\ndef nope(x):\n    return x\n',
            "hotpatch.TargetNotFound: patch 0.2: target {mod}:nope*",
        ),
        (
            'patch = Patch(version="0.2", baseline="0", restart=True)\n'
            '@patch.replace("{mod}:price")\ndef price(x):\n    return x\n',
            "patch 0.2 cannot go in hot (*restart=True*): it needs a restart*",
        ),
        (
            'patch = Patch(version="0.2", baseline="9")\n'
            '@patch.replace("{mod}:price")\ndef price(x):\n    return x\n',
            "hotpatch.BaselineMismatch: patch 0.2 is for baseline 9*",
        ),
        ("patch = Patch(", "hotpatch.VerificationFailed: patch file bad.py has a syntax error*"),
    ],
    ids=["unknown-target", "not-hot", "other-baseline", "syntax-error"],
)
def test_apply_refuses_a_patch_that_cannot_apply_and_applies_none(
    pytester, inner, second, expected
):
    original = inner.price.__code__
    good = _patch_file(pytester, inner, "0.1", "0")
    bad = pytester.path / "bad.py"
    bad.write_text("from hotpatch import Patch\n" + second.format(mod=inner.__name__))
    pytester.makepyfile(test_inner="def test_never_runs():\n    raise AssertionError\n")
    args = ["--hotpatch-apply", good, "--hotpatch-apply", str(bad)]
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"ERROR: --hotpatch-apply *bad.py: {expected.format(mod=inner.__name__)}"]
    )
    assert "hotpatch._errors" not in result.stderr.str()
    assert inner.price.__code__ is original


def test_apply_refuses_a_baseline_bundle(pytester):
    bundle = pytester.mkdir("1.1")
    (bundle / "patch.toml").write_text('[patch]\nversion = "1.1"\nkind = "unplanned-baseline"\n')
    pytester.makepyfile(test_inner="def test_never_runs():\n    raise AssertionError\n")
    result = pytester.runpytest_inprocess("--hotpatch-apply", str(bundle))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --hotpatch-apply *1.1: this is a baseline bundle*"])


def test_apply_says_the_target_must_be_importable_when_the_session_starts(pytester):
    name = _project(pytester)
    (pytester.path / "src").mkdir()
    (pytester.path / name).rename(pytester.path / "src" / name)  # not importable from "."
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--hotpatch-apply", "fix.py")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"*hotpatch.TargetNotFound*'{name}.pricing' must be importable then: install the project*"]
    )


def test_apply_says_a_warning_the_session_makes_an_error_stopped_the_import(pytester):
    """dateutil's old ``tz.py`` calls ``utcfromtimestamp`` at import, which 3.12 deprecates,
    under ``filterwarnings = error``: the target's import fails on the warning, which is no
    matter of installing the project (what the refusal said) but of the session's warning
    filters, and collecting the tests would fail on it too."""
    name = _project(pytester)
    pricing = pytester.path / name / "pricing.py"
    pricing.write_text(
        "import warnings\nwarnings.warn('old ways', DeprecationWarning)\n" + pricing.read_text()
    )
    pytester.makeini("[pytest]\npythonpath = .\nfilterwarnings =\n    error\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--hotpatch-apply", "fix.py")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"*importing '{name}.pricing' raised DeprecationWarning: old ways (a warning the "
            "session's warning filters (filterwarnings, -W) make an error: collecting the tests "
            "would fail on it too; let it pass, e.g. -W 'ignore::DeprecationWarning')*"
        ]
    )
    assert "must be importable then" not in result.stderr.str()


def test_the_file_of_apply_never_changes_the_rootdir(pytester, tmp_path_factory):
    """pytest picks its rootdir before it loads plugins, so the FILE of a separate
    ``--hotpatch-apply FILE`` looks like a test path to it: from another folder it
    would move the rootdir (test ids) and lose the project's configuration."""
    _project(pytester)
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "fix.py"
    (pytester.path / "fix.py").rename(elsewhere)

    joined = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", f"--hotpatch-apply={elsewhere}"
    )
    joined.assert_outcomes(passed=3)
    joined.stdout.fnmatch_lines([f"rootdir: {pytester.path}", "configfile: tox.ini"])

    separate = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--hotpatch-apply", elsewhere
    )
    assert separate.ret == pytest.ExitCode.USAGE_ERROR
    separate.stderr.fnmatch_lines(
        [
            f"ERROR: --hotpatch-apply {elsewhere}: pytest counted this file when it chose its "
            f"rootdir ({elsewhere.parent.parent}, no configfile) instead of {pytester.path} "
            f"(configfile {pytester.path / 'tox.ini'}), which changes test ids and the "
            f"configuration; write --hotpatch-apply={elsewhere} (one argument), or pass --rootdir"
        ]
    )
    # An explicit --rootdir settles it: the file counts for nothing then.
    rooted = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", f"--rootdir={pytester.path}", "--hotpatch-apply", elsewhere
    )
    rooted.assert_outcomes(passed=3)
