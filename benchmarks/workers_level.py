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

Goal (issue 16): the top level costs at most 2x level 1 (medians), for the
record after an apply and after a rollback, and for the apply and the
rollback through the workers.

``PYTHONPATH=OTHER/CHECKOUT`` runs the same measurement on another hotpatch
(the figures before a change): it uses ``hotpatch.agent.fanout._journal.GroupJournal``
(``take_over``, ``record``), the control socket and the public API.

Usage: ``python benchmarks/workers_level.py [--quick] [--levels 1,100,1000] [--json PATH]``.
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

from _common import PY, RESULTS, median, p99, print_table, stacked_module, stacked_patch, write_json

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


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"benchmarks/{NAME}.py", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="tiny levels: checks it runs")
    parser.add_argument(
        "--levels", default="1,100,1000", help="levels, comma-separated (default: 1,100,1000)"
    )
    parser.add_argument("--reps", type=int, default=60, help="rounds of the journal measure")
    parser.add_argument("--worker-reps", type=int, default=30, help="rounds through the workers")
    parser.add_argument(
        "--json",
        type=Path,
        default=RESULTS / f"{NAME}-{PY}.json",
        metavar="PATH",
        help=f"where the results go (default: benchmarks/results/{NAME}-{PY}.json)",
    )
    return parser.parse_args(argv)


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


def _rounds(parts: Sequence[Owner | Group], reps: int) -> None:
    for _ in range(3):  # warm up: imports, first-time caches, the verifier
        for part in parts:
            part.once()
    for _ in range(reps):
        for part in parts:
            for metric, value in part.once().items():
                part.samples[metric].append(value * 1e3)


def measure(levels: list[int], reps: int, worker_reps: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="hotpatch-workers-levels-") as tmp:
        root = Path(tmp)
        sys.path.insert(0, tmp)
        owners: list[Owner] = []
        groups: list[Group] = []
        try:
            for level in levels:
                owners.append(Owner(root, level))
                print(f"built level {level} (journal)", flush=True)
            _rounds(owners, reps)
            journal = [
                _row(o.samples, level, reps) for level, o in zip(levels, owners, strict=True)
            ]
            for owner, row in zip(owners, journal, strict=True):
                row["journal_bytes"] = owner.journal.stat().st_size
                owner.registry.rollback(to="1.0")
            modules = root / "modules"
            modules.mkdir()
            for level in levels:
                groups.append(Group(root, level, modules))
                print(f"built level {level} (two workers)", flush=True)
            for group in groups:
                if group.check_level() != group.level:
                    msg = f"the workers came up at another level than {group.level}"
                    raise RuntimeError(msg)
            _rounds(groups, worker_reps)
            for group in groups:  # each apply was rolled back, in every worker
                if group.check_level() != group.level:
                    msg = f"the workers left level {group.level} after the rounds"
                    raise RuntimeError(msg)
            workers = [
                _row(g.samples, level, worker_reps) for level, g in zip(levels, groups, strict=True)
            ]
        finally:
            for group in groups:
                group.stop()
            sys.path.remove(tmp)
            for owner in owners:
                sys.modules.pop(owner.module, None)
    return {"journal": journal, "workers": workers, "goals": _goals(journal, workers)}


def _row(samples: dict[str, list[float]], level: int, reps: int) -> dict[str, Any]:
    row: dict[str, Any] = {"level": level, "samples": reps}
    for metric, values in samples.items():
        row[metric.replace(" ", "_") + "_ms"] = {"median": median(values), "p99": p99(values)}
    return row


def _goals(journal: list[dict[str, Any]], workers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    goals = []
    for rows, metrics, what in (
        (journal, ("record_apply", "record_rollback"), "the group journal's record"),
        (journal, ("cpu_apply", "cpu_rollback"), "the group journal's record, CPU time"),
        (workers, ("apply", "rollback"), "through two workers"),
    ):
        first, top = rows[0], rows[-1]
        for metric in metrics:
            ratio = top[f"{metric}_ms"]["median"] / first[f"{metric}_ms"]["median"]
            name = metric.replace("_", " ").removeprefix("cpu ")
            goals.append(
                {
                    "what": f"{what}: {name} at level {top['level']} / level {first['level']}",
                    "limit": FLAT,
                    "value": ratio,
                    "met": ratio <= FLAT,
                }
            )
    return goals


def report(results: dict[str, Any]) -> None:
    version = sys.version.split()[0]
    print_table(
        f"the group journal's record, by the owner (Python {version}; ms: median, p99)",
        ["level", "after apply", "p99", "after rollback", "p99", "CPU apply", "rollback", "KiB"],
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
    print_table(
        f"apply and rollback through two real workers (Python {version}; ms: median, p99)",
        ["level", "apply", "p99", "rollback", "p99"],
        [
            [
                r["level"],
                r["apply_ms"]["median"],
                r["apply_ms"]["p99"],
                r["rollback_ms"]["median"],
                r["rollback_ms"]["p99"],
            ]
            for r in results["workers"]
        ],
    )
    print()
    for goal in results["goals"]:
        print(
            f"goal: {goal['what']} <= {goal['limit']:g}: {goal['value']:.2f}, "
            f"{'met' if goal['met'] else 'MISSED'}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    logging.getLogger("hotpatch").setLevel(logging.WARNING)
    if args.quick:
        levels, reps, worker_reps = [1, 30], 4, 3
    else:
        levels = sorted(int(v) for v in args.levels.split(","))
        reps, worker_reps = args.reps, args.worker_reps
    results = measure(levels, reps, worker_reps)
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
            "hotpatch": where,
            **results,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
