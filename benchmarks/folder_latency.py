"""Watched-folder latency: from renaming a valid patch into the folder to the patch being active.

A real agent (``hotpatch.install``) watches a real folder with its journal
on, as under ``hotpatch run --watch`` and in the README's embedding example;
each drop is a patch file written beside the folder and renamed into it --
the documented way to drop -- and stacks on the ones before (the level grows
to the number of drops). The clock stops when a call of the patched function
returns the new result: the main thread calls it in a tight loop. The next
drop starts once the previous one is filed (result written, file moved).

Runs:

* **watchdog alone** -- a bare watchdog handler noting the rename: the floor
  set by the kernel and watchdog's threads;
* **without verification** (``verify=False``) -- read, load, apply; the
  polling loop yields the GIL at each call (``time.sleep(0)``), as a serving
  thread that does any I/O does;
* **without verification, GIL-bound poller** -- the same, polled by a loop
  that never releases the GIL: each time one of the agent's threads wakes up
  (after watchdog's hand-offs, the burst settle, a system call) it waits for
  CPython's switch interval (5 ms) to take the GIL back. That is CPython's
  scheduling, not the agent's work, and it is the worst case a service can
  impose on its own background threads;
* **with verification, a new Python per patch** (before) -- each patch
  imported first in a verification process started for it: a new
  interpreter, as every drop cost before the verifier was started ahead;
* **with verification** (the default) -- the pre-started verifier forks a
  child per patch to import it: what a drop costs in production.

The verification's share is shown (``verify_s`` of the result files).

"agent" is the agent's own work on a drop (``total_s`` of ``NAME.result.json``).

Usage: ``python benchmarks/folder_latency.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import median, p99, parse_args, print_table, write_json

from hotpatch.agent._queue import SETTLE_S

NAME = "folder_latency"
MODULE = "bench_folder_target"
GOAL_MS = 10.0  # without verification, median
GOAL_VERIFIED_MS = 30.0  # with verification, median
GOAL_VERIFIED_P99_MS = 100.0
PLAIN = "without verification"
BUSY = "without verification, GIL-bound poller"
ONE_SHOT = "with verification, a new Python per patch (before)"
VERIFIED = "with verification"
FILED_TIMEOUT_S = 60.0

PATCH = """\
from hotpatch import Patch

patch = Patch(version="1.0.{n}", baseline="1.0")

@patch.replace("{module}:f")
def f():
    return {n}
"""


def _wait(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + FILED_TIMEOUT_S
    while not predicate():
        if time.monotonic() > deadline:
            msg = f"gave up waiting for {what}"
            raise RuntimeError(msg)
        time.sleep(0.0005)


def watchdog_alone(root: Path, drops: int) -> list[float]:
    """Rename -> a bare watchdog handler sees it, in ms."""
    from watchdog.events import FileMovedEvent, FileSystemEventHandler
    from watchdog.observers.inotify import InotifyObserver

    folder, outbox = root / "bare", root / "bare-outbox"
    folder.mkdir(mode=0o700)
    outbox.mkdir()
    seen: set[str] = set()

    class Handler(FileSystemEventHandler):
        def on_moved(self, event: Any) -> None:
            seen.add(os.path.basename(os.fsdecode(event.dest_path)))

    observer = InotifyObserver(generate_full_events=True)
    observer.schedule(Handler(), str(folder), event_filter=[FileMovedEvent])
    observer.start()
    samples = []
    try:
        for n in range(1, drops + 1):
            name = f"p{n}.py"
            (outbox / name).write_text("x = 1\n")
            start = time.perf_counter()
            os.rename(outbox / name, folder / name)
            while name not in seen:
                pass
            samples.append((time.perf_counter() - start) * 1e3)
            os.unlink(folder / name)
    finally:
        observer.stop()
        observer.join()
    return samples


def agent_run(
    root: Path, drops: int, *, verify: bool, yield_gil: bool = True, one_shot: bool = False
) -> tuple[list[float], list[float], list[float]]:
    """Rename -> the patched function returns the new value, in ms.

    Also, from each result file: the agent's own processing of the drop
    (``total_s``) and the verification's share of it (``verify_s``), in ms.
    """
    import hotpatch

    tag = ("verified" if verify else "plain") + ("" if yield_gil else "-busy")
    tag += "-oneshot" if one_shot else ""
    folder, outbox = root / f"patches-{tag}", root / f"outbox-{tag}"
    outbox.mkdir()
    modules = root / f"modules-{tag}"
    modules.mkdir()
    module_name = f"{MODULE}_{tag.replace('-', '_')}"
    (modules / f"{module_name}.py").write_text("def f():\n    return 0\n")
    sys.path.insert(0, str(modules))
    importlib.invalidate_caches()
    target = importlib.import_module(module_name)
    f = target.f
    samples: list[float] = []
    processing: list[float] = []
    verify_s: list[float] = []
    journal = root / f"journal-{tag}.json"
    agent = hotpatch.install(
        "1.0", watch=folder, journal=journal, control_socket=False, verify=verify
    )
    if one_shot:
        # As before the verifier: no process started ahead, one started for each patch.
        pipeline = agent._run.pipeline
        pipeline.verifier.close()
        pipeline.verifier = None
    try:
        for n in range(1, drops + 1):
            name = f"p{n}.py"
            (outbox / name).write_text(PATCH.format(n=n, module=module_name))
            start = time.perf_counter()
            os.rename(outbox / name, folder / name)
            if yield_gil:
                while f() != n:
                    time.sleep(0)
            else:
                while f() != n:
                    pass
            samples.append((time.perf_counter() - start) * 1e3)
            result = folder / "applied" / f"{name}.result.json"
            _wait((folder / "applied" / name).exists, f"{name} to be filed")
            timings = json.loads(result.read_text())["timings"]
            processing.append(timings["total_s"] * 1e3)
            verify_s.append(timings["verify_s"] * 1e3)
    finally:
        agent.stop()
        if agent.registry is not None and agent.registry.level:
            agent.registry.rollback(to="1.0")
        sys.path.remove(str(modules))
        sys.modules.pop(module_name, None)
    return samples, processing, verify_s


def summary(
    mode: str,
    samples: list[float],
    processing_ms: list[float] | None = None,
    verify_ms: list[float] | None = None,
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "mode": mode,
        "drops": len(samples),
        "median_ms": median(samples),
        "p99_ms": p99(samples),
        "max_ms": max(samples),
        "samples_ms": samples,
    }
    if processing_ms is not None:
        row["processing_median_ms"] = median(processing_ms)
    if verify_ms is not None:
        row["child_median_ms"] = median(verify_ms)
    return row


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(NAME, __doc__, argv)
    drops, verified_drops, one_shot_drops = (5, 3, 2) if args.quick else (200, 200, 100)
    with tempfile.TemporaryDirectory(prefix="hotpatch-bench-") as tmp:
        root = Path(tmp)
        runs = [
            summary("watchdog alone", watchdog_alone(root, drops)),
            summary(PLAIN, *agent_run(root, drops, verify=False)),
            summary(BUSY, *agent_run(root, drops, verify=False, yield_gil=False)),
            summary(ONE_SHOT, *agent_run(root, one_shot_drops, verify=True, one_shot=True)),
            summary(VERIFIED, *agent_run(root, verified_drops, verify=True)),
        ]
    print_table(
        f"rename into the folder -> patch active, ms (Python {sys.version.split()[0]})",
        ["mode", "drops", "median", "p99", "max", "agent", "verify"],
        [
            [
                r["mode"],
                r["drops"],
                r["median_ms"],
                r["p99_ms"],
                r["max_ms"],
                r.get("processing_median_ms", "-"),
                r.get("child_median_ms", "-") if r["mode"] in (ONE_SHOT, VERIFIED) else "-",
            ]
            for r in runs
        ],
    )
    print(
        "\nagent, verify: medians of the agent's own work on a drop and of the "
        "verification's share of it (NAME.result.json). The rest is watchdog's "
        f"delivery, the {SETTLE_S * 1e3:g} ms a burst is given to settle, and thread hand-offs."
    )
    plain, one_shot, verified = runs[1], runs[3], runs[4]
    met = plain["median_ms"] < GOAL_MS
    verified_met = (
        verified["median_ms"] <= GOAL_VERIFIED_MS and verified["p99_ms"] <= GOAL_VERIFIED_P99_MS
    )
    speedup = one_shot["median_ms"] / verified["median_ms"]
    print(
        f"goal: median without verification under {GOAL_MS:g} ms: {plain['median_ms']:.2f} ms "
        f"({'met' if met else 'NOT met'})\n"
        f"goal: with verification median <= {GOAL_VERIFIED_MS:g} ms, p99 <= "
        f"{GOAL_VERIFIED_P99_MS:g} ms: {verified['median_ms']:.2f} ms, p99 "
        f"{verified['p99_ms']:.2f} ms ({'met' if verified_met else 'NOT met'}); "
        f"{speedup:.1f}x faster than a new Python per patch (median)"
    )
    write_json(
        args.json,
        NAME,
        args.quick,
        {
            "runs": runs,
            "goal": {"limit_ms": GOAL_MS, "median_ms": plain["median_ms"], "met": met},
            "verified_goal": {
                "limit_median_ms": GOAL_VERIFIED_MS,
                "limit_p99_ms": GOAL_VERIFIED_P99_MS,
                "median_ms": verified["median_ms"],
                "p99_ms": verified["p99_ms"],
                "met": verified_met,
            },
            "verification_cost_ms": verified["median_ms"] - plain["median_ms"],
            "speedup_over_one_shot": speedup,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
