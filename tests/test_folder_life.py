"""The watched folder's life cycle: deleted, replaced, re-permissioned while an agent watches it.

A real agent on a real folder: the folder (or a subfolder) is changed under
it, and the agent must say so loudly, take no drop while the folder is unsafe,
and carry on by itself once it is safe again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from drops import WAIT_S, DropFolder, wait_for

import hotpatch
from hotpatch.agent._control import request
from hotpatch.agent._names import LOCKFILE_NAME, PIDFILE_NAME, SOCKET_NAME
from hotpatch.agent._vital import VITAL_TIMEOUT_S, VitalCheck

OTHER_UID = 54321  # a user that owns nothing here


def patch_text(mod: types.ModuleType, version: str, value: int) -> str:
    return (
        "from hotpatch import Patch\n\n"
        f"patch = Patch(version={version!r}, baseline='1.0')\n\n"
        f"@patch.replace('{mod.__name__}:f')\n"
        "def f():\n"
        f"    return {value!r}\n"
    )


@pytest.fixture
def drops(tmp_path: Path) -> DropFolder:
    return DropFolder(tmp_path)


@pytest.fixture
def target(make_module: Callable[[str], types.ModuleType]) -> types.ModuleType:
    return make_module(
        """\
        def f():
            return 0
        """
    )


@pytest.fixture
def start_agent(drops: DropFolder) -> Iterator[Callable[..., hotpatch.Agent]]:
    agents: list[hotpatch.Agent] = []

    def start(**options: Any) -> hotpatch.Agent:
        options.setdefault("control_socket", False)
        options.setdefault("verify", False)
        agent = hotpatch.install("1.0", watch=drops.path, **options)
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        agent.stop()
        if agent.registry is not None and agent.registry.level:
            agent.registry.rollback(to="1.0")


def problem(agent: hotpatch.Agent) -> str | None:
    folder = agent.status()["folder"]
    assert folder["safe"] is (folder["problem"] is None) is (folder["since"] is None)
    text: str | None = folder["problem"]
    return text


def held(agent: hotpatch.Agent, name: str) -> None:
    """``name`` was seen and is waiting, not applied, while the folder is unsafe."""
    wait_for(lambda: name in agent.status()["pending"], f"{name} to be seen")
    wait_for(lambda: problem(agent) is not None, "the folder to be found unsafe")
    assert agent.registry is not None
    assert agent.registry.level == ()


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# -- re-permissioned -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702])
def test_a_folder_made_writable_by_others_takes_no_drop_until_it_is_fixed(
    drops: DropFolder,
    target: types.ModuleType,
    start_agent: Callable[..., hotpatch.Agent],
    caplog: pytest.LogCaptureFixture,
    mode: int,
) -> None:
    caplog.set_level(logging.INFO, logger="hotpatch")
    agent = start_agent()
    assert problem(agent) is None
    drops.path.chmod(mode)
    # Dropped at once: the folder is checked for this drop, not only now and then.
    drops.drop("fix.py", patch_text(target, "1.0.1", 1))
    held(agent, "fix.py")
    text = problem(agent)
    assert text is not None
    assert str(drops.path) in text
    assert "writable by other users" in text
    assert f"chmod go-w {drops.path}" in text
    assert any(str(drops.path) in e and "chmod go-w" in e for e in errors(caplog))
    assert target.f() == 0
    assert os.path.exists(drops.path / "fix.py")

    drops.path.chmod(0o700)
    assert drops.filed("fix.py", "applied")["version"] == "1.0.1"
    assert target.f() == 1
    assert problem(agent) is None
    assert "is safe again" in caplog.text


def test_a_folder_given_to_another_user_takes_no_drop_until_it_is_given_back(
    drops: DropFolder,
    target: types.ModuleType,
    start_agent: Callable[..., hotpatch.Agent],
    caplog: pytest.LogCaptureFixture,
) -> None:
    agent = start_agent()
    os.chown(drops.path, OTHER_UID, -1)
    drops.drop("fix.py", patch_text(target, "1.0.1", 1))
    held(agent, "fix.py")
    text = problem(agent)
    assert text is not None
    assert f"owned by uid {OTHER_UID}" in text
    assert f"chown {os.geteuid()} {drops.path}" in text
    assert any(f"owned by uid {OTHER_UID}" in e for e in errors(caplog))

    os.chown(drops.path, os.geteuid(), -1)
    drops.filed("fix.py", "applied")
    assert target.f() == 1
    assert problem(agent) is None


@pytest.mark.parametrize("sub", ["applied", "rejected", ".staging"])
def test_a_subfolder_made_writable_by_others_stops_the_drops(
    drops: DropFolder,
    target: types.ModuleType,
    start_agent: Callable[..., hotpatch.Agent],
    sub: str,
) -> None:
    agent = start_agent()
    (drops.path / sub).chmod(0o777)
    drops.drop("fix.py", patch_text(target, "1.0.1", 1))
    held(agent, "fix.py")
    text = problem(agent)
    assert text is not None
    assert str(drops.path / sub) in text
    assert "writable by other users" in text

    (drops.path / sub).chmod(0o700)
    drops.filed("fix.py", "applied")
    assert problem(agent) is None


# -- deleted, replaced -----------------------------------------------------------------------


@pytest.mark.parametrize("sub", ["applied", "rejected", ".staging"])
def test_a_deleted_outcome_folder_is_made_again(
    drops: DropFolder,
    target: types.ModuleType,
    start_agent: Callable[..., hotpatch.Agent],
    sub: str,
) -> None:
    agent = start_agent(verify=True)
    shutil.rmtree(drops.path / sub)
    drops.drop("fix.py", patch_text(target, "1.0.1", 1))
    assert drops.filed("fix.py", "applied")["outcome"] == "applied"
    drops.drop("bad.py", "this is not python (\n")
    assert drops.filed("bad.py", "rejected")["outcome"] == "rejected"
    assert (drops.path / sub).is_dir()
    assert (drops.path / sub).stat().st_mode & 0o777 == 0o700
    assert problem(agent) is None


def test_a_folder_deleted_then_made_again_is_watched_again_with_its_socket(
    drops: DropFolder,
    target: types.ModuleType,
    start_agent: Callable[..., hotpatch.Agent],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="hotpatch")
    agent = start_agent(control_socket=None)  # the default: DIR/.hotpatch.sock
    socket = drops.path / SOCKET_NAME
    assert request(socket, {"cmd": "status"})["ok"]
    shutil.rmtree(drops.path)
    wait_for(lambda: problem(agent) is not None, "the agent to notice")
    text = problem(agent)
    assert text is not None
    assert str(drops.path) in text
    assert "gone" in text
    assert any(str(drops.path) in e and "gone" in e for e in errors(caplog))

    drops.path.mkdir(mode=0o700)
    wait_for(lambda: problem(agent) is None, "the agent to take the new folder")
    assert "watching the new one" in caplog.text
    wait_for(socket.exists, "the control socket to be made again")
    assert request(socket, {"cmd": "status"})["folder"]["safe"] is True
    assert (drops.path / PIDFILE_NAME).exists()
    # The new folder is this agent's: its lock is held.
    with pytest.raises(FileExistsError, match="already watched"):
        hotpatch.install("1.0", watch=drops.path, control_socket=False, verify=False)
    assert (drops.path / LOCKFILE_NAME).exists()

    drops.drop("fix.py", patch_text(target, "1.0.1", 1))
    assert drops.filed("fix.py", "applied")["version"] == "1.0.1"
    assert target.f() == 1


def test_a_folder_renamed_away_and_replaced_is_watched_in_its_new_form(
    drops: DropFolder,
    target: types.ModuleType,
    start_agent: Callable[..., hotpatch.Agent],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="hotpatch")
    agent = start_agent()
    old = drops.root / "old-patches"
    replacement = drops.root / "new-patches"
    replacement.mkdir(mode=0o700)
    (replacement / "waiting.py").write_text(patch_text(target, "1.0.1", 1))
    os.rename(drops.path, old)
    os.rename(replacement, drops.path)  # the new folder, with a drop already in it
    drops.filed("waiting.py", "applied")
    assert target.f() == 1
    assert "replaced" in caplog.text
    # The old folder is no longer watched: what lands there stays there.
    (old / "stray.py").write_text(patch_text(target, "1.0.2", 2))
    drops.drop("fix.py", patch_text(target, "1.0.3", 3))
    drops.filed("fix.py", "applied")
    assert (old / "stray.py").exists()
    assert agent.registry is not None
    assert agent.registry.level == ("1.0.1", "1.0.3")


def test_a_replacement_folder_that_is_unsafe_is_not_taken(
    drops: DropFolder,
    target: types.ModuleType,
    start_agent: Callable[..., hotpatch.Agent],
) -> None:
    agent = start_agent()
    shutil.rmtree(drops.path)
    drops.path.mkdir()
    drops.path.chmod(0o777)
    (drops.path / "planted.py").write_text(patch_text(target, "1.0.1", 1))
    wait_for(
        lambda: "writable by other users" in (problem(agent) or ""),
        "the new folder to be judged",
    )
    assert agent.registry is not None
    assert agent.registry.level == ()
    drops.path.chmod(0o700)
    drops.filed("planted.py", "applied")
    assert target.f() == 1


def test_hotpatch_status_shows_why_the_folder_takes_no_drop(
    drops: DropFolder, start_agent: Callable[..., hotpatch.Agent]
) -> None:
    agent = start_agent(control_socket=None)
    drops.path.chmod(0o777)
    wait_for(lambda: problem(agent) is not None, "the folder to be found unsafe")
    shown = subprocess.run(
        [sys.executable, "-m", "hotpatch", "status", "--folder", str(drops.path)],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=True,
    ).stdout
    line = next(line for line in shown.splitlines() if line.startswith("folder"))
    assert "UNSAFE, no drop is taken" in line
    assert f"chmod go-w {drops.path}" in line


# -- replaced while a drop is checked ---------------------------------------------------------


def _warm_blocks_until(go: Path) -> str:
    """A module whose import waits for ``go`` in the pre-started verifier (only there).

    The verifier is the one child of this process that imports it: the service
    and the verification children (the verifier's) do not wait.
    """
    return f"""\
        import os, time
        if os.getppid() == {os.getpid()}:
            open({str(go.with_name("warming"))!r}, "w").close()  # the test waits for this
            _deadline = time.monotonic() + {WAIT_S}
            while not os.path.exists({str(go)!r}) and time.monotonic() < _deadline:
                time.sleep(0.01)

        def f():
            return 0
        """


@pytest.mark.parametrize("how", ["renamed", "deleted"])
def test_a_drop_checked_while_its_folder_is_replaced_is_retried_not_rejected(
    drops: DropFolder,
    make_module: Callable[[str], types.ModuleType],
    start_agent: Callable[..., hotpatch.Agent],
    caplog: pytest.LogCaptureFixture,
    how: str,
) -> None:
    """The folder replaced between staging a good drop and its check reading the copy.

    The verifier warms the module the first patch targets, which holds it up
    (until ``go``) while the second drop sits staged in ``.staging``; then the
    folder goes away with that copy. The check cannot read it: that is not the
    patch's fault, so the drop is not rejected -- it is tried again once the new
    folder is taken over, before the later version waiting there.
    """
    caplog.set_level(logging.INFO, logger="hotpatch")
    go = drops.root / "go"
    target = make_module(_warm_blocks_until(go))
    # The verifier warms only files older than itself (nothing a patch wrote
    # while checked runs there): a module written just now may not be, yet.
    assert target.__file__ is not None
    os.utime(target.__file__, ns=(time.time_ns() - 10**10,) * 2)
    agent = start_agent(verify=True)
    drops.drop("first.py", patch_text(target, "1.0.1", 1))
    drops.filed("first.py", "applied")  # its target is warmed next, and waits for go
    wait_for((drops.root / "warming").exists, "the verifier to warm the target")
    second = patch_text(target, "1.0.2", 2)
    drops.drop("second.py", second)
    wait_for(lambda: list(drops.path.glob(".staging/*/second.py")), "second.py to be staged")

    old = drops.root / "old-patches"
    if how == "renamed":  # replaced by a folder holding the same drops (and a later one)
        replacement = drops.root / "new-patches"
        replacement.mkdir(mode=0o700)
        (replacement / "second.py").write_text(second)
        (replacement / "third.py").write_text(patch_text(target, "1.0.3", 3))
        os.rename(drops.path, old)
        os.rename(replacement, drops.path)
    else:  # deleted with what it held, made again, the drops put back
        # Out of the way in one step, then emptied: the agent remakes what goes
        # missing in a folder still there, so a bare rmtree could race it.
        gone = drops.root / "deleted-patches"
        os.rename(drops.path, gone)
        shutil.rmtree(gone)
        drops.path.mkdir(mode=0o700)
        drops.drop("third.py", patch_text(target, "1.0.3", 3))
        drops.drop("second.py", second)
    go.touch()

    assert drops.filed("second.py", "applied")["version"] == "1.0.2"
    assert drops.filed("third.py", "applied")["version"] == "1.0.3"
    assert agent.registry is not None
    assert agent.registry.level == ("1.0.1", "1.0.2", "1.0.3")  # in version order
    assert target.f() == 3
    for folder in (drops.path, old):
        rejected = folder / "rejected"
        assert not rejected.exists() or not os.listdir(rejected), os.listdir(rejected)
    said = [r.getMessage() for r in caplog.records if "second.py" in r.getMessage()]
    assert not [line for line in said if "rejected" in line], said
    cut_short = [line for line in said if "cut short" in line]
    assert len(cut_short) == 1, said
    assert "tried again" in cut_short[0]


def test_the_vital_check_does_not_blame_a_patch_for_a_folder_gone(tmp_path: Path) -> None:
    # The scratch directory is the watched folder's staging: the folder deleted or
    # replaced under the check is the guard's to report, not a broken patch.
    record = {"version": "1.0.1", "outcome": "applied", "level": ["1.0.1"]}
    gone = VitalCheck(tmp_path / "patches" / ".staging", None, timeout=VITAL_TIMEOUT_S)
    assert gone(record) is None
    assert not (tmp_path / "patches").exists()
    here = VitalCheck(tmp_path / ".staging", None, timeout=VITAL_TIMEOUT_S)
    assert here(record) is None
    assert (tmp_path / ".staging").is_dir()
    # The check's file is kept for the next check, under its temporary name.
    assert [name.endswith(".tmp") for name in os.listdir(tmp_path / ".staging")] == [True]


def test_the_vital_check_writes_over_one_file_check_after_check(tmp_path: Path) -> None:
    # A burst of drops is a vital check per drop: none makes or frees a file (on ext4
    # without a journal, a file made and removed per drop made each drop dearer).
    scratch = tmp_path / ".staging"
    check = VitalCheck(scratch, None, timeout=VITAL_TIMEOUT_S)
    inodes = set()
    for n in range(1, 6):
        assert check({"version": f"1.0.{n}", "outcome": "applied", "level": ["1.0.1"]}) is None
        [name] = os.listdir(scratch)
        assert name.startswith("..vital-check.")
        assert name.endswith(".tmp")
        inodes.add(os.stat(scratch / name).st_ino)
    assert len(inodes) == 1
    assert json.loads((scratch / name).read_text())["version"] == "1.0.5"  # written in full


def test_a_vital_check_still_running_keeps_its_file_to_itself(tmp_path: Path) -> None:
    # A check that hangs (timed out, still writing) never shares its file with the next.
    scratch = tmp_path / ".staging"
    check = VitalCheck(scratch, None, timeout=VITAL_TIMEOUT_S)
    assert check({"version": "1.0.1"}) is None
    [kept] = os.listdir(scratch)
    held = check._take()  # as a check that never finishes holds it
    assert check({"version": "1.0.2"}) is None
    assert len(os.listdir(scratch)) == 2
    assert not held.exists()
    assert json.loads((scratch / kept).read_text())["version"] == "1.0.1"  # not written over


def test_the_vital_check_names_a_result_file_that_cannot_be_written(tmp_path: Path) -> None:
    scratch = tmp_path / ".staging"
    scratch.mkdir()
    (scratch / "x").mkdir()
    check = VitalCheck(scratch / "x" / "y", None, timeout=VITAL_TIMEOUT_S)
    (scratch / "x").rmdir()
    (scratch / "x").write_text("a file where a directory should be")
    broken = check({"version": "1.0.1"})
    assert broken is not None
    assert "writing a result file failed" in broken
