"""The installed distribution: both packages, their typing markers, entry points."""

import importlib
import importlib.metadata
import importlib.resources
import sysconfig
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))

# Source directory of each top-level package that the distribution installs.
SOURCE_DIRS = {"hotpatch": REPO / "hotpatch", "hotpatch_plugins": REPO / "plugins"}


@pytest.mark.parametrize("package", sorted(SOURCE_DIRS))
def test_package_imports_from_this_repo(package: str) -> None:
    module = importlib.import_module(package)
    assert module.__file__ is not None
    assert Path(module.__file__).resolve().parent == SOURCE_DIRS[package] or (
        # A regular (non-editable) install imports from site-packages instead.
        Path(module.__file__).resolve().parent.name == package
    )


def test_plugins_package_is_the_plugins_directory() -> None:
    import hotpatch_plugins

    assert hotpatch_plugins.__doc__ == (
        "Built-in hotpatch plugins, installed as the ``hotpatch_plugins`` package."
    )


@pytest.mark.parametrize("package", sorted(SOURCE_DIRS))
def test_py_typed_ships(package: str) -> None:
    marker = importlib.resources.files(package).joinpath("py.typed")
    assert marker.is_file(), f"{package}/py.typed is missing: type checkers will ignore it"


def test_every_subpackage_is_listed_in_pyproject() -> None:
    # setuptools installs exactly [tool.setuptools] packages; a subpackage
    # missing there works in an editable install yet vanishes from the wheel.
    found = {
        ".".join((top, *init.parent.relative_to(root).parts))
        for top, root in SOURCE_DIRS.items()
        for init in root.rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert found == listed, (
        f"add {sorted(found - listed)} to / remove {sorted(listed - found)} from "
        "[tool.setuptools] packages in pyproject.toml"
    )


def test_installed_metadata_matches_pyproject() -> None:
    # A stale venv (pyproject.toml changed, not reinstalled) fails here.
    metadata = importlib.metadata.metadata("hotpatch")
    assert metadata["Name"] == PYPROJECT["project"]["name"]
    assert metadata["Version"] == PYPROJECT["project"]["version"]
    assert metadata["Requires-Python"] == PYPROJECT["project"]["requires-python"]


def _entry_point(group: str, name: str) -> importlib.metadata.EntryPoint:
    (entry_point,) = importlib.metadata.entry_points(group=group, name=name)
    assert entry_point.dist is not None
    assert entry_point.dist.name == "hotpatch"
    return entry_point


def test_console_script_is_registered_and_installed() -> None:
    entry_point = _entry_point("console_scripts", "hotpatch")
    assert entry_point.value == "hotpatch.cli:main"
    assert (Path(sysconfig.get_path("scripts")) / "hotpatch").is_file()


def test_pytest_plugin_is_registered(pytestconfig: pytest.Config) -> None:
    entry_point = _entry_point("pytest11", "hotpatch")
    assert entry_point.value == "hotpatch.testing"
    # pytest loads pytest11 entry points under the entry point's name.
    assert pytestconfig.pluginmanager.has_plugin("hotpatch")
