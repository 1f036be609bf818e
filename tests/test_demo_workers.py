"""``demos/rolling_workers.py`` runs end to end, as a new user would run it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[1] / "demos" / "rolling_workers.py"

pytestmark = pytest.mark.e2e


def test_rolling_workers_demo_rolls_a_patch_and_halts_a_bad_one() -> None:
    run = subprocess.run(
        [sys.executable, str(DEMO)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=DEMO.parents[1],
    )
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    assert "demo OK" in out
    assert "FAILED" not in out
    # The progress, batch by batch, as it happened.
    for batch in range(1, 6):
        assert f"rollout patch fix-1.0.1.py: batch {batch}/5: workers [{batch - 1}]" in out
    assert "rollout patch fix-1.0.1.py: done: all 5 workers changed" in out
    # The bad patch through the real CLI: its rollout shown a line per step, then refused.
    bad = out.split("$ hotpatch apply --folder patches/ sick-1.0.2.py")[1]
    assert re.search(r"hotpatch \| \S+ batch 1/5: workers \[0\]", bad), bad
    assert re.search(r"hotpatch \| \S+ halted: unhealthy workers \[0\]", bad), bad
    assert re.search(r"hotpatch \| \S+ rolled back workers \[0\]", bad), bad
    assert "batch 2/5: workers [1]" not in bad
    assert "refused: the rollout halted after batch 1" in bad
    assert "hotpatch apply exited 1" in bad
    requests = re.search(r"requests\s+(\d+) sent, (\d+) failed, (\d+) refused", out)
    assert requests, out
    sent, failed, refused = map(int, requests.groups())
    assert sent > 0
    assert failed == refused == 0
