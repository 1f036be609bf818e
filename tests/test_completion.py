"""Shell completion: the real ``hotpatch`` script answering the shell, as bash asks it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from test_cli import agent, patch_file, run_cli, target, watched  # noqa: F401 - fixtures

pytestmark = pytest.mark.e2e

SCRIPT = str(Path(sysconfig.get_path("scripts")) / "hotpatch")
IFS = "\013"  # argcomplete's separator between completions


def completions(line: str, tmp_path: Path, *, cwd: Path | None = None) -> list[str]:
    """What the shell gets for ``line`` with the cursor at its end (argcomplete's protocol)."""
    out = tmp_path / "completions"
    env = {
        **{k: v for k, v in os.environ.items() if k != "HOTPATCH_SOCKET"},
        "_ARGCOMPLETE": "1",
        "_ARGCOMPLETE_IFS": IFS,
        "_ARGCOMPLETE_STDOUT_FILENAME": str(out),
        "COMP_LINE": line,
        "COMP_POINT": str(len(line)),
        "COMP_TYPE": "9",  # TAB
    }
    run = subprocess.run(
        [SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        cwd=cwd or tmp_path,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    text = out.read_text()
    return sorted(c.strip() for c in text.split(IFS) if c.strip())


def test_commands_and_options_complete(tmp_path: Path) -> None:
    assert completions("hotpatch st", tmp_path) == ["status"]
    assert completions("hotpatch s", tmp_path) == ["show", "sign", "status"]
    assert "--folder" in completions("hotpatch status --f", tmp_path)
    assert completions("hotpatch completion b", tmp_path) == ["bash"]
    (tmp_path / "fix-2.3.1.py").write_text("")
    assert completions("hotpatch apply fix", tmp_path) == ["fix-2.3.1.py"]


def test_show_completes_the_versions_the_agent_applied(
    agent,  # noqa: F811
    watched: Path,  # noqa: F811
    patch_file,  # noqa: F811
    tmp_path: Path,
) -> None:
    for version in ("1.0.1", "1.0.2"):
        assert run_cli("apply", str(patch_file(version)), "--folder", str(watched)).returncode == 0
    line = f"hotpatch show --folder {watched} 1.0."
    assert completions(line, tmp_path) == ["1.0.1", "1.0.2"]
    assert completions("hotpatch show 1.0.2", tmp_path, cwd=watched) == [
        "1.0.2"
    ]  # ./.hotpatch.json
    assert completions("hotpatch show 1.", tmp_path) == []  # no agent to ask: nothing


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash on this machine")
def test_the_registration_code_registers_the_command_with_bash(tmp_path: Path) -> None:
    code = subprocess.run(
        [SCRIPT, "completion", "bash"], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    script = tmp_path / "register.sh"
    script.write_text(code)
    registered = subprocess.run(
        ["bash", "-c", f"source {script} && complete -p hotpatch"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert registered.returncode == 0, registered.stderr
    assert registered.stdout.startswith("complete "), registered.stdout
    assert registered.stdout.rstrip().endswith(" hotpatch")


def test_without_argcomplete_the_command_says_what_to_install(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow" / "argcomplete"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('argcomplete is not installed')\n")
    env = {**os.environ, "PYTHONPATH": str(shadow.parent)}
    run = subprocess.run(
        [sys.executable, "-m", "hotpatch", "completion", "bash"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert run.returncode == 2
    assert "pip install 'pyhotpatch[completion]'" in run.stderr
    # The command itself still works.
    env["_ARGCOMPLETE"] = "1"  # a shell asking, without argcomplete: no answer, no crash
    version = subprocess.run(
        [sys.executable, "-m", "hotpatch", "--version"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert version.returncode == 0, version.stderr
