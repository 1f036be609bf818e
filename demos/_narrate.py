"""What every demo shares: narration, checks, dropping files, outcomes, and the real CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

T0 = time.perf_counter()  # the demo's start
WALL0 = time.time()  # the same instant, on the wall clock
aliases: dict[str, str] = {}  # long temporary paths, shown by a short name
_print_lock = threading.Lock()
TIMEOUT_S = 30.0  # for any one step of a demo
OUTCOME_DIRS = ("applied", "rejected", "pending")


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


def wait_until(condition: Callable[[], Any], what: str, timeout: float = TIMEOUT_S) -> Any:
    """Poll ``condition`` until it returns something true; that value."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if value := condition():
            return value
        time.sleep(0.02)
    raise DemoFailed(f"{what}: not within {timeout:.0f} s")


def drop(files: Iterable[Path], folder: Path) -> float:
    """Drop ``files`` in order the documented way: copied under a temporary ``*.tmp`` name
    (ignored by the watcher), then renamed in; the demo time of the last rename."""
    dropped = 0.0
    for path in files:
        temporary = folder / f"{path.name}.tmp"
        temporary.write_bytes(path.read_bytes())
        dropped = now()
        os.rename(temporary, folder / path.name)
    return dropped


def wait_outcome(folder: Path, name: str, timeout: float = TIMEOUT_S) -> dict[str, Any]:
    """The drop's ``NAME.result.json`` (with ``folder``: where it was filed), once the
    drop has moved beside it: the result is written completely before the move."""

    def found() -> dict[str, Any] | None:
        for where in OUTCOME_DIRS:
            result = folder / where / f"{name}.result.json"
            if result.exists() and (folder / where / name).exists():
                record: dict[str, Any] = json.loads(result.read_text())
                record["folder"] = where
                return record
        return None

    record: dict[str, Any] = wait_until(found, f"an outcome for {name}", timeout)
    return record


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file the supervisor writes atomically; ``{}`` until it exists."""
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data


TIMING_NAMES = {
    "read_s": "read",
    "signature_s": "signature checked",
    "verify_s": "verified in a child",
    "load_s": "loaded",
    "apply_s": "switched",
    "total_s": "total",
    "service_load_s": "loaded in the service",
    "service_apply_s": "switched",
    "service_total_s": "in the service",
}


def show_timings(timings: dict[str, float]) -> str:
    """An outcome file's timings, named for a reader."""
    return ", ".join(f"{TIMING_NAMES.get(k, k)} {ms(v)}" for k, v in timings.items())


def stop_process(process: subprocess.Popen[str], relay: threading.Thread) -> int:
    """SIGTERM (a service or supervisor shuts down cleanly), then its exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        code = process.wait()
    relay.join(TIMEOUT_S)
    return code


class Timed(Protocol):
    """An answer the load recorded: when its request started and ended (demo time)."""

    @property
    def started(self) -> float: ...

    @property
    def ended(self) -> float: ...


A = TypeVar("A", bound=Timed)


class Load(Generic[A]):
    """Client threads sending requests continuously, a new connection each, every answer
    (or failure) recorded in ``answers``; a demo says what one request is (``_one``)."""

    gap_s = 0.002  # each thread's pause between requests: steady, not flat out

    def __init__(self, port: int, threads: int) -> None:
        self.port = port
        self.answers: list[A] = []  # list.append is atomic: no lock needed
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), name=f"load-{i}", daemon=True)
            for i in range(threads)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(TIMEOUT_S)

    def _run(self, turn: int) -> None:
        while not self._stop.is_set():
            self.answers.append(self._one(turn))  # never raises: failures are answers too
            turn += 1
            time.sleep(self.gap_s)  # the machine is shared

    def _one(self, turn: int) -> A:
        """Send this thread's ``turn``-th request; its answer, or the failure, recorded."""
        raise NotImplementedError

    def between(self, start: float, end: float = float("inf")) -> list[A]:
        """Answers to requests started after ``start`` and ended before ``end``."""
        return [a for a in list(self.answers) if a.started >= start and a.ended <= end]

    def wait_for(self, count: int, after: float) -> list[A]:
        """Wait until ``count`` requests started after ``after`` have been answered."""
        answers: list[A] = wait_until(
            lambda: len(a := self.between(after)) >= count and a,
            f"{count} answers from the load",
        )
        return answers
