"""The switch's three steps for 1 to 1,000 targets, against the same stores made in one run.

For each size a real module with N functions (``def f{i}(x, y=1)``, as in
``apply_latency``) and a real patch file with N replacements are written to a
temporary folder; a ``Registry`` plans the patch, and its changes (code,
defaults, keyword defaults, doc, annotations, signature of each function) are
switched in and back out, again and again. Reported, median and p99 in
microseconds:

* **prep** -- building the steps: a chooser and its two functions for each
  function but one, the lists of stores. The registry does it before the switch.
* **step 1** -- the choosers go in; every call still runs the old version.
* **flip** -- the last function's store, every store no audit hook sees, the
  flag: the one stretch in which no other thread runs at all (an audit hook
  written in Python runs before its first store only).
* **step 3** -- the chosen functions onto their new version, directly.
* **whole** -- ``switch()`` itself, what ``ApplyResult.switch_s`` reports.
* **one run** -- the same stores as one ``map`` over prepared ``partial`` objects,
  as the switch was before it had steps (a Python audit hook could split it
  between any two functions): the baseline, measured in the same rounds.

Goal (issue 16): the whole switch of 10 targets at most 20 us (median).

Usage: ``python benchmarks/switch_steps.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import collections
import functools
import importlib
import itertools
import operator
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from _common import (
    median,
    p99,
    parse_args,
    print_table,
    stacked_module,
    stacked_patch,
    value_goal_line,
    write_json,
)

NAME = "switch_steps"
GOAL_US = 20.0
PARTS = ("prep", "step 1", "flip", "step 3", "whole", "one run")


def _changes(folder: Path, targets: int) -> tuple[list[Any], list[Any]]:
    """The changes a patch of ``targets`` functions makes, and those that undo them."""
    import hotpatch
    from hotpatch._switch import current

    name = f"switch_steps_{targets}"
    (folder / f"{name}.py").write_text(stacked_module(targets))
    (folder / f"{name}_patch.py").write_text(stacked_patch(name, 1, targets))
    importlib.invalidate_caches()
    importlib.import_module(name)
    patch = hotpatch.load_patch(folder / f"{name}_patch.py")
    plan = hotpatch.Registry("1.0")._plan(patch)
    there = list(plan.changes.values())
    back = [(obj, attr, current(obj, attr)) for obj, attr, _ in there]
    return there, back


def _drain(calls: Any) -> None:
    collections.deque(calls, maxlen=0)


def _one(changes: Sequence[Any], samples: dict[str, list[float]]) -> None:
    """One switch by steps, timed step by step, one whole, and one in one run."""
    from hotpatch import _switch

    t0 = time.perf_counter()
    steps = _switch._Steps(changes, ())
    t1 = time.perf_counter()
    _drain(steps.before.running())
    t2 = time.perf_counter()
    _drain(itertools.chain(map(operator.call, steps.first), steps.flip.running()))
    t3 = time.perf_counter()
    _drain(steps.after.running())
    t4 = time.perf_counter()
    for part, seconds in zip(PARTS, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=False):
        samples[part].append(seconds * 1e6)
    # the same stores again, undone first: the whole switch, then one run of them
    undo = [(obj, attr, _switch.current(obj, attr)) for obj, attr, _ in changes]
    _switch.switch(undo)
    samples["whole"].append(_switch.switch(changes) * 1e6)
    _switch.switch(undo)
    ops: list[Callable[[], object]] = [
        functools.partial(setattr, obj, attr, value)
        if value is not _switch.ABSENT
        else functools.partial(obj.__dict__.pop, attr, None)
        for obj, attr, value in changes
    ]
    start = time.perf_counter()
    _drain(map(operator.call, ops))
    samples["one run"].append((time.perf_counter() - start) * 1e6)


def measure(targets: int, reps: int, folder: Path) -> dict[str, Any]:
    there, back = _changes(folder, targets)
    samples: dict[str, list[float]] = {part: [] for part in PARTS}
    for _ in range(reps):
        _one(there, samples)  # in: from the module's code to the patch's
        _one(back, samples)  # and back out
    row: dict[str, Any] = {"targets": targets, "samples": len(samples["whole"])}
    for part in PARTS:
        row[part.replace(" ", "_") + "_us"] = {
            "median": median(samples[part]),
            "p99": p99(samples[part]),
        }
    row["ratio"] = row["whole_us"]["median"] / row["one_run_us"]["median"]
    return row


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(NAME, __doc__, argv)
    sizes = [1, 10] if args.quick else [1, 10, 100, 1000]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        sys.path.insert(0, tmp)
        try:
            for targets in sizes:
                reps = 2 if args.quick else max(50, 20000 // targets)
                rows.append(measure(targets, reps, Path(tmp)))
        finally:
            sys.path.remove(tmp)
    ten = next(r for r in rows if r["targets"] == 10)
    goal = {
        "what": "whole switch, 10 targets, us (median)",
        "limit": GOAL_US,
        "value": ten["whole_us"]["median"],
        "met": ten["whole_us"]["median"] <= GOAL_US,
    }
    print_table(
        f"the switch in steps, Python {sys.version.split()[0]} (microseconds: median, p99)",
        ["targets", *PARTS, "whole p99", "whole / one run"],
        [
            [
                r["targets"],
                *[r[p.replace(" ", "_") + "_us"]["median"] for p in PARTS],
                r["whole_us"]["p99"],
                f"{r['ratio']:.2f}x",
            ]
            for r in rows
        ],
    )
    print()
    print(value_goal_line(goal))
    write_json(args.json, NAME, args.quick, {"sizes": sizes, "runs": rows, "goals": [goal]})


if __name__ == "__main__":
    main()
