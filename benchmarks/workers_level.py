"""Pre-fork workers at stacked levels: the group's journal and a drop through real workers.

``install(workers=True)``: the worker that owns the folder records the group's
level in ``DIR/.workers/journal.json`` after every drop, rollback or undo. Two
measurements, each at levels 1, 100 and 1,000 (by default), in rounds (every
level once in each round, so that the machine's moods fall on all alike):

- **journal**: in this process, what the owner's record costs
  (``GroupJournal.record``) after an apply and after a rollback, on a real
  registry at that level (a module of 10 functions, each patch replacing all
  10, loaded from its file) and a real journal file. The journal is first
  written at the level (the owner taking the folder over); then each round
  applies the next patch, records it (timed), rolls it back and records that
  (timed): wall clock, and this process's CPU time (the record's own work,
  without the wait for the disk's sync, which varies with the machine's load).
- **workers**: two real worker processes (``hotpatch.install(..., workers=True)``)
  share a folder whose journal holds the level; the first replays it, the
  second copies the level from the first. Each round sends ``apply`` with the
  next patch file to the owner's socket (verified, applied in both workers,
  recorded) and then ``rollback``: the time until each answer came back.
- **run**: ``hotpatch run --workers 2 --watch DIR`` (the supervisor and two
  serving processes, each replaying its own journal at the level; ``--settle
  0``: the rollout's health check follows each batch at once). Each round
  sends ``apply`` with the next patch file to the folder's socket (verified in
  the supervisor, applied in one worker then the other, each health-checked)
  and then ``rollback`` (asked of both workers): the time until each answer.
- **agent**: one agent alone on its folder (``hotpatch.install``, its
  journal at the level, its control socket on: after each apply it files a
  result and asks its own socket, the vital check). Each round sends
  ``apply`` and ``rollback`` to its socket.

Goal (issue 16): the top level costs at most 2x level 1 (medians), for the
record after an apply and after a rollback, and for the apply and the
rollback through the workers, through ``hotpatch run --workers 2`` and
through one agent.

``PYTHONPATH=OTHER/CHECKOUT`` runs the same measurement on another hotpatch
(the figures before a change): it uses ``hotpatch.agent.fanout._journal.GroupJournal``
(``take_over``, ``record``), the control socket and the public API.

Usage: ``python benchmarks/workers_level.py [--quick] [--levels 1,100,1000]
[--parts journal,workers,run,agent] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
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

from _common import (
    arguments,
    median,
    p99,
    print_table,
    stacked_module,
    stacked_patch,
    value_goal_line,
    write_json,
)

NAME = "workers_level"
TARGETS = 10
MODULE = "bench_workers_target"
FLAT = 2.0

WORKER = """\
import os, sys
sys.path.insert(0, sys.argv[2])
import {module}
import hotpatch
agent = hotpatch.install("1.0", watch=sys.argv[1], workers=True, entry_points=False)
print("ready", os.getpid(), flush=True)
sys.stdin.read()
agent.stop()
"""

SERVICE = """\
import sys, threading
sys.path.insert(0, {modules!r})
import {module}
import hotpatch
hotpatch.ready()
threading.Event().wait()
"""

SOLO = """\
import os, sys
sys.path.insert(0, sys.argv[2])
import {module}
import hotpatch
agent = hotpatch.install("1.0", watch=sys.argv[1], journal=sys.argv[3], entry_points=False)
print("ready", os.getpid(), flush=True)
sys.stdin.read()
agent.stop()
"""

PARTS = ("journal", "workers", "run", "agent")


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = arguments(NAME, __doc__, quick="tiny levels: checks it runs")
    parser.add_argument(
        "--levels", default="1,100,1000", help="levels, comma-separated (default: 1,100,1000)"
    )
    parser.add_argument("--reps", type=int, default=60, help="rounds of the journal measure")
    parser.add_argument("--worker-reps", type=int, default=30, help="rounds through the workers")
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"what to measure, comma-separated (default: {','.join(PARTS)})",
    )
    args = parser.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        parser.error(f"--parts: no such part {', '.join(unknown)} (one of {', '.join(PARTS)})")
    return args


class Patches:
    """The patch files of one module: ``path(n)`` is version 1.0.n, written once."""

    def __init__(self, root: Path, module: str) -> None:
        self.folder = root / f"patches-{module}"
        self.folder.mkdir()
        self.module = module

    def path(self, n: int) -> Path:
        path = self.folder / f"p{n}.py"
        if not path.exists():
            path.write_text(stacked_patch(self.module, n, TARGETS))
        return path


def write_journal(path: Path, patches: Patches, level: int) -> None:
    """A journal at ``level`` (patches 1.0.1 ... 1.0.level), written whole."""
    from hotpatch._journal import Journal, JournalEntry, JournalState

    entries = []
    for n in range(1, level + 1):
        text = patches.path(n).read_text()
        sha = hashlib.sha256(text.encode()).hexdigest()
        entries.append(JournalEntry(f"1.0.{n}", sha, str(patches.path(n)), text, f"level {n}"))
    Journal(path).write(JournalState("1.0", entries))


class Owner:
    """The owner's side at one level: a registry (no journal of its own) and the group's."""

    def __init__(self, root: Path, level: int) -> None:
        import hotpatch
        from hotpatch.agent.fanout._journal import GroupJournal

        self.module = f"{MODULE}_{level}"
        (root / f"{self.module}.py").write_text(stacked_module(TARGETS))
        importlib.invalidate_caches()
        importlib.import_module(self.module)
        self.patches = Patches(root, self.module)
        self.registry = hotpatch.Registry("1.0")
        for n in range(1, level + 1):
            self.registry.apply(hotpatch.load_patch(self.patches.path(n)))
        self.next = level + 1
        self.journal = root / f"workers-{level}" / ".workers" / "journal.json"
        self.journal.parent.mkdir(parents=True)
        write_journal(self.journal, self.patches, level)
        self.group = GroupJournal(self.journal, "1.0")
        self.group.take_over(self.registry, "bench (took the folder)")  # reads it: the same level
        self.samples: dict[str, list[float]] = {
            m: [] for m in ("record apply", "record rollback", "cpu apply", "cpu rollback")
        }

    def once(self) -> dict[str, float]:
        import hotpatch

        patch = hotpatch.load_patch(self.patches.path(self.next))
        applied = self.registry.apply(patch)
        start, cpu_start = time.perf_counter(), time.process_time()
        self.group.record(self.registry, "apply", applied.version, "bench")
        middle, cpu_middle = time.perf_counter(), time.process_time()
        self.registry.rollback()
        rolled, cpu_rolled = time.perf_counter(), time.process_time()
        self.group.record(self.registry, "rollback", applied.version, "bench")
        end, cpu_end = time.perf_counter(), time.process_time()
        self.next += 1
        return {
            "record apply": middle - start,
            "record rollback": end - rolled,
            "cpu apply": cpu_middle - cpu_start,
            "cpu rollback": cpu_end - cpu_rolled,
        }


class Group:
    """Two real worker processes sharing a folder whose journal holds ``level`` patches."""

    def __init__(self, root: Path, level: int, modules: Path) -> None:
        self.module = f"{MODULE}_w{level}"
        (modules / f"{self.module}.py").write_text(stacked_module(TARGETS))
        self.patches = Patches(root, self.module)
        self.folder = root / f"group-{level}"
        (self.folder / ".workers").mkdir(parents=True, mode=0o700)
        self.folder.chmod(0o700)
        write_journal(self.folder / ".workers" / "journal.json", self.patches, level)
        script = root / f"worker-{self.module}.py"
        script.write_text(WORKER.format(module=self.module))
        self.procs: list[subprocess.Popen[str]] = []
        self.log = root / f"workers-{self.module}.log"  # their log lines, not this output's
        for _ in range(2):
            with self.log.open("a") as log:
                proc = subprocess.Popen(
                    [sys.executable, str(script), str(self.folder), str(modules)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    text=True,
                    start_new_session=True,
                )
            self.procs.append(proc)
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line.startswith("ready"):
                msg = (
                    f"a worker at level {level} did not start (exit {proc.poll()}):\n"
                    + self.log.read_text()[-3000:]
                )
                raise RuntimeError(msg)
        self.owner = json.loads((self.folder / ".hotpatch.json").read_text())["socket"]
        self.next = level + 1
        self.level = level
        self.samples: dict[str, list[float]] = {"apply": [], "rollback": []}

    def once(self) -> dict[str, float]:
        from hotpatch.agent._control import request

        path = self.patches.path(self.next)
        start = time.perf_counter()
        applied = request(self.owner, {"cmd": "apply", "path": str(path)}, timeout=600)
        middle = time.perf_counter()
        rolled = request(self.owner, {"cmd": "rollback"}, timeout=600)
        end = time.perf_counter()
        if not applied.get("ok") or not rolled.get("ok"):
            msg = f"level {self.level}: apply {applied} / rollback {rolled}"
            raise RuntimeError(msg)
        self.next += 1
        return {"apply": middle - start, "rollback": end - middle}

    def check_level(self) -> int:
        """The level every worker runs (``RuntimeError`` if two of them differ)."""
        from hotpatch.agent._control import request

        status = request(self.owner, {"cmd": "status"}, timeout=60)
        levels = {len(w["level"]) for w in status["workers"]}
        if len(status["workers"]) != len(self.procs) or levels != {len(status["level"])}:
            msg = f"level {self.level}: the workers run other levels: {status['workers']}"
            raise RuntimeError(msg)
        return len(status["level"])

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()


class Run:
    """``hotpatch run --workers 2 --watch DIR``: each worker's journal holds ``level`` patches."""

    def __init__(self, root: Path, level: int, modules: Path) -> None:
        self.module = f"{MODULE}_r{level}"
        (modules / f"{self.module}.py").write_text(stacked_module(TARGETS))
        self.patches = Patches(root, self.module)
        self.folder = root / f"run-{level}"
        self.folder.mkdir(mode=0o700)
        for index in range(2):  # each worker replays its own journal (.journal.workerN.json)
            write_journal(self.folder / f".journal.worker{index}.json", self.patches, level)
        service = root / f"service-{self.module}.py"
        service.write_text(SERVICE.format(modules=str(modules), module=self.module))
        self.log = root / f"run-{self.module}.log"  # the supervisor's log, not this output's
        command = [
            *(sys.executable, "-m", "hotpatch.supervisor", "run", "--workers", "2"),
            *("--settle", "0", "--watch", str(self.folder), "--baseline", "1.0"),
            *("--allow-unsigned", "--", sys.executable, str(service)),
        ]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.socket = self.folder / ".hotpatch.sock"
        self.level = level
        self.next = level + 1
        self.samples: dict[str, list[float]] = {"apply": [], "rollback": []}
        self._wait_serving()

    def _wait_serving(self) -> None:
        from hotpatch.agent._control import request

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if self.socket.exists():
                try:
                    status = request(self.socket, {"cmd": "status"}, timeout=60)
                except (OSError, ValueError):
                    status = {}
                workers = status.get("workers") or []
                if len(workers) == 2 and all(w.get("pid") and w.get("level") for w in workers):
                    return
            time.sleep(0.1)
        msg = (
            f"hotpatch run --workers 2 at level {self.level} did not serve (exit "
            f"{self.proc.poll()}):\n" + self.log.read_text(errors="replace")[-3000:]
        )
        raise RuntimeError(msg)

    def once(self) -> dict[str, float]:
        timings = apply_and_roll_back(
            self.socket, self.patches.path(self.next), f"hotpatch run at level {self.level}"
        )
        self.next += 1
        return timings

    def check_level(self) -> int:
        """The level both workers run (``RuntimeError`` if they differ)."""
        from hotpatch.agent._control import request

        status = request(self.socket, {"cmd": "status"}, timeout=60)
        levels = {len(w["level"]) for w in status["workers"]}
        if len(status["workers"]) != 2 or len(levels) != 1:
            msg = f"level {self.level}: the workers run other levels: {status['workers']}"
            raise RuntimeError(msg)
        return levels.pop()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # its workers end with it
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def apply_and_roll_back(socket: str | Path, path: Path, what: str) -> dict[str, float]:
    """Apply the patch at ``path`` through the control socket, then roll it back: the time
    of each (``RuntimeError`` naming ``what`` if either fails)."""
    from hotpatch.agent._control import request

    start = time.perf_counter()
    applied = request(socket, {"cmd": "apply", "path": str(path)}, timeout=600)
    middle = time.perf_counter()
    rolled = request(socket, {"cmd": "rollback"}, timeout=600)
    end = time.perf_counter()
    if applied.get("outcome") != "applied" or not rolled.get("ok"):
        msg = f"{what}: apply {applied} / rollback {rolled}"
        raise RuntimeError(msg)
    return {"apply": middle - start, "rollback": end - middle}


class Solo:
    """One agent alone on its folder, its journal at ``level``, its control socket on."""

    def __init__(self, root: Path, level: int, modules: Path) -> None:
        self.module = f"{MODULE}_s{level}"
        (modules / f"{self.module}.py").write_text(stacked_module(TARGETS))
        self.patches = Patches(root, self.module)
        self.folder = root / f"solo-{level}"
        self.folder.mkdir(mode=0o700)
        journal = root / f"solo-{level}.journal.json"
        write_journal(journal, self.patches, level)
        script = root / f"solo-{self.module}.py"
        script.write_text(SOLO.format(module=self.module))
        self.log = root / f"solo-{self.module}.log"
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(script), str(self.folder), str(modules), str(journal)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                start_new_session=True,
            )
        assert self.proc.stdout is not None
        if not self.proc.stdout.readline().startswith("ready"):
            msg = (
                f"the agent at level {level} did not start (exit {self.proc.poll()}):\n"
                + self.log.read_text()[-3000:]
            )
            raise RuntimeError(msg)
        self.socket = json.loads((self.folder / ".hotpatch.json").read_text())["socket"]
        self.level = level
        self.next = level + 1
        self.samples: dict[str, list[float]] = {"apply": [], "rollback": []}

    def once(self) -> dict[str, float]:
        timings = apply_and_roll_back(
            self.socket, self.patches.path(self.next), f"the agent at level {self.level}"
        )
        self.next += 1
        return timings

    def check_level(self) -> int:
        from hotpatch.agent._control import request

        return len(request(self.socket, {"cmd": "status"}, timeout=60)["level"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


Part = Owner | Group | Run | Solo


def _rounds(parts: Sequence[Part], reps: int) -> None:
    for _ in range(3):  # warm up: imports, first-time caches, the verifier
        for part in parts:
            part.once()
    for _ in range(reps):
        for part in parts:
            for metric, value in part.once().items():
                part.samples[metric].append(value * 1e3)


def _processes(
    kind: type[Group | Run | Solo], root: Path, levels: list[int], reps: int, what: str
) -> list[dict[str, Any]]:
    """Rounds through ``kind``'s processes at each level, checked at their level before and
    after (each apply was rolled back). A level at which they do not start is reported as
    such (``error``), and measured no further."""
    modules = root / "modules"
    modules.mkdir(exist_ok=True)
    parts: list[Group | Run | Solo] = []
    failed: dict[int, str] = {}
    try:
        for level in levels:
            try:
                parts.append(kind(root, level, modules))
            except RuntimeError as exc:
                failed[level] = str(exc)
                print(f"level {level} ({what}) did not start: {_last_error(str(exc))}", flush=True)
                continue
            print(f"built level {level} ({what})", flush=True)
        for part in parts:
            if part.check_level() != part.level:
                msg = f"{what} came up at another level than {part.level}"
                raise RuntimeError(msg)
        _rounds(parts, reps)
        for part in parts:
            if part.check_level() != part.level:
                msg = f"{what} left level {part.level} after the rounds"
                raise RuntimeError(msg)
        rows = {p.level: _row(p.samples, p.level, reps) for p in parts}
        for level, error in failed.items():
            rows[level] = {"level": level, "samples": 0, "error": _last_error(error)}
        return [rows[level] for level in levels]
    finally:
        for part in parts:
            part.stop()


def _last_error(text: str) -> str:
    """Why processes did not start: the first warning of their log and its last error."""
    warnings = [line for line in text.splitlines() if " WARNING " in line]
    errors = [line for line in text.splitlines() if " ERROR " in line]
    said = [line.split(" ", 4)[-1] for line in [*warnings[:1], *errors[-1:]]]
    return " / ".join(said) or text.splitlines()[0]


def measure(levels: list[int], reps: int, worker_reps: int, parts: Sequence[str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="hotpatch-workers-levels-") as tmp:
        root = Path(tmp)
        if "journal" in parts:
            results["journal"] = _journal(root, levels, reps)
        for part, kind, what in (
            ("workers", Group, "two workers"),
            ("run", Run, "hotpatch run --workers 2"),
            ("agent", Solo, "one agent"),
        ):
            if part in parts:
                results[part] = _processes(kind, root, levels, worker_reps, what)
    return {**results, "goals": _goals(results)}


def _journal(root: Path, levels: list[int], reps: int) -> list[dict[str, Any]]:
    sys.path.insert(0, str(root))
    owners: list[Owner] = []
    try:
        for level in levels:
            owners.append(Owner(root, level))
            print(f"built level {level} (journal)", flush=True)
        _rounds(owners, reps)
        journal = [_row(o.samples, level, reps) for level, o in zip(levels, owners, strict=True)]
        for owner, row in zip(owners, journal, strict=True):
            row["journal_bytes"] = owner.journal.stat().st_size
            owner.registry.rollback(to="1.0")
    finally:
        sys.path.remove(str(root))
        for owner in owners:
            sys.modules.pop(owner.module, None)
    return journal


def _row(samples: dict[str, list[float]], level: int, reps: int) -> dict[str, Any]:
    row: dict[str, Any] = {"level": level, "samples": reps}
    for metric, values in samples.items():
        row[metric.replace(" ", "_") + "_ms"] = {"median": median(values), "p99": p99(values)}
    return row


def _goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    goals = []
    for part, metrics, what in (
        ("journal", ("record_apply", "record_rollback"), "the group journal's record"),
        ("journal", ("cpu_apply", "cpu_rollback"), "the group journal's record, CPU time"),
        ("workers", ("apply", "rollback"), "through two workers"),
        ("run", ("apply", "rollback"), "through hotpatch run --workers 2"),
        ("agent", ("apply", "rollback"), "through one agent (vital check on)"),
    ):
        rows = results.get(part)
        if not rows:
            continue
        first, top = rows[0], rows[-1]
        for metric in metrics:
            name = metric.replace("_", " ").removeprefix("cpu ")
            ratio = None
            if "error" not in top and "error" not in first:
                ratio = top[f"{metric}_ms"]["median"] / first[f"{metric}_ms"]["median"]
            goals.append(
                {
                    "what": f"{what}: {name} at level {top['level']} / level {first['level']}",
                    "limit": FLAT,
                    "value": ratio,  # None: a level did not start
                    "met": ratio is not None and ratio <= FLAT,
                }
            )
    return goals


def report(results: dict[str, Any]) -> None:
    version = sys.version.split()[0]
    if "journal" in results:
        print_table(
            f"the group journal's record, by the owner (Python {version}; ms: median, p99)",
            [
                "level",
                "after apply",
                "p99",
                "after rollback",
                "p99",
                "CPU apply",
                "rollback",
                "KiB",
            ],
            [
                [
                    r["level"],
                    r["record_apply_ms"]["median"],
                    r["record_apply_ms"]["p99"],
                    r["record_rollback_ms"]["median"],
                    r["record_rollback_ms"]["p99"],
                    r["cpu_apply_ms"]["median"],
                    r["cpu_rollback_ms"]["median"],
                    r["journal_bytes"] / 1024,
                ]
                for r in results["journal"]
            ],
        )
    for part, title in (
        ("workers", "apply and rollback through two real workers"),
        ("run", "apply and rollback through hotpatch run --workers 2"),
        ("agent", "apply and rollback through one agent, vital check on"),
    ):
        if part not in results:
            continue
        print_table(
            f"{title} (Python {version}; ms: median, p99)",
            ["level", "apply", "p99", "rollback", "p99"],
            [
                [
                    r["level"],
                    r["apply_ms"]["median"],
                    r["apply_ms"]["p99"],
                    r["rollback_ms"]["median"],
                    r["rollback_ms"]["p99"],
                ]
                if "error" not in r
                else [r["level"], "did not start", "-", "-", "-"]
                for r in results[part]
            ],
        )
        for r in results[part]:
            if "error" in r:
                print(f"level {r['level']} did not start: {r['error']}")
    print()
    for goal in results["goals"]:
        print(value_goal_line(goal))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    logging.getLogger("hotpatch").setLevel(logging.WARNING)
    if args.quick:
        levels, reps, worker_reps = [1, 30], 4, 3
    else:
        levels = sorted(int(v) for v in args.levels.split(","))
        reps, worker_reps = args.reps, args.worker_reps
    parts = args.parts
    results = measure(levels, reps, worker_reps, parts)
    report(results)
    import hotpatch

    where = str(Path(hotpatch.__file__).resolve().parent.parent)
    write_json(
        args.json,
        NAME,
        args.quick,
        {
            "levels": levels,
            "repetitions": reps,
            "worker_repetitions": worker_reps,
            "parts": parts,
            "hotpatch": where,
            **results,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
