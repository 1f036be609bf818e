"""The chaos run (benchmarks/chaos.py), short: faults of every class under load, no violation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

CHAOS = Path(__file__).resolve().parent.parent / "benchmarks" / "chaos.py"


@pytest.mark.slow
def test_a_short_chaos_run_holds_every_invariant(tmp_path: Path) -> None:
    out = tmp_path / "results" / "chaos.json"  # a folder that does not exist yet
    proc = subprocess.run(
        [sys.executable, str(CHAOS), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == ""
    assert "violations: none" in proc.stdout
    data = json.loads(out.read_text())
    assert data["benchmark"] == "chaos"
    assert data["quick"] is True
    assert data["violations"] == []
    faults = data["faults"]
    assert sum(faults.values()) >= 10, faults  # ~20 s at one fault every ~0.3 s
    assert data["requests"]["answered"] > 0
    assert data["requests"]["lost"] == 0
    assert data["requests"]["failed"] == 0
    assert data["journal"]["prefix"] is True
    assert data["left_behind"] == []
    drops = data["drops"]
    assert sum(drops["by_outcome"].values()) == drops["drops"]
    assert drops["by_outcome"].get("lost", 0) == 0
