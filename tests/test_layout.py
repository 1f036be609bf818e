"""The import-linter contracts cover every module: a new module cannot slip past them.

import-linter checks only the modules a contract names; a core module left out
of the ``core`` contract could import a wing, and a supervisor module left out
of its layers could import any other. These tests hold the lists in
pyproject.toml to the files on disk.
"""

import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "hotpatch"
CONTRACTS = {
    contract["id"]: contract
    for contract in tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"][
        "importlinter"
    ]["contracts"]
}


def layer_names(contract: dict[str, object]) -> set[str]:
    layers = contract["layers"]
    assert isinstance(layers, list)
    return {name.strip() for layer in layers for name in str(layer).split("|")}


def modules(folder: Path) -> set[str]:
    return {p.stem for p in folder.glob("*.py") if p.stem not in {"__init__", "__main__"}}


def test_every_core_module_is_held_to_the_core_contract() -> None:
    core = {name for name in modules(PACKAGE) if name.startswith("_")}
    listed = {name.removeprefix("hotpatch.") for name in CONTRACTS["core"]["source_modules"]}
    assert core == listed, (
        f"add {sorted(core - listed)} to / remove {sorted(listed - core)} from the "
        "source_modules of the 'core' contract in pyproject.toml"
    )


def test_every_wing_is_a_layer_of_the_wings_contract() -> None:
    wings = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert wings == layer_names(CONTRACTS["wings"]), "list each subpackage in the 'wings' layers"


@pytest.mark.parametrize("wing", ["supervisor", "service"])
def test_every_module_of_a_layered_wing_is_in_a_layer(wing: str) -> None:
    found = modules(PACKAGE / wing)
    listed = layer_names(CONTRACTS[wing])
    assert found == listed, (
        f"add {sorted(found - listed)} to / remove {sorted(listed - found)} from the "
        f"layers of the '{wing}' contract in pyproject.toml (and {wing}/__init__.py's list)"
    )
