"""A script run in a new Python, for tests whose scenario must not touch the test process
(it lowers its own limits, drops its privileges, forks)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any


def run_python(code: str, *, timeout: float = 120) -> str:
    """Run ``code`` with this interpreter; its output, once it has exited 0."""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def run_python_json(code: str) -> Any:
    """Run ``code`` (it prints one JSON document); what it printed."""
    return json.loads(run_python(code))
