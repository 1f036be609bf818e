"""The burst benchmark's ratios of CPU times, which the kernel counts in clock ticks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

PROBE = """
import sys
sys.path.insert(0, sys.argv[1])
import burst
assert burst._ratio(0.5, 0.1) == 5.0, burst._ratio(0.5, 0.1)
# Below a tick on either side (os.times() says 0): no ratio, never 0x or infinite.
assert burst._ratio(0.0, 0.01) is None, burst._ratio(0.0, 0.01)
assert burst._ratio(0.01, 0.0) is None, burst._ratio(0.01, 0.0)
print("ok")
"""


def test_a_cpu_time_below_a_clock_tick_gives_no_ratio() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(BENCHMARKS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
