"""`hotpatch status` on a folder owned by a supervisor (`hotpatch run --watch`)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from test_supervisor import Supervised, supervise
from test_supervisor_patches import BASE_OPTIONS, drop, logic_patch, result_of

from hotpatch.supervisor._status import write_status

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


def test_status_read_from_the_status_file_shows_a_level_by_its_top_and_size(
    tmp_path: Path,
) -> None:
    """The status file holds each level's top 10 versions and ``level_size``: read from it,
    ``hotpatch status`` says the top and how many patches the level holds."""
    folder = tmp_path / "patches"
    folder.mkdir()
    status_file = tmp_path / "status.json"
    top = [f"1.0.{n}" for n in range(33, 43)]
    shown = {"level": top, "level_size": 42, "level_digest": "d" * 64}
    write_status(
        status_file,
        {
            "pid": 1,
            "state": "running",
            "patches": {"baseline": "1.0", **shown, "pending": [], "pending_count": 0},
            "workers": [
                {"index": i, "pid": 100 + i, "state": "running", "baseline": "1.0", **shown}
                for i in range(2)
            ],
        },
    )
    (folder / ".hotpatch.json").write_text(
        json.dumps({"pid": 1, "socket": None, "supervisor": True, "status_file": str(status_file)})
    )
    human = status("--folder", str(folder))
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    level = next(line for line in lines if line.startswith("level"))
    assert level.split(None, 1)[1] == f"..., {', '.join(top)} (42 patches)"
    workers = [line for line in lines if line.split()[:1] in (["0"], ["1"])]
    assert len(workers) == 2
    assert all(line.endswith("1.0.42 (42 patches)") for line in workers), workers
    as_json = status("--folder", str(folder), "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["patches"]["level_size"] == 42
