"""Code and tests nobody here wrote: standard library modules with every function patched
by its own source, or every class replaced whole by its own statement, pass CPython's own
tests of them, and rollback puts every code object back (the child script is
tests/stdlib_identity.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().with_name("stdlib_identity.py")

# Modules of many kinds of definition (slotted and frozen dataclasses' helpers,
# enums, properties with setters, generators, closures, class and static methods,
# private names, modules frozen into the interpreter), with tests that run in
# seconds. Measured on 3.11-3.13: each of these functions goes in hot.
MODULES = [
    ("textwrap", "test.test_textwrap"),
    ("fractions", "test.test_fractions"),
    ("shlex", "test.test_shlex"),
    ("string", "test.test_string"),
    ("gettext", "test.test_gettext"),
    ("pprint", "test.test_pprint"),
    ("reprlib", "test.test_reprlib"),
    ("dataclasses", "test.test_dataclasses"),
    ("functools", "test.test_functools"),
    ("copy", "test.test_copy"),
    ("plistlib", "test.test_plistlib"),
    ("configparser", "test.test_configparser"),
    ("ipaddress", "test.test_ipaddress"),
    ("urllib.parse", "test.test_urlparse"),
    ("collections", "test.test_collections"),
    ("contextlib", "test.test_contextlib"),
    ("uuid", "test.test_uuid"),
    ("optparse", "test.test_optparse"),
    ("tomllib._parser", "test.test_tomllib"),
    ("posixpath", "test.test_posixpath"),
    ("codecs", "test.test_codecs"),
    ("enum", "test.test_enum"),
]


def run(folder: Path, module: str, tests: str, *extra: str) -> dict[str, Any]:
    """The child's report; it runs in ``folder`` (CPython's tests write files where they run)."""
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), module, tests, *extra],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def assert_tests_unchanged_and_restored(result: dict[str, Any]) -> None:
    runs = result["tests_run"]
    assert runs[0] == runs[1] == runs[2] > 0
    assert result["failed_patched"] == result["failed_before"]
    assert result["failed_after"] == result["failed_before"]
    assert result["not_restored"] == []


@pytest.mark.slow
@pytest.mark.parametrize(("module", "tests"), MODULES, ids=[m for m, _ in MODULES])
def test_every_function_patched_by_its_own_source_passes_the_modules_own_tests(
    module: str, tests: str, tmp_path: Path
) -> None:
    result = run(tmp_path, module, tests)
    assert result["refused"] == {}
    assert result["hot"] == result["targets"] > 0
    assert result["switched"] == result["hot"]  # the tests ran the patched code
    assert_tests_unchanged_and_restored(result)


@pytest.mark.slow
def test_a_wrong_replacement_fails_the_modules_tests_and_rollback_mends_them(
    tmp_path: Path,
) -> None:
    result = run(tmp_path, "textwrap", "test.test_textwrap", "--break", "shorten")
    new = set(result["failed_patched"]) - set(result["failed_before"])
    assert any("Shorten" in test for test in new), new
    assert result["failed_after"] == result["failed_before"]
    assert result["not_restored"] == []


# Class hierarchies patched together (argparse's formatters and actions, plistlib's
# writers, csv's dialects, contextlib's redirects), defaults naming a class of the patch
# (argparse), enums and dataclasses: every class goes in hot.
CLASS_MODULES = [
    ("argparse", "test.test_argparse"),
    ("plistlib", "test.test_plistlib"),
    ("csv", "test.test_csv"),
    ("contextlib", "test.test_contextlib"),
    ("urllib.parse", "test.test_urlparse"),
    ("gettext", "test.test_gettext"),
    ("numbers", "test.test_numbers"),
    ("dataclasses", "test.test_dataclasses"),
    ("string", "test.test_string"),
    ("uuid", "test.test_uuid"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("module", "tests"), CLASS_MODULES, ids=[m for m, _ in CLASS_MODULES])
def test_every_class_replaced_whole_by_its_own_statement_passes_the_modules_own_tests(
    module: str, tests: str, tmp_path: Path
) -> None:
    result = run(tmp_path, module, tests, "--classes")
    assert result["refused"] == {}
    assert result["hot"] == result["targets"] > 0
    assert result["switched"] > 0  # classes with no function of their own switch nothing
    assert_tests_unchanged_and_restored(result)


@pytest.mark.slow
def test_class_data_the_running_classes_filled_is_kept_and_the_patch_refused_naming_it(
    tmp_path: Path,
) -> None:
    """ipaddress fills ``_BaseV4._netmask_cache`` as it goes; a class statement restating
    ``_netmask_cache = {}`` must not empty it: those two classes are refused, the rest go in."""
    result = run(tmp_path, "ipaddress", "test.test_ipaddress", "--classes")
    assert sorted(result["refused"]) == ["_BaseV4", "_BaseV6"]
    assert all(
        why.startswith("NameConflict") and "_netmask_cache" in why
        for why in result["refused"].values()
    )
    assert result["hot"] == result["targets"] - 2
    assert_tests_unchanged_and_restored(result)
