"""The ``hotpatch.fleet.patch`` module's account of the level a drop left, from the real
result file, at any level: the file carries the top 10 versions and ``level_size``, and the
module's ``after`` facts must still be the level the agent runs (not a playbook run: the
module's own function on a real agent's answers and result file)."""

from __future__ import annotations

import json
import os
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from drops import wait_for

import hotpatch
from hotpatch.agent._control import request

REPO = Path(__file__).resolve().parents[1]

Facts = Callable[[dict[str, Any]], dict[str, Any]]
After = Callable[[dict[str, Any], dict[str, Any], dict[str, Any]], dict[str, Any]]


@pytest.fixture
def fleet_module() -> Iterator[tuple[After, Facts]]:
    """The collection's ``_after`` (patch module) and ``facts`` (its status facts)."""
    sys.path.insert(0, str(REPO))
    try:
        from ansible_collections.hotpatch.fleet.plugins.module_utils.hotpatch import facts
        from ansible_collections.hotpatch.fleet.plugins.modules.patch import _after

        yield _after, facts
    finally:
        sys.path.remove(str(REPO))


def _source(module: str, n: int) -> str:
    return (
        "from hotpatch import Patch\n\n"
        f"patch = Patch(version='1.0.{n}', baseline='1.0')\n\n"
        f"@patch.replace('{module}:f')\n"
        "def f():\n"
        f"    return {n}\n"
    )


@pytest.mark.parametrize("level", [3, 12])
def test_the_level_after_a_drop_is_the_one_the_agent_runs(
    tmp_path: Path,
    make_module: Callable[[str], types.ModuleType],
    fleet_module: tuple[After, Facts],
    level: int,
) -> None:
    after_of, facts = fleet_module
    mod = make_module("def f():\n    return 0\n")
    folder = tmp_path / "watched"
    folder.mkdir(mode=0o700)
    staged = tmp_path / "staged"
    staged.mkdir()
    with hotpatch.install("1.0", watch=folder, entry_points=False) as agent:
        assert agent.registry is not None
        assert agent.socket is not None
        try:
            for n in range(1, level):
                path = staged / f"p{n}.py"
                path.write_text(_source(mod.__name__, n))
                agent.registry.apply(hotpatch.load_patch(path))
            for name, outcome in (("fix.py", "applied"), ("again.py", "unchanged")):
                before = facts(request(agent.socket, {"cmd": "status"}))
                path = staged / name
                path.write_text(_source(mod.__name__, level))
                os.rename(path, folder / name)
                result = folder / "applied" / f"{name}.result.json"
                wait_for(result.exists, f"{name} filed")
                record = json.loads(result.read_text())
                assert record["outcome"] == outcome
                after = after_of(before, record, {"kind": "file", "version": f"1.0.{level}"})
                now = facts(request(agent.socket, {"cmd": "status"}))
                assert len(now["level"]) == level
                assert (after["level"], after["version"]) == (now["level"], now["version"])
        finally:
            if agent.registry.level:
                agent.registry.rollback(to="1.0")
