"""The ``hotpatch`` command line is the same everywhere: options before or after the command,
none silently ignored, help with descriptions, and a status that says what runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli import agent, patch_file, run_cli, sock, target, watched  # noqa: F401 - fixtures

pytestmark = pytest.mark.e2e


def test_a_bare_hotpatch_prints_the_help() -> None:
    result = run_cli()
    assert result.returncode == 2
    assert result.stdout.startswith("usage: hotpatch")
    for command in ("status", "apply", "rollback", "history", "show", "verify", "watch", "keygen"):
        assert f"    {command} " in result.stdout


@pytest.mark.parametrize(
    "command",
    [
        *("status", "apply", "rollback", "history", "show", "verify", "watch"),
        *("keygen", "sign", "completion"),
    ],
)
def test_every_command_has_a_description(command: str) -> None:
    result = run_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    usage, description = result.stdout.split("\n\n")[:2]
    assert usage.startswith(f"usage: hotpatch {command}")
    assert description[0].isupper(), description
    assert len(description) > 40, description


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--folder", "p", "keygen"], "`hotpatch keygen` takes no --folder: it does not talk"),
        (["keygen", "--socket", "s"], "`hotpatch keygen` takes no --socket"),
        (["--timeout", "3", "sign", "f.py", "--key", "k"], "`hotpatch sign` takes no --timeout"),
        (["watch", "--timeout", "3"], "`hotpatch watch` takes no --timeout: it follows a folder"),
        (["watch", "--socket", "s"], "`hotpatch watch` takes no --socket"),
        (["watch", "a", "--folder", "b"], "watch got two folders (a and b): give one"),
        (["--folder", "p", "make", "a", "b", "--baseline", "1", "--version", "1.1"], "no --folder"),
    ],
)
def test_an_option_a_command_does_not_use_is_refused(args: list[str], error: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert error in result.stderr, result.stderr


@pytest.mark.parametrize("where", ["positional", "after", "before"])
def test_watch_takes_the_folder_every_way(agent, patch_file, watched: Path, where: str) -> None:  # noqa: F811
    folder = str(watched)
    args = {
        "positional": ["watch", folder],
        "after": ["watch", "--folder", folder],
        "before": ["--folder", folder, "watch"],
    }[where]
    command = [sys.executable, "-m", "hotpatch", *args, "--count", "1", "--json"]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as follower:
        assert follower.stderr is not None
        listening = follower.stderr.readline()  # said once its observer runs
        assert listening.startswith(f"watching {folder} for outcomes"), listening
        staged = watched.parent / "1.0.1.py.part"
        staged.write_bytes(patch_file("1.0.1").read_bytes())
        staged.rename(watched / "1.0.1.py")
        out, err = follower.communicate(timeout=120)
    assert follower.returncode == 0, err
    record = json.loads(out)
    assert (record["dir"], record["version"], record["outcome"]) == ("applied", "1.0.1", "applied")


def test_status_says_the_last_patch_was_rolled_back_since(agent, patch_file) -> None:  # noqa: F811
    applied = run_cli("apply", *sock(agent), str(patch_file("1.0.1")))
    assert applied.returncode == 0, applied.stderr
    assert run_cli("rollback", *sock(agent)).returncode == 0
    result = run_cli("status", *sock(agent))
    rows = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert rows["level"] == "baseline only (1.0)"
    assert rows["last"].startswith("1.0.1 applied")
    assert rows["last"].endswith(", rolled back since")
    data = json.loads(run_cli("status", "--json", *sock(agent)).stdout)
    assert data["last"]["rolled_back"] is True
