"""Shared fixtures: real target modules on disk, real patch files, a clean registry."""

from __future__ import annotations

import importlib
import itertools
import sys
import textwrap
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import hotpatch

_counter = itertools.count()
TESTS = Path(__file__).resolve().parent

pytest_plugins = ["pytester"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--part",
        metavar="K/N",
        default=None,
        help=(
            "collect only part K of N of the suite: the test files of tests/, in name order, "
            "dealt out to the N parts in turn (`make test` runs each Python's suite in parts)"
        ),
    )


def pytest_configure(config: pytest.Config) -> None:
    value = config.getoption("--part")
    k, _, n = str(value).partition("/")
    if value is not None and not (k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n)):
        msg = f"--part takes K/N with 1 <= K <= N (say --part 1/2), not {value!r}"
        raise pytest.UsageError(msg)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """With ``--part K/N``: ignore the test files of ``tests/`` that are not in part K."""
    value = config.getoption("--part")
    if value is None or collection_path.parent != TESTS:
        return None
    k, _, n = str(value).partition("/")
    files = sorted(path.name for path in TESTS.glob("test_*.py"))
    if collection_path.name not in files:
        return None
    return files.index(collection_path.name) % int(n) != int(k) - 1 or None


@pytest.fixture
def make_module(tmp_path: Path) -> Iterator[Callable[[str], types.ModuleType]]:
    """``make_module(source)`` -> a freshly imported module with a unique name.

    The source is dedented; the module lives in a temporary folder on
    ``sys.path`` and is forgotten at teardown, so no test sees another's code.
    """
    folder = tmp_path / "modules"
    folder.mkdir()
    sys.path.insert(0, str(folder))
    names: list[str] = []

    def make(source: str, name: str | None = None) -> types.ModuleType:
        name = name or f"target_{next(_counter)}"
        (folder / f"{name}.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        names.append(name)
        return importlib.import_module(name)

    yield make
    sys.path.remove(str(folder))
    for name in names:
        sys.modules.pop(name, None)


@pytest.fixture
def write_patch(tmp_path: Path) -> Callable[..., Path]:
    """``write_patch(source, name=...)`` -> path of a patch file holding ``source``.

    ``{mod}`` style placeholders are left to the caller (use f-strings).
    """
    folder = tmp_path / "patches"
    folder.mkdir()

    def write(source: str, name: str | None = None) -> Path:
        path = folder / (name or f"patch_{next(_counter)}.py")
        path.write_text(textwrap.dedent(source))
        return path

    return write


@pytest.fixture
def registry() -> Iterator[hotpatch.Registry]:
    """A registry on baseline 1.0; whatever is still applied is rolled back at teardown."""
    reg = hotpatch.Registry("1.0")
    yield reg
    if reg.level:
        reg.rollback(to="1.0")
