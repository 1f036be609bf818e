"""``hotpatch run`` refuses at start what would fail later, naming the option and the fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "hotpatch", "run", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=60, check=False)


WATCHING = ["--watch", "p", "--baseline", "1.0", "--allow-unsigned"]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--baseline", "banana", "--", "true"], "--baseline 'banana' is not a PEP 440 version"),
        (
            ["--watch", "p", "--baseline", "1.0", "--trusted-keys", "nokeys", "--", "true"],
            "--trusted-keys nokeys: no such directory; create it and copy the public keys",
        ),
        (["--status-file", "nodir/status.json", "--", "true"], "--status-file nodir/status.json"),
        (["--control-socket", "nodir/s.sock", "--", "true"], "its folder"),
        (["--", "no-such-command-here"], "'no-such-command-here' is not found on PATH"),
        (["--", "./not-there.sh"], "'./not-there.sh' is not an executable file"),
        (["--state-dir", "state", "--", "true"], "--state-dir state keeps what hotpatch writes"),
        *(
            (
                [*WATCHING, "--vital-timeout", value, "--", "true"],
                f"--vital-timeout {value} is not a positive number of seconds: it is how long "
                "the check after each apply",
            )
            for value in ("0", "-1", "nan", "inf")
        ),
        (["--vital-timeout", "5", "--", "true"], "--vital-timeout 5 is the wait of the check"),
    ],
)
def test_a_bad_option_is_refused_at_start(tmp_path: Path, args: list[str], error: str) -> None:
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert error in result.stderr, result.stderr
    assert "usage: hotpatch run [options] -- CMD [ARG ...]" in result.stderr
    assert not (tmp_path / "p").exists()  # nothing was started or created


def test_a_bad_vital_timeout_in_the_environment_is_refused_at_start_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOTPATCH_VITAL_TIMEOUT", "soon")
    result = run(*WATCHING, "--", "true", cwd=tmp_path)
    assert result.returncode == 2
    assert "$HOTPATCH_VITAL_TIMEOUT='soon' is not a positive number of seconds" in result.stderr
    assert not (tmp_path / "p").exists()


def test_run_help_shows_the_command_in_its_usage(tmp_path: Path) -> None:
    result = run("--help", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith("usage: hotpatch run [options] -- CMD [ARG ...]\n")
