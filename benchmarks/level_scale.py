"""Apply, rollback and the switch as a service runs them: stacked levels, the journal on.

A real module with 10 functions and real patch files, each replacing all 10
(versions 1.0.1, 1.0.2, ... stacking on each other), applied through a
``Registry`` with its journal on, as ``hotpatch run`` and the README's
embedding example run it. Nothing is cleaned up by hand: each patch is loaded
from its file (``hotpatch.load_patch``) and stays referenced by the level,
reference cycles and all.

For each level L (1, 100, 1,000 by default) a registry on a module and a
journal of its own is built up to L. Then, in rounds (each round visits every
level once, so that the disk's and the machine's moods fall on all of them
alike), the next patch is loaded, applied (timed: the whole ``apply()``, and
``ApplyResult.switch_s``, the step during which calls could observe a change)
and rolled back (timed the same way). Reported: median and p99 of each. Then
the switch alone, many times (``--switches`` apply/rollback pairs at each
level, in ``--batches`` rounds): its median, its p99, and the best and worst
batch's p99 (the best batch is what the switch costs when nothing preempts
it; the load average before and after is reported beside them). Then,
with ``tracemalloc`` on, 20 more patches are applied at each level and kept:
the memory each adds (Python allocations still held after a full collection,
divided by 20), and the objects the garbage collector tracks that each adds
(what brings CPython's next full collection nearer). Last, the top level's
journal is read back (``Journal.read``) and replayed by a new process
(``Registry(journal=)``, the whole replay: each patch loaded and applied
again), then by another one (which finds the code the first compiled kept
beside the journal): wall clock and CPU time.

Goals (issue 16): at the top level the apply and the rollback cost at most 2x
what they cost at level 1 (medians); the switch of 10 targets at most 20 us
(median of the many samples, at every level, reported with its p99); the
memory per applied patch flat in the level (top level at most 1.5x level 1);
reading the journal of 1,000 patches at most 100 ms.

``PYTHONPATH=OTHER/CHECKOUT`` runs the same measurement on another hotpatch
(the figures before a change): only the public API is used.

Usage: ``python benchmarks/level_scale.py [--quick] [--levels 1,10,100,1000]
[--switches 600] [--batches 6] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
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

NAME = "level_scale"
TARGETS = 10
MODULE = "bench_level_target"
KEPT = 20  # patches applied with tracemalloc on, at each level
FLAT = 2.0  # apply / rollback at the top level against level 1, at most
SWITCH_GOAL_US = 20.0
MEMORY_FLAT = 1.5
READ_GOAL_MS = 100.0

REPLAY = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import hotpatch, hotpatch._journal
__import__(sys.argv[2])
start = time.perf_counter()
state = hotpatch._journal.Journal(sys.argv[3]).read()
read = time.perf_counter() - start
start, cpu = time.perf_counter(), time.process_time()
registry = hotpatch.Registry("1.0", journal=sys.argv[3])
replay, cpu = time.perf_counter() - start, time.process_time() - cpu
print(json.dumps({"read_s": read, "replay_s": replay, "replay_cpu_s": cpu,
                  "level": len(registry.level), "recorded": len(state.level)}))
"""


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = arguments(NAME, __doc__, quick="tiny levels: checks it runs")
    parser.add_argument(
        "--levels", default="1,100,1000", help="levels, comma-separated (default: 1,100,1000)"
    )
    parser.add_argument("--reps", type=int, default=60, help="repetitions at each level")
    parser.add_argument(
        "--switches",
        type=int,
        default=600,
        help="apply/rollback pairs at each level for the switch's p99 (default: 600)",
    )
    parser.add_argument(
        "--batches", type=int, default=6, help="batches the switch samples come in (default: 6)"
    )
    return parser.parse_args(argv)


class Stack:
    """One registry on its own module and journal, built up patch by patch."""

    def __init__(self, root: Path, name: str):
        import hotpatch

        self.root = root
        self.module = f"{MODULE}_{name}"
        (root / f"{self.module}.py").write_text(stacked_module(TARGETS))
        importlib.invalidate_caches()
        importlib.import_module(self.module)
        self.patches = root / f"patches-{name}"
        self.patches.mkdir()
        self.journal = root / f"journal-{name}.json"
        self.registry = hotpatch.Registry("1.0", journal=self.journal)
        self.next = 1
        self.samples: dict[str, list[float]] = {}

    def write(self, n: int) -> Path:
        path = self.patches / f"p{n}.py"
        if not path.exists():
            path.write_text(stacked_patch(self.module, n, TARGETS))
        return path

    def push(self) -> None:
        import hotpatch

        self.registry.apply(hotpatch.load_patch(self.write(self.next)))
        self.next += 1

    def once(self) -> dict[str, float]:
        """Apply the next patch and roll it back; the timings."""
        import hotpatch

        patch = hotpatch.load_patch(self.write(self.next))  # loading is not timed
        start = time.perf_counter()
        applied = self.registry.apply(patch)
        middle = time.perf_counter()
        rolled = self.registry.rollback()
        end = time.perf_counter()
        self.next += 1  # a version once applied is not applied again
        return {
            "apply": middle - start,
            "switch": applied.switch_s,
            "rollback": end - middle,
            "rollback switch": rolled.switch_s,
        }

    def kept_per_patch(self) -> tuple[float, float]:
        """Bytes and tracked objects each of KEPT more applied patches keeps: Python
        allocations (tracemalloc) and the objects the garbage collector tracks, both
        after full collections."""
        start = _tracked()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(KEPT):
                self.push()
            gc.collect()
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        return (after - before) / KEPT, (_tracked() - start) / KEPT


def _tracked() -> int:
    """The objects the garbage collector tracks, once it has looked at them all: a tuple
    of untracked values is untracked at a collection, one holding it at the next."""
    for _ in range(3):
        gc.collect()
    return len(gc.get_objects())


def replay(stack: Stack) -> dict[str, Any]:
    """Read and replay the journal in a new process, then in another one.

    The first compiles every patch; the second finds the code the first kept
    beside the journal (as a service's next start does).
    """
    script = stack.root / "replay.py"
    script.write_text(REPLAY)
    runs = [
        json.loads(
            subprocess.run(
                [sys.executable, str(script), str(stack.root), stack.module, str(stack.journal)],
                capture_output=True,
                text=True,
                timeout=3600,
                check=True,
            ).stdout
        )
        for _ in range(2)
    ]
    first, again = runs
    return {**first, "again_s": again["replay_s"], "again_cpu_s": again["replay_cpu_s"]}


def switches(stacks: list[Stack], samples: int, batches: int) -> list[dict[str, Any]]:
    """The switch alone, many times: ``samples`` apply/rollback pairs at each level.

    They come in ``batches`` rounds (each level visited once a round), so that a
    burst of load falls on every level alike. The p99 of all the samples says
    what a service sees on this machine as it is; the best batch's p99 says
    what the switch costs when nothing preempts it.
    """
    per = max(1, samples // batches)
    got: dict[int, dict[str, list[list[float]]]] = {
        id(s): {"switch": [], "rollback switch": []} for s in stacks
    }
    for _ in range(batches):
        for stack in stacks:
            batch: dict[str, list[float]] = {"switch": [], "rollback switch": []}
            for _ in range(per):
                timings = stack.once()
                for metric, values in batch.items():
                    values.append(timings[metric] * 1e6)
            for metric, values in batch.items():
                got[id(stack)][metric].append(values)
    out: list[dict[str, Any]] = []
    for stack in stacks:
        row: dict[str, Any] = {"samples": per * batches, "batches": batches}
        for metric, runs in got[id(stack)].items():
            every = [v for run in runs for v in run]
            row[metric.replace(" ", "_") + "_us"] = {
                "median": median(every),
                "p99": p99(every),
                "best_batch_p99": min(p99(run) for run in runs),
                "worst_batch_p99": max(p99(run) for run in runs),
            }
        out.append(row)
    return out


def measure(levels: list[int], reps: int, samples: int, batches: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="hotpatch-levels-") as tmp:
        root = Path(tmp)
        sys.path.insert(0, tmp)
        stacks: list[Stack] = []
        try:
            for level in levels:
                stack = Stack(root, str(level))
                while len(stack.registry.level) < level:
                    stack.push()
                stacks.append(stack)
                print(f"built level {level}", flush=True)
            for _ in range(3):  # warm up: imports, first-time caches
                for stack in stacks:
                    stack.once()
            for _ in range(reps):  # rounds: every level once in each
                for stack in stacks:
                    for metric, value in stack.once().items():
                        stack.samples.setdefault(metric, []).append(value * 1e6)
            load = [os.getloadavg()[0]]
            many = switches(stacks, samples, batches)
            load.append(os.getloadavg()[0])
            rows = [_row(level, stack, reps) for level, stack in zip(levels, stacks, strict=True)]
            for row, switched in zip(rows, many, strict=True):
                row["switch_many"] = switched
            top = stacks[-1]
            replayed = replay(top)
            if replayed["level"] != len(top.registry.level):
                msg = f"the replay came back at another level: {replayed}"
                raise RuntimeError(msg)
            for stack in stacks:
                stack.registry.rollback(to="1.0")
        finally:
            sys.path.remove(tmp)
            for stack in stacks:
                sys.modules.pop(stack.module, None)
    return {"rows": rows, "replay": replayed, "load_average": load, **_goals(rows, replayed)}


def _row(level: int, stack: Stack, reps: int) -> dict[str, Any]:
    row: dict[str, Any] = {"level": level, "samples": reps}
    for metric, values in stack.samples.items():
        row[metric.replace(" ", "_") + "_us"] = {"median": median(values), "p99": p99(values)}
    row["journal_bytes"] = stack.journal.stat().st_size
    row["memory_per_patch_bytes"], row["objects_per_patch"] = stack.kept_per_patch()
    return row


def _goals(rows: list[dict[str, Any]], replayed: dict[str, Any]) -> dict[str, Any]:
    first, top = rows[0], rows[-1]
    goals: list[dict[str, Any]] = []
    for metric in ("apply", "rollback"):
        ratio = top[f"{metric}_us"]["median"] / first[f"{metric}_us"]["median"]
        goals.append(
            {
                "what": f"{metric} at level {top['level']} / level {first['level']} (medians)",
                "limit": FLAT,
                "value": ratio,
                "met": ratio <= FLAT,
            }
        )
    switch = max(r["switch_many"]["switch_us"]["median"] for r in rows)
    goals.append(
        {
            "what": f"switch of {TARGETS} targets, us (worst median of the levels)",
            "limit": SWITCH_GOAL_US,
            "value": switch,
            "met": switch <= SWITCH_GOAL_US,
        }
    )
    memory = top["memory_per_patch_bytes"] / first["memory_per_patch_bytes"]
    goals.append(
        {
            "what": f"memory per patch at level {top['level']} / level {first['level']}",
            "limit": MEMORY_FLAT,
            "value": memory,
            "met": memory <= MEMORY_FLAT,
        }
    )
    read_ms = replayed["read_s"] * 1e3
    goals.append(
        {
            "what": f"journal read, {replayed['recorded']} patches, ms",
            "limit": READ_GOAL_MS,
            "value": read_ms,
            "met": read_ms <= READ_GOAL_MS,
        }
    )
    return {"goals": goals}


def report(results: dict[str, Any]) -> None:
    print_table(
        f"stacked levels, journal on (Python {sys.version.split()[0]}; microseconds: median, p99)",
        [
            "level",
            "apply",
            "p99",
            "switch",
            "p99",
            "rollback",
            "p99",
            "rb switch",
            "p99",
            "bytes/patch",
            "objects/patch",
            "journal KiB",
        ],
        [
            [
                r["level"],
                r["apply_us"]["median"],
                r["apply_us"]["p99"],
                r["switch_us"]["median"],
                r["switch_us"]["p99"],
                r["rollback_us"]["median"],
                r["rollback_us"]["p99"],
                r["rollback_switch_us"]["median"],
                r["rollback_switch_us"]["p99"],
                round(r["memory_per_patch_bytes"]),
                r["objects_per_patch"],
                r["journal_bytes"] / 1024,
            ]
            for r in results["rows"]
        ],
    )
    load = results["load_average"]
    print_table(
        f"the switch of {TARGETS} targets alone, as a service applies and rolls back "
        f"(microseconds; load average {load[0]:.1f} -> {load[1]:.1f} on {os.cpu_count()} CPUs)",
        ["level", "samples", "what", "median", "p99", "best batch p99", "worst batch p99"],
        [
            [
                r["level"],
                r["switch_many"]["samples"],
                what,
                r["switch_many"][key]["median"],
                r["switch_many"][key]["p99"],
                r["switch_many"][key]["best_batch_p99"],
                r["switch_many"][key]["worst_batch_p99"],
            ]
            for r in results["rows"]
            for what, key in (("apply", "switch_us"), ("rollback", "rollback_switch_us"))
        ],
    )
    replayed = results["replay"]
    print(
        f"\njournal of {replayed['level']} patches: read {replayed['read_s'] * 1e3:.1f} ms, "
        f"replayed by a new process in {replayed['replay_s'] * 1e3:.0f} ms "
        f"({replayed['replay_cpu_s'] * 1e3:.0f} ms of CPU), by the next one in "
        f"{replayed['again_s'] * 1e3:.0f} ms ({replayed['again_cpu_s'] * 1e3:.0f} ms of CPU)"
    )
    print()
    for goal in results["goals"]:
        print(value_goal_line(goal))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    logging.getLogger("hotpatch").setLevel(logging.WARNING)
    levels, reps = (
        ([1, 30], 4)
        if args.quick
        else (
            sorted(int(v) for v in args.levels.split(",")),
            args.reps,
        )
    )
    samples, batches = (20, 2) if args.quick else (args.switches, args.batches)
    results = measure(levels, reps, samples, batches)
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
            "switch_samples": samples,
            "switch_batches": batches,
            "hotpatch": where,
            **results,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
