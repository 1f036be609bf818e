"""The demos run end to end, as a new user would run them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DEMOS = Path(__file__).resolve().parents[1] / "demos"


def test_quickstart_fixes_the_running_function():
    run = subprocess.run(
        [sys.executable, str(DEMOS / "quickstart.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0.99 at 50% off = 0.49" in run.stdout
    assert "now: 0.99 at 50% off = 0.50" in run.stdout
    assert "demo OK" in run.stdout
