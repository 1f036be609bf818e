"""The status file under ``hotpatch run --workers 2``: what each change costs at a level.

``hotpatch run --status-file PATH`` rewrites the file on every change: each
worker's level reported, each step of a rollout. A real ``hotpatch run
--workers 2 --watch DIR --status-file PATH`` (its two workers each replaying
a journal at the level, ``--settle 0``) runs at levels 1, 100 and 1,000 (by
default); each round sends ``apply`` with the next patch file to the folder's
socket and then ``rollback`` (as ``workers_level.py --parts run``). The
supervisor runs with its ``Fleet.write_status`` timed (wall clock and the
thread's CPU time of each call: the status gathered, written and put in
place, on the supervisor's event loop), and the file's size is read after
the rounds. Only the writes of the measured rounds count. The thread's CPU
time is the write's own cost; the wall clock also holds the waits for the
machine (its load) and for the supervisor's other threads (the interpreter
lock).

Goal (issue 16): a change costs the same at any level: the median write at
level 1,000 at most 2x the one at level 1 (CPU time, and wall clock).

``--before PATH`` runs the same rounds, interleaved, with another hotpatch
checkout (e.g. ``git archive main | tar -x -C PATH``): the figures before a
change.

Usage: ``python benchmarks/status_file.py [--quick] [--levels 1,100,1000]
[--reps 20] [--before PATH] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import arguments, median, p99, print_table, stacked_module, value_goal_line, write_json
from workers_level import SERVICE, TARGETS, Patches, apply_and_roll_back, write_journal

NAME = "status_file"
MODULE = "bench_status_target"
FLAT = 2.0
HERE = Path(__file__).resolve().parent.parent

# The supervisor, with the fleet's status write timed; the costs go to argv[1] at exit.
TIMED = """\
import json, sys, time
from hotpatch.supervisor import main
from hotpatch.supervisor._workers import Fleet

costs = []
plain = Fleet.write_status

def write_status(self):
    wall, cpu = time.perf_counter(), time.thread_time()
    plain(self)
    costs.append((time.time(), time.perf_counter() - wall, time.thread_time() - cpu))

Fleet.write_status = write_status
try:
    code = main(sys.argv[2:])
finally:
    with open(sys.argv[1], "w") as out:
        json.dump(costs, out)
sys.exit(code)
"""


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = arguments(NAME, __doc__, quick="tiny levels: checks it runs")
    parser.add_argument(
        "--levels", default="1,100,1000", help="levels, comma-separated (default: 1,100,1000)"
    )
    parser.add_argument("--reps", type=int, default=20, help="apply+rollback rounds per level")
    parser.add_argument("--before", type=Path, metavar="PATH", help="another hotpatch checkout")
    return parser.parse_args(argv)


class TimedRun:
    """``hotpatch run --workers 2 --watch DIR --status-file`` of one checkout at ``level``."""

    def __init__(self, root: Path, level: int, checkout: str, hotpatch: Path) -> None:
        self.level, self.checkout = level, checkout
        tag = f"{checkout}{level}"
        modules = root / f"modules-{tag}"
        modules.mkdir()
        self.module = f"{MODULE}_{tag}"
        (modules / f"{self.module}.py").write_text(stacked_module(TARGETS))
        self.patches = Patches(root, self.module)
        self.folder = root / f"run-{tag}"
        self.folder.mkdir(mode=0o700)
        for index in range(2):
            write_journal(self.folder / f".journal.worker{index}.json", self.patches, level)
        service = root / f"service-{tag}.py"
        service.write_text(SERVICE.format(modules=str(modules), module=self.module))
        self.status_file = root / f"status-{tag}.json"
        self.costs_file = root / f"costs-{tag}.json"
        self.log = root / f"run-{tag}.log"
        command = [
            *(sys.executable, "-c", TIMED, str(self.costs_file), "run", "--workers", "2"),
            *("--settle", "0", "--watch", str(self.folder), "--baseline", "1.0"),
            *("--status-file", str(self.status_file)),
            *("--allow-unsigned", "--", sys.executable, str(service)),
        ]
        env = {**os.environ, "PYTHONPATH": str(hotpatch)}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=root,  # the checkout on PYTHONPATH, not one in the working directory
                env=env,
            )
        self.socket = self.folder / ".hotpatch.sock"
        self.next = level + 1
        self.windows: list[tuple[float, float]] = []  # the measured rounds, by the clock
        self.file_bytes: int | None = None  # the status file's size after the rounds
        self._wait_serving()

    def _wait_serving(self) -> None:
        from hotpatch.agent._control import request

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and self.proc.poll() is None:
            if self.socket.exists():
                try:
                    status = request(self.socket, {"cmd": "status"}, timeout=60)
                except (OSError, ValueError):
                    status = {}
                workers = status.get("workers") or []
                if len(workers) == 2 and all(
                    w.get("pid") and len(w.get("level") or []) == self.level for w in workers
                ):
                    return
            time.sleep(0.1)
        msg = (
            f"{self.checkout} at level {self.level} did not serve:\n"
            + self.log.read_text(errors="replace")[-3000:]
        )
        raise RuntimeError(msg)

    def once(self, *, measured: bool) -> None:
        start = time.time()
        apply_and_roll_back(
            self.socket, self.patches.path(self.next), f"{self.checkout} at level {self.level}"
        )
        self.next += 1
        if measured:
            self.windows.append((start, time.time()))

    def stop(self) -> list[tuple[float, float, float]]:
        """Stop it; the timed writes of the measured rounds: (time, wall, CPU)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        costs = json.loads(self.costs_file.read_text()) if self.costs_file.exists() else []
        return [
            (t, wall, cpu)
            for t, wall, cpu in costs
            if any(start <= t <= end for start, end in self.windows)
        ]


def _row(run: TimedRun, costs: list[tuple[float, float, float]], reps: int) -> dict[str, Any]:
    walls = [c[1] * 1e3 for c in costs]
    cpus = [c[2] * 1e3 for c in costs]
    return {
        "checkout": run.checkout,
        "level": run.level,
        "rounds": reps,
        "writes": len(costs),
        "write_ms": {"median": median(walls), "p99": p99(walls)},
        "write_cpu_ms": {"median": median(cpus), "p99": p99(cpus)},
        "per_round_ms": sum(walls) / reps,
        "file_bytes": run.file_bytes,
    }


def measure(levels: list[int], reps: int, checkouts: dict[str, Path]) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="hotpatch-status-file-") as tmp:
        root = Path(tmp)
        for level in levels:
            runs: list[TimedRun] = []
            try:
                for checkout, path in checkouts.items():
                    runs.append(TimedRun(root, level, checkout, path))
                print(f"built level {level} ({', '.join(checkouts)})", flush=True)
                for _ in range(2):  # warm up: imports, the verifier
                    for run in runs:
                        run.once(measured=False)
                for _ in range(reps):
                    for run in runs:
                        run.once(measured=True)
                for run in runs:  # as the service runs (stopped, it shows no level)
                    run.file_bytes = run.status_file.stat().st_size
            finally:
                measured = [(run, run.stop()) for run in runs]
            rows.extend(_row(run, costs, reps) for run, costs in measured)
    return rows


def _goals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    goals = []
    for checkout in dict.fromkeys(r["checkout"] for r in rows):
        mine = sorted((r for r in rows if r["checkout"] == checkout), key=lambda r: r["level"])
        low, high = mine[0], mine[-1]
        for metric in ("write_ms", "write_cpu_ms"):
            ratio = high[metric]["median"] / low[metric]["median"]
            goals.append(
                {
                    "checkout": checkout,
                    "what": f"{metric} median, level {high['level']} / level {low['level']}",
                    "value": ratio,
                    "limit": FLAT,
                    "met": ratio <= FLAT,
                }
            )
    return goals


def report(rows: list[dict[str, Any]], goals: list[dict[str, Any]]) -> None:
    version = sys.version.split()[0]
    print_table(
        f"a status file write under hotpatch run --workers 2 (Python {version}; ms)",
        ["checkout", "level", "writes", "median", "p99", "CPU median", "per round", "KiB"],
        [
            [
                r["checkout"],
                r["level"],
                r["writes"],
                r["write_ms"]["median"],
                r["write_ms"]["p99"],
                r["write_cpu_ms"]["median"],
                r["per_round_ms"],
                (r["file_bytes"] or 0) / 1024,
            ]
            for r in rows
        ],
    )
    print()
    for goal in goals:
        print(value_goal_line(goal, label=f" ({goal['checkout']})"))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    logging.getLogger("hotpatch").setLevel(logging.WARNING)
    levels = [1, 30] if args.quick else sorted(int(v) for v in args.levels.split(","))
    reps = 3 if args.quick else args.reps
    checkouts = {"now": HERE}
    if args.before is not None:
        checkouts["before"] = args.before.resolve()
    rows = measure(levels, reps, checkouts)
    goals = _goals(rows)
    report(rows, goals)
    write_json(
        args.json,
        NAME,
        args.quick,
        {
            "levels": levels,
            "repetitions": reps,
            "checkouts": {k: str(v) for k, v in checkouts.items()},
            "load_average": os.getloadavg()[0],
            "rows": rows,
            "goals": goals,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
