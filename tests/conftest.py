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

pytest_plugins = ["pytester"]


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
