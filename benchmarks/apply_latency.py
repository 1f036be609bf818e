"""Latency of ``Registry.apply`` and ``rollback`` for 1 to 1,000 targets, small and large heaps.

For each size a real module with N functions and a real patch file with N
replacements are written to a temporary folder. Each repetition is a real
apply followed by a real rollback, of two kinds:

* **first apply** -- a freshly loaded ``Patch`` (new code objects, so nothing
  built for it is cached yet); loading the file is not timed.
* **re-apply** -- the same ``Patch`` object again after its rollback (the
  adapted code objects come from the cache).

Reported: median and p99 of the whole ``apply()`` call (wall time, and the
median of the thread's CPU time, which a busy machine's preemption does not
inflate), of the switch itself (``ApplyResult.switch_s``: the step during
which calls could observe a change), of the whole ``rollback()`` and of its
switch. Every size runs with no extra heap and with a million extra live,
GC-tracked objects (tuples and dicts referring to a list, collected into the
old generation first); the phases run in the order none, big, big, none so
drift cancels.

The "full gc" column counts the repetitions during which the interpreter's
own collector ran a full collection. Apply and rollback leave no cyclic
garbage, but a full collection starts once enough objects have survived into
the old generation, and a large apply's transient objects (a few dozen per
target, alive for the whole apply) count toward that. A full collection walks
every tracked object, so its cost -- not the apply's -- grows with the heap:
it is what the p99 of the largest sizes shows.

Goals (issue 4): for 10 targets the switch takes at most 20 us and the whole
apply at most 2 ms (medians, wall time); apply grows linearly with targets
and stays flat in heap size (nothing on the apply path scans the heap) --
judged on CPU time, so that the machine's other load does not decide them.

The **holders** workload is an apply and a rollback of one 20-target patch: 10
functions with a default argument each and 10 methods whose replacements are
written in a holder class named as theirs (what ``hotpatch make`` writes), the
same ``Patch`` applied and rolled back ``--pairs`` times (after as many to warm
up) in a process of its own; reported: the thread's CPU time a pair (mean,
median, p99), of the apply and of the rollback, and the wall time. With
``--before PATH`` another hotpatch checkout runs the same workload in the same
``--rounds``, the two in turn (each round in the other order than the last),
and each round's ratio of CPU a pair, now / before, is given with their median.
What it measures is the cost of an apply beyond the switch: resolving the
targets, the checks of defaults and holder classes, reading each
replacement's global names.

Usage: ``python benchmarks/apply_latency.py [--quick] [--workload sizes|holders|all]
[--rounds 5] [--pairs 300] [--before PATH] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import (
    add_before,
    arguments,
    checkouts,
    import_checkout,
    median,
    p99,
    print_table,
    run_in_checkout,
    write_json,
)

NAME = "apply_latency"
KINDS = ("first apply", "re-apply")
SWITCH_GOAL_US = 20.0
APPLY_GOAL_US = 2000.0
HEAP_FLAT = 1.25  # apply with the big heap / without, at most
LINEAR = 1.5  # per-target cost at the largest size / at 10 targets, at most


def _module_source(n: int) -> str:
    return "\n".join(f"def f{i}(x, y=1):\n    return x + y + {i}\n\n" for i in range(n))


def _patch_source(module: str, n: int) -> str:
    head = "from hotpatch import Patch\n\npatch = Patch(version='1.1', baseline='1.0')\n\n"
    return head + "\n".join(
        f"@patch.replace('{module}:f{i}')\ndef f{i}(x, y=1):\n    return x * y + {i}\n\n"
        for i in range(n)
    )


def _heap(size: int) -> list[object]:
    """``size`` small live objects that the garbage collector tracks."""
    shared: list[int] = []
    heap: list[object] = [(i, shared) if i % 2 else {"i": i, "s": shared} for i in range(size)]
    gc.collect()  # into the old generation: no full collection is pending afterwards
    return heap


class Size:
    """One size: its module, its patch file, the Patch re-applied, and the samples."""

    def __init__(self, folder: Path, n: int):
        import hotpatch

        self.n = n
        self.module = f"bench_apply_{n}"
        (folder / f"{self.module}.py").write_text(_module_source(n))
        self.path = folder / f"apply_latency_{n}.py"
        self.path.write_text(_patch_source(self.module, n))
        importlib.import_module(self.module)
        self.registry = hotpatch.Registry("1.0")
        self.patch = hotpatch.load_patch(self.path)  # the one re-applied
        # samples[(heap, kind)][metric] -> seconds
        self.samples: dict[tuple[int, str], dict[str, list[float]]] = {}

    def run(self, heap: int, reps: int) -> None:
        import hotpatch

        for _ in range(reps):
            fresh = hotpatch.load_patch(self.path)
            self._once(heap, "first apply", fresh)
            # A patch module is a reference cycle (its functions hold its globals):
            # break it, so the loads leave the collector no garbage to chase.
            fresh.replacements[0].new.__globals__.clear()
            self._once(heap, "re-apply", self.patch)

    def _once(self, heap: int, kind: str, patch: Any) -> None:
        gcs = _full_collections[0]
        cpu = time.thread_time()
        start = time.perf_counter()
        applied = self.registry.apply(patch)
        middle = time.perf_counter()
        cpu = time.thread_time() - cpu
        rolled = self.registry.rollback()
        end = time.perf_counter()
        if set(applied.modes.values()) != {"inline"}:
            msg = f"expected every target inline, got {applied.modes}"
            raise RuntimeError(msg)
        samples = self.samples.setdefault((heap, kind), {})
        for metric, value in (
            ("apply", middle - start),
            ("apply cpu", cpu),
            ("switch", applied.switch_s),
            ("rollback", end - middle),
            ("rollback switch", rolled.switch_s),
            ("full gc", _full_collections[0] - gcs),
        ):
            samples.setdefault(metric, []).append(value)


_full_collections = [0]  # full (generation 2) collections started so far


def _count_full_collections(phase: str, info: dict[str, int]) -> None:
    if phase == "start" and info["generation"] == 2:
        _full_collections[0] += 1


def measure(sizes: Sequence[int], reps: dict[int, int], heap_size: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="hotpatch-bench-") as tmp:
        sys.path.insert(0, tmp)
        importlib.invalidate_caches()
        gc.callbacks.append(_count_full_collections)
        try:
            runs = [Size(Path(tmp), n) for n in sizes]
            for size in runs:  # warm up: imports, first-time caches of the library
                size.run(-1, 2)
            heap: list[object] = []
            for phase in (0, heap_size, heap_size, 0):  # ABBA: drift cancels
                if len(heap) != phase:
                    heap = _heap(phase) if phase else []
                    gc.collect()
                for size in runs:
                    size.run(phase, max(reps[size.n] // 2, 1))
            del heap
        finally:
            gc.callbacks.remove(_count_full_collections)
            sys.path.remove(tmp)
            for n in sizes:
                sys.modules.pop(f"bench_apply_{n}", None)
    return _summarise(runs, heap_size)


def _summarise(runs: list[Size], heap_size: int) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for size in runs:
        for (heap, kind), samples in size.samples.items():
            if heap < 0:
                continue  # warm-up
            row: dict[str, Any] = {
                "targets": size.n,
                "heap_objects": heap,
                "kind": kind,
                "samples": len(samples["apply"]),
            }
            row["full_gc"] = sum(1 for count in samples["full gc"] if count)
            for metric, values in samples.items():
                if metric == "full gc":
                    continue
                us = [v * 1e6 for v in values]
                row[metric.replace(" ", "_") + "_us"] = {"median": median(us), "p99": p99(us)}
            rows.append(row)
    return {"unit": "microseconds", "heap_objects": heap_size, "runs": rows, **_goals(rows)}


def _find(rows: list[dict[str, Any]], n: int, heap: int, kind: str) -> dict[str, Any]:
    return next(
        r for r in rows if r["targets"] == n and r["heap_objects"] == heap and r["kind"] == kind
    )


def _goals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    sizes = sorted({r["targets"] for r in rows})
    heaps = sorted({r["heap_objects"] for r in rows})
    goals: list[dict[str, Any]] = []
    ten = [r for r in rows if r["targets"] == 10]
    if ten:
        worst_switch = max(r["switch_us"]["median"] for r in ten)
        worst_apply = max(r["apply_us"]["median"] for r in ten)
        goals += [
            {
                "what": "switch, 10 targets (worst median)",
                "limit": SWITCH_GOAL_US,
                "value": worst_switch,
                "met": worst_switch <= SWITCH_GOAL_US,
            },
            {
                "what": "whole apply, 10 targets (worst median)",
                "limit": APPLY_GOAL_US,
                "value": worst_apply,
                "met": worst_apply <= APPLY_GOAL_US,
            },
        ]
    if 10 in sizes and sizes[-1] > 10:
        big = sizes[-1]
        growth = max(
            (_find(rows, big, h, k)["apply_cpu_us"]["median"] / big)
            / (_find(rows, 10, h, k)["apply_cpu_us"]["median"] / 10)
            for h in heaps
            for k in KINDS
        )
        goals.append(
            {
                "what": f"apply CPU per target, {big} vs 10 targets (worst ratio)",
                "limit": LINEAR,
                "value": growth,
                "met": growth <= LINEAR,
            }
        )
    if len(heaps) > 1:
        flat = max(
            _find(rows, n, heaps[-1], k)["apply_cpu_us"]["median"]
            / _find(rows, n, heaps[0], k)["apply_cpu_us"]["median"]
            for n in sizes
            for k in KINDS
        )
        goals.append(
            {
                "what": "apply CPU with the big heap / without (worst ratio)",
                "limit": HEAP_FLAT,
                "value": flat,
                "met": flat <= HEAP_FLAT,
            }
        )
    return {"goals": goals}


def report(results: dict[str, Any]) -> None:
    rows = [
        [
            r["targets"],
            f"{r['heap_objects']:,}",
            r["kind"],
            r["apply_us"]["median"],
            r["apply_us"]["p99"],
            r["apply_cpu_us"]["median"],
            r["apply_cpu_us"]["median"] / r["targets"],
            r["switch_us"]["median"],
            r["switch_us"]["p99"],
            r["rollback_us"]["median"],
            r["rollback_us"]["p99"],
            r["rollback_switch_us"]["median"],
            r["full_gc"],
            r["samples"],
        ]
        for r in results["runs"]
    ]
    rows.sort(key=lambda row: (row[0], row[1], row[2]))
    headers = [
        "targets",
        "extra heap",
        "kind",
        "apply",
        "p99",
        "cpu",
        "cpu/target",
        "switch",
        "p99",
        "rollback",
        "p99",
        "rb switch",
        "full gc",
        "n",
    ]
    print_table(
        f"apply latency, Python {sys.version.split()[0]} (microseconds: median, p99; "
        "full gc: repetitions during which the interpreter ran a full collection)",
        headers,
        rows,
    )
    print()
    for goal in results["goals"]:
        print(
            f"goal: {goal['what']} <= {goal['limit']:g}: {goal['value']:.2f}, "
            f"{'met' if goal['met'] else 'MISSED'}"
        )


# -- the holders workload: 10 functions with defaults and 10 methods of a holder class ----------

HOLDERS_MODULE = "bench_apply_holders"
HOLDERS_EACH = 10  # functions, and methods of the holder class


def _holders_module() -> str:
    each = range(HOLDERS_EACH)
    functions = "".join(f"def f{i}(x, y=1):\n    return x + y + {i}\n\n\n" for i in each)
    methods = "".join(f"    def m{i}(self, x):\n        return x + {i}\n\n" for i in each)
    return f"{functions}class Holder:\n{methods}"


def _holders_patch() -> str:
    """20 targets: ``f0``..``f9`` (with a default each) and ``Holder.m0``..``m9``, whose
    replacements are written in a class named as theirs (as ``hotpatch make`` writes them)."""
    head = "from hotpatch import Patch\n\npatch = Patch(version='1.1', baseline='1.0')\n\n\n"
    functions = "".join(
        f"@patch.replace('{HOLDERS_MODULE}:f{i}')\n"
        f"def f{i}(x, y=1):\n    return x + y + {i} + 1\n\n\n"
        for i in range(HOLDERS_EACH)
    )
    methods = "".join(
        f"    @patch.replace('{HOLDERS_MODULE}:Holder.m{i}')\n"
        f"    def m{i}(self, x):\n        return x + {i} + 1\n\n"
        for i in range(HOLDERS_EACH)
    )
    return f"{head}{functions}class Holder:\n{methods}"


def _pairs(registry: Any, patch: Any, pairs: int) -> dict[str, list[float]]:
    """``pairs`` times: ``apply(patch)`` then ``rollback()``; the thread's CPU time of each
    (and of the pair), and the pair's wall time, in seconds."""
    samples: dict[str, list[float]] = {k: [] for k in ("pair cpu", "apply cpu", "rollback cpu")}
    samples["pair"] = []
    for _ in range(pairs):
        start = time.perf_counter()
        cpu = time.thread_time()
        registry.apply(patch)
        middle = time.thread_time()
        registry.rollback()
        end = time.thread_time()
        samples["pair"].append(time.perf_counter() - start)
        samples["pair cpu"].append(end - cpu)
        samples["apply cpu"].append(middle - cpu)
        samples["rollback cpu"].append(end - middle)
    return samples


def _runs_as_written(module: Any, *, patched: bool) -> None:
    """The module's functions and methods answer as the patch says (or as before it)."""
    more = 1 if patched else 0
    got = [module.f3(1), module.Holder().m3(1)]
    if got != [1 + 1 + 3 + more, 1 + 3 + more]:
        msg = f"{'patched' if patched else 'rolled back'}, f3(1) and m3(1) gave {got}"
        raise RuntimeError(msg)


def holders_one(root: str, pairs: str) -> int:
    """The ``--one`` child: the holders workload with the hotpatch of ``root``; its figures
    on stdout (``run_in_checkout``). The same ``Patch`` is applied and rolled back
    ``pairs`` times to warm up, then ``pairs`` times measured."""
    checkout = import_checkout(root)
    import hotpatch

    count = int(pairs)
    with tempfile.TemporaryDirectory(prefix="hotpatch-bench-") as tmp:
        (Path(tmp) / f"{HOLDERS_MODULE}.py").write_text(_holders_module())
        (Path(tmp) / "holders_patch.py").write_text(_holders_patch())
        sys.path.insert(0, tmp)
        module = importlib.import_module(HOLDERS_MODULE)
        registry = hotpatch.Registry("1.0")
        patch = hotpatch.load_patch(Path(tmp) / "holders_patch.py")
        targets = len(registry.apply(patch).targets)
        _runs_as_written(module, patched=True)
        registry.rollback()
        _runs_as_written(module, patched=False)
        _pairs(registry, patch, count)  # warm up: first-time caches of the library
        samples = _pairs(registry, patch, count)
    figures: dict[str, Any] = {"hotpatch": checkout, "targets": targets, "pairs": count}
    for metric, values in samples.items():
        us = [v * 1e6 for v in values]
        figures[metric.replace(" ", "_") + "_us"] = {
            "mean": sum(us) / len(us),
            "median": median(us),
            "p99": p99(us),
        }
    print(json.dumps(figures))
    return 0


def holders(rounds: int, pairs: int, before: Path | None) -> dict[str, Any]:
    """Each round runs the workload once per checkout, each in a process of its own, the
    checkouts' order reversed every other round (drift cancels); ``now`` / ``before`` of
    each round's CPU per pair, and their median."""
    roots = checkouts(before)
    load = [os.getloadavg()[0]]  # the machine's, as the runs start and end
    runs: list[dict[str, Any]] = []
    for n in range(1, rounds + 1):
        order = list(roots.items())
        for checkout, root in order if n % 2 else order[::-1]:
            run = run_in_checkout(__file__, root, str(pairs)) | {"round": n, "checkout": checkout}
            print(
                f"round {n}, {checkout}: {run['targets']} targets, {pairs} pairs, CPU "
                f"{run['pair_cpu_us']['mean']:.0f} us a pair (mean)",
                flush=True,
            )
            runs.append(run)
    ratios: dict[str, Any] | None = None
    if before is not None:
        ratios = {}
        for statistic in ("mean", "median"):
            each = []
            for n in range(1, rounds + 1):
                cpu = {r["checkout"]: r["pair_cpu_us"][statistic] for r in runs if r["round"] == n}
                each.append(cpu["now"] / cpu["before"])
            ratios[statistic] = {"each_round": each, "median": median(each)}
    load.append(os.getloadavg()[0])
    return {
        "pairs": pairs,
        "rounds": rounds,
        "before": str(before) if before is not None else None,
        "load_average": load,
        "runs": runs,
        "ratio": ratios,
    }


def report_holders(results: dict[str, Any]) -> None:
    runs = sorted(results["runs"], key=lambda r: (r["checkout"] != "now", r["round"]))
    start, end = results["load_average"]
    print_table(
        f"apply + rollback of 20 targets (10 functions with defaults, 10 methods of a holder "
        f"class), Python {sys.version.split()[0]}: microseconds a pair, "
        f"{results['pairs']} pairs a run, each run a process of its own; load average "
        f"{start:.1f} at the start, {end:.1f} at the end",
        [
            "round",
            "hotpatch",
            "targets",
            "cpu mean",
            "median",
            "p99",
            "apply cpu",
            "rollback cpu",
            "wall",
        ],
        [
            [
                r["round"],
                r["checkout"],
                r["targets"],
                r["pair_cpu_us"]["mean"],
                r["pair_cpu_us"]["median"],
                r["pair_cpu_us"]["p99"],
                r["apply_cpu_us"]["median"],
                r["rollback_cpu_us"]["median"],
                r["pair_us"]["median"],
            ]
            for r in runs
        ],
    )
    ratios = results["ratio"]
    if ratios is not None:
        print()
        for statistic, ratio in ratios.items():
            each = ", ".join(f"{r:.2f}x" for r in ratio["each_round"])
            print(
                f"holders: CPU a pair ({statistic}), now / before: {ratio['median']:.2f}x "
                f"(median of the rounds: {each})"
            )


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = arguments(NAME, __doc__)
    parser.add_argument(
        "--workload",
        choices=("sizes", "holders", "all"),
        default="all",
        help="the sizes from 1 to 1,000 targets, the holders workload, or both (default: all)",
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="holders: runs of each checkout (default: 5)"
    )
    parser.add_argument(
        "--pairs",
        type=int,
        default=300,
        help="holders: apply/rollback pairs measured in each run, after as many to warm up "
        "(default: 300)",
    )
    add_before(parser)  # holders: its runs beside this checkout's, in the same rounds
    # One holders run in this process, with the hotpatch of ROOT (run_in_checkout).
    parser.add_argument("--one", nargs=2, metavar=("ROOT", "PAIRS"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.one:
        return holders_one(*args.one)
    results: dict[str, Any] = {}
    if args.workload in ("sizes", "all"):
        if args.quick:
            sizes, reps, heap = [1, 10], {1: 4, 10: 4}, 10_000
        else:
            sizes, reps = [1, 10, 100, 1000], {1: 400, 10: 400, 100: 200, 1000: 40}
            heap = 1_000_000
        measured = measure(sizes, reps, heap)
        report(measured)
        results |= {"sizes": sizes, "repetitions": reps, **measured}
    if args.workload in ("holders", "all"):
        rounds, pairs = (1, 10) if args.quick else (args.rounds, args.pairs)
        results["holders"] = holders(rounds, pairs, args.before)
        report_holders(results["holders"])
    write_json(args.json, NAME, args.quick, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
