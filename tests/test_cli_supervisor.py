"""`hotpatch status` on a folder owned by a supervisor (`hotpatch run --watch`)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from test_supervisor import Supervised, supervise
from test_supervisor_patches import BASE_OPTIONS, drop, logic_patch, result_of

__all__ = ["supervise"]  # the fixture, shared with test_supervisor


def status(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hotpatch", "status", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_status_reads_the_supervisor_of_the_folder(
    supervise: Callable[..., Supervised], tmp_path: Path
) -> None:
    folder = tmp_path / "patches"
    supervised = supervise(options=("--watch", str(folder), *BASE_OPTIONS))
    drop(folder, "fix-1.0.1.py", logic_patch("1.0.1", "fixed"))
    assert result_of(folder, "fix-1.0.1.py", supervised)["outcome"] == "applied"

    as_json = status("--folder", str(folder), "--json")
    assert as_json.returncode == 0, as_json.stderr
    answer = json.loads(as_json.stdout)
    assert answer["supervisor"] is True
    assert answer["patches"]["level"] == ["1.0.1"]
    assert answer["child"]["pid"] == supervised.child_pid

    human = status("--folder", str(folder))
    assert human.returncode == 0, human.stderr
    rows = dict(line.split(None, 1) for line in human.stdout.splitlines() if line.strip())
    assert rows["baseline"] == "1.0"
    assert "1.0.1" in rows["level"]
    assert rows["service"] == f"pid {supervised.child_pid}"


def test_status_without_a_status_file_says_how_to_get_one(tmp_path: Path) -> None:
    folder = tmp_path / "patches"
    folder.mkdir()
    (folder / ".hotpatch.json").write_text(
        json.dumps({"pid": 1, "socket": None, "supervisor": True, "status_file": None})
    )
    result = status("--folder", str(folder))
    assert result.returncode == 2
    assert "--status-file" in result.stderr
