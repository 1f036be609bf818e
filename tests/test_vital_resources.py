"""The vital check after an apply, in a process at its descriptor limit (embedded agent, workers).

After each apply the agent checks that it can still file an outcome and answer
its control socket; under ``hotpatch run`` the same check uses a socket pair
made beforehand (``hotpatch._shortage.SparePair``). Here a real service process
lowers its own ``RLIMIT_NOFILE`` with ``resource.setrlimit`` and fills its
descriptors with real open files, leaving a few free. A good patch dropped then
must end applied, or wait with the resource named until descriptors are back --
never be rolled back and refused as one that broke the agent. A patch that does
break the vital path (``json.dumps`` raising) is still rolled back.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from drops import DropFolder, wait_for
from limited import (
    PIPELINE_FDS,
    good_patch,
    json_breaking_patch,
    outcome,
    read_breaking_patch,
    running,
    settled,
)


@pytest.fixture
def services() -> Iterator[Any]:
    with running() as start:
        yield start


@pytest.mark.parametrize("mode", ["solo", "workers"])
@pytest.mark.parametrize("leave", [0, 1, 2])
def test_a_good_patch_at_the_descriptor_limit_is_applied_or_waits_never_refused(
    tmp_path: Path, services: Any, mode: str, leave: int
) -> None:
    # Descriptors enough to take the drop (PIPELINE_FDS free); once the patch is in, the
    # service's load takes all but ``leave``: the vital check runs at the limit.
    folder = DropFolder(tmp_path)
    service = services(folder, mode)
    staged = folder.write("a.py", good_patch("1.0.1", 1))
    service.tell(f"fill {PIPELINE_FDS} {leave}")
    service.expect("full")
    folder.put(staged)
    settled(folder, service, "a.py")
    service.tell("free")
    service.expect("freed")
    where, result = outcome(folder, "a.py")
    assert (where, result["outcome"]) == ("applied", "applied"), (result, service.logged())
    assert "broke what the agent needs" not in service.logged()
    service.tell("f")
    assert service.expect("f") == "f 1"
    assert service.finish() == "level 1.0.1"


def test_workers_whose_owner_cannot_reach_another_for_want_of_descriptors_wait(
    tmp_path: Path, services: Any
) -> None:
    # Two workers; the owner (the first) takes the patch, then its load takes every
    # descriptor: it cannot reach the other worker. Not the patch's fault: undone where
    # it went in, the drop waits, and goes in everywhere once descriptors are back.
    folder = DropFolder(tmp_path)
    owner, other = services(folder, "workers"), services(folder, "workers")
    staged = folder.write("a.py", good_patch("1.0.1", 1))
    owner.tell(f"fill {PIPELINE_FDS} 0")
    owner.expect("full")
    folder.put(staged)
    wait_for(
        lambda: "a.py waits: out of file descriptors" in owner.logged(),
        "the owner to say the drop waits for descriptors",
    )
    assert not os.path.lexists(folder.path / "rejected" / "a.py")
    owner.tell("free")
    owner.expect("freed")
    where, result = outcome(folder, "a.py")
    assert (where, result["outcome"]) == ("applied", "applied"), (result, owner.logged())
    for each in (owner, other):
        each.tell("f")
        assert each.expect("f") == "f 1"
    assert "broke what the agent needs" not in owner.logged() + other.logged()
    assert owner.finish() == other.finish() == "level 1.0.1"


@pytest.mark.parametrize("mode", ["solo", "workers"])
@pytest.mark.parametrize("leave", [0, 1])
@pytest.mark.parametrize("breaking", [json_breaking_patch, read_breaking_patch])
def test_a_patch_breaking_the_vital_path_at_the_descriptor_limit_is_still_rolled_back(
    tmp_path: Path, services: Any, mode: str, leave: int, breaking: Any
) -> None:
    # With no descriptor left (leave 0) the check still writes a result file (with the
    # descriptor it keeps for that) and the rollback still goes in (the embedded agent's
    # journal written with it too): a patch that breaks filing or answering never stays.
    folder = DropFolder(tmp_path)
    service = services(folder, mode)
    staged = folder.write("bad.py", breaking("1.0.1"))
    service.tell(f"fill {PIPELINE_FDS} {leave}")
    service.expect("full")
    folder.put(staged)
    settled(folder, service, "bad.py")
    service.tell("free")
    service.expect("freed")
    where, result = outcome(folder, "bad.py")
    assert where == "rejected", (result, service.logged())
    assert "rolled back" in result["reason"]
    assert "rolling it back failed" not in service.logged()
    assert service.finish() == "level"
