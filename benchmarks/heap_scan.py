"""The heap scan behind nested function targets, and proof that ordinary patches never pay it.

A nested target (``mod:make_adder.<locals>.add``) patches every function object
already made from its code; they are found by a scan of every object the
garbage collector tracks, before the switch. Measured here, each with no extra
heap and with a million extra live, GC-tracked objects (tuples and dicts, in
the old generation), in the order none, big, big, none so drift cancels:

* **scan** -- ``made_from`` alone: the walk of every tracked object that finds
  the functions made from a nested code (100 of them live);
* **late scan** -- ``carrying``: what refers to given code objects, the walk
  run after the switch for functions made meanwhile, and on rollback;
* **nested apply / rollback** -- a real patch of the nested target, whole
  ``apply()`` and ``rollback()`` (scans included);
* **ordinary apply / rollback** -- a real patch of 10 module functions.

The heap walks run during the ordinary applies and rollbacks are counted
(``gc.get_objects`` and ``gc.get_referrers`` calls): there must be none.

Goals (issue 12): ordinary apply's CPU time with a million extra objects is at
most 1.25x that without (same run), and ordinary patches walk the heap zero
times.

Usage: ``python benchmarks/heap_scan.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import gc
import importlib
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from _common import median, p99, parse_args, print_table, write_json

NAME = "heap_scan"
HEAP_FLAT = 1.25  # ordinary apply CPU with the big heap / without, at most
CLOSURES = 100

MODULE = """
def make_adder(n):
    def add(x):
        return x + n
    return add

ADDERS = [make_adder(i) for i in range({closures})]

{functions}
"""

NESTED_PATCH = """
from hotpatch import Patch

patch = Patch(version="1.1", baseline="1.0")

@patch.replace("{module}:make_adder.<locals>.add")
def add(x):
    return x + n * 2
"""


def _ordinary_patch(module: str) -> str:
    head = "from hotpatch import Patch\n\npatch = Patch(version='1.1', baseline='1.0')\n\n"
    return head + "\n".join(
        f"@patch.replace('{module}:f{i}')\ndef f{i}(x, y=1):\n    return x * y + {i}\n\n"
        for i in range(10)
    )


def _big_heap(size: int) -> list[object]:
    """``size`` small live objects that the garbage collector tracks."""
    shared: list[int] = []
    heap: list[object] = [(i, shared) if i % 2 else {"i": i, "s": shared} for i in range(size)]
    gc.collect()  # into the old generation: no full collection is pending afterwards
    return heap


class _Walks:
    """Counts the heap walks (``gc.get_objects``, ``gc.get_referrers``) while installed."""

    def __init__(self) -> None:
        self.count = 0
        self._saved: list[tuple[str, Callable[..., Any]]] = []

    def __enter__(self) -> _Walks:
        for name in ("get_objects", "get_referrers"):
            real = getattr(gc, name)
            self._saved.append((name, real))
            setattr(gc, name, self._counting(real))
        return self

    def _counting(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def walk(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return real(*args, **kwargs)

        return walk

    def __exit__(self, *exc: object) -> None:
        for name, real in self._saved:
            setattr(gc, name, real)


class Bench:
    """The module, both patches, a registry, and the samples and walks counted."""

    MODULE = "bench_heap_scan"
    QUALNAME = "make_adder.<locals>.add"

    def __init__(self, folder: Path):
        import hotpatch

        functions = "\n".join(f"def f{i}(x, y=1):\n    return x + y + {i}\n" for i in range(10))
        source = MODULE.format(closures=CLOSURES, functions=functions)
        (folder / f"{self.MODULE}.py").write_text(source)
        (folder / "nested_patch.py").write_text(NESTED_PATCH.format(module=self.MODULE))
        (folder / "ordinary_patch.py").write_text(_ordinary_patch(self.MODULE))
        importlib.invalidate_caches()
        self.module = importlib.import_module(self.MODULE)
        self.code = self.module.ADDERS[0].__code__
        self.registry = hotpatch.Registry("1.0")
        self.nested = hotpatch.load_patch(folder / "nested_patch.py")
        self.ordinary = hotpatch.load_patch(folder / "ordinary_patch.py")
        self.samples: dict[tuple[str, int], dict[str, list[float]]] = {}
        self.walks = {"ordinary": 0, "nested": 0}
        self.patched = 0

    def timed(self, what: str, heap: int, call: Callable[[], Any]) -> Any:
        cpu = time.thread_time()
        start = time.perf_counter()
        value = call()
        wall = time.perf_counter() - start
        entry = self.samples.setdefault((what, heap), {"wall": [], "cpu": []})
        entry["wall"].append(wall)
        entry["cpu"].append(time.thread_time() - cpu)
        return value

    def run(self, heap: int, count: int) -> None:
        """The ordinary patches first, then the scans: a heap walk sweeps the CPU's caches,
        which the next few microseconds of whatever runs after it would pay for."""
        registry = self.registry
        for _ in range(count):
            with _Walks() as seen:
                self.timed("ordinary apply", heap, lambda: registry.apply(self.ordinary))
                self.timed("ordinary rollback", heap, registry.rollback)
            self.walks["ordinary"] += seen.count
        self.run_nested(heap, count)

    def run_nested(self, heap: int, count: int) -> None:
        from hotpatch import _heap

        namespace, registry = vars(self.module), self.registry
        for _ in range(count):
            found = self.timed("scan", heap, lambda: _heap.made_from(namespace, [self.QUALNAME]))
            if len(found[self.QUALNAME]) != CLOSURES:
                msg = f"the scan found {len(found[self.QUALNAME])} closures, not {CLOSURES}"
                raise RuntimeError(msg)
            self.timed("late scan", heap, lambda: _heap.carrying([self.code]))
            with _Walks() as seen:
                result = self.timed("nested apply", heap, lambda: registry.apply(self.nested))
                self.timed("nested rollback", heap, registry.rollback)
            self.walks["nested"] += seen.count
            self.patched = result.patched[f"{self.MODULE}:{self.QUALNAME}"]


def measure(reps: int, heap_size: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="hotpatch-bench-") as tmp:
        sys.path.insert(0, tmp)
        try:
            bench = Bench(Path(tmp))
            bench.run(-1, 2)  # warm up: imports, first-time caches
            heap: list[object] = []
            for phase in (0, heap_size, heap_size, 0):  # ABBA: drift cancels
                if len(heap) != phase:
                    heap = _big_heap(phase) if phase else []
                    gc.collect()
                bench.run(phase, max(reps // 2, 1))
            del heap
        finally:
            sys.path.remove(tmp)
            sys.modules.pop(Bench.MODULE, None)
    return _summarise(bench.samples, heap_size, bench.walks, bench.patched)


def _summarise(
    samples: dict[tuple[str, int], dict[str, list[float]]],
    heap_size: int,
    walks: dict[str, int],
    patched: int,
) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for (what, heap), values in samples.items():
        if heap < 0:
            continue  # warm-up
        wall = [v * 1e6 for v in values["wall"]]
        cpu = [v * 1e6 for v in values["cpu"]]
        rows.append(
            {
                "what": what,
                "heap_objects": heap,
                "samples": len(wall),
                "wall_us": {"median": median(wall), "p99": p99(wall)},
                "cpu_us": {"median": median(cpu), "p99": p99(cpu)},
            }
        )

    def cpu(what: str, heap: int) -> float:
        row = next(r for r in rows if r["what"] == what and r["heap_objects"] == heap)
        value: float = row["cpu_us"]["median"]
        return value

    ratio = cpu("ordinary apply", heap_size) / cpu("ordinary apply", 0)
    goals = [
        {
            "what": "ordinary apply CPU, 10 targets, with the big heap / without",
            "limit": HEAP_FLAT,
            "value": ratio,
            "met": ratio <= HEAP_FLAT,
        },
        {
            "what": "heap walks during ordinary applies and rollbacks",
            "limit": 0,
            "value": walks["ordinary"],
            "met": walks["ordinary"] == 0,
        },
    ]
    return {
        "unit": "microseconds",
        "heap_objects": heap_size,
        "closures": CLOSURES,
        "nested_patched": patched,
        "heap_walks": walks,
        "runs": rows,
        "goals": goals,
    }


def report(results: dict[str, Any]) -> None:
    rows = [
        [
            r["what"],
            f"{r['heap_objects']:,}",
            r["wall_us"]["median"],
            r["wall_us"]["p99"],
            r["cpu_us"]["median"],
            r["samples"],
        ]
        for r in results["runs"]
    ]
    rows.sort(key=lambda row: (str(row[0]), len(str(row[1])), str(row[1])))
    print_table(
        f"heap scan, Python {sys.version.split()[0]} (microseconds: median, p99; "
        f"{results['closures']} closures live; extra heap: live GC-tracked objects)",
        ["what", "extra heap", "wall", "p99", "cpu", "n"],
        rows,
    )
    walks = results["heap_walks"]
    print(
        f"\nheap walks: {walks['nested']} during nested applies and rollbacks, "
        f"{walks['ordinary']} during ordinary ones; the nested patch patched "
        f"{results['nested_patched']} objects"
    )
    for goal in results["goals"]:
        print(
            f"goal: {goal['what']} <= {goal['limit']:g}: {goal['value']:.2f}, "
            f"{'met' if goal['met'] else 'MISSED'}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(NAME, __doc__, argv)
    reps, heap = (4, 10_000) if args.quick else (60, 1_000_000)
    results = measure(reps, heap)
    report(results)
    write_json(args.json, NAME, args.quick, {"repetitions": reps, **results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
