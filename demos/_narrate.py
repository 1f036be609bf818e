"""What every demo shares: time-stamped narration, checks, and the real ``hotpatch`` CLI."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

T0 = time.perf_counter()  # the demo's start
WALL0 = time.time()  # the same instant, on the wall clock
aliases: dict[str, str] = {}  # long temporary paths, shown by a short name
_print_lock = threading.Lock()


class DemoFailed(Exception):
    """Something the demo shows did not hold."""


def now() -> float:
    """Seconds since the demo started."""
    return time.perf_counter() - T0


def say(text: str) -> None:
    """Print ``text`` stamped with the time since the demo started."""
    stamp = f"[+{now():6.3f}s] "
    for path, alias in aliases.items():
        text = text.replace(path, alias)
    body = text.replace("\n", "\n" + " " * len(stamp))
    with _print_lock:
        print(stamp + body, flush=True)


def check(condition: bool, what: str) -> None:
    if not condition:
        raise DemoFailed(what)


def wrap(text: str, indent: str = "    ") -> str:
    return textwrap.fill(text, width=96, initial_indent=indent, subsequent_indent=indent)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def hotpatch_cli(*args: str, timeout: float = 30.0) -> str:
    """Run the real ``hotpatch`` command, as an operator would; its output."""
    run = subprocess.run(
        [sys.executable, "-m", "hotpatch", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    check(run.returncode == 0, f"hotpatch {' '.join(args)} exited {run.returncode}: {run.stderr}")
    return run.stdout.rstrip()
