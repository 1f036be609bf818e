"""Bursts: N patches moved into the watched folder at once, until the last one is filed.

A real agent (``hotpatch.install``) with its journal on, as a service runs,
watches a real folder. N patch files (versions 1.0.1 ... 1.0.N, each
replacing the same function, so they stack) are written beside the folder,
then renamed into it one after the other in a shuffled order by ``mv`` (in
its own process, as a person or a deployment script would move them), with
the names in no useful order. The
clock runs from the first rename until the last result file is written; the
agent must take them in version order, so every one is applied and the level
ends at 1.0.N.

Runs at N = 200 and N = 1,000, with and without verification. Goal: linear,
the time of 1,000 at most 5x the time of 200 (ratios in the same run). Also
the CPU time the burst cost (this process, the verifier and its checks, from
the agent's start to its stop): on a shared machine a 200-drop burst lasts a
few seconds, so a busy moment elsewhere weighs on the wall-clock ratio; the
CPU ratio says what the agent itself does.

Usage: ``python benchmarks/burst.py [--quick] [--sizes 200,1000] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import PY, RESULTS, print_table, write_json

NAME = "burst"
MODULE = "bench_burst_target"
GOAL_RATIO = 5.0  # the largest burst against the smallest, scaled to 1,000 / 200
WAIT_S = 3600.0

PATCH = """\
from hotpatch import Patch

patch = Patch(version="1.0.{n}", baseline="1.0", summary="burst patch {n}")

@patch.replace("{module}:f")
def f():
    return {n}
"""


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"benchmarks/{NAME}.py", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="tiny bursts: checks it runs")
    parser.add_argument(
        "--sizes", default="200,1000", help="burst sizes, comma-separated (default: 200,1000)"
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=RESULTS / f"{NAME}-{PY}.json",
        metavar="PATH",
        help=f"where the results go (default: benchmarks/results/{NAME}-{PY}.json)",
    )
    return parser.parse_args(argv)


def burst(root: Path, size: int, *, verify: bool) -> dict[str, Any]:
    """Move ``size`` patches into a watched folder at once; the time until all are filed."""
    import hotpatch

    tag = f"{size}-{'verified' if verify else 'plain'}"
    folder, outbox, modules = root / f"patches-{tag}", root / f"outbox-{tag}", root / f"mod-{tag}"
    outbox.mkdir()
    modules.mkdir()
    module_name = f"{MODULE}_{tag.replace('-', '_')}"
    source = modules / f"{module_name}.py"
    source.write_text("def f():\n    return 0\n")
    past = time.time_ns() - 60 * 10**9  # on disk well before the agent started
    os.utime(source, ns=(past, past))
    sys.path.insert(0, str(modules))
    importlib.invalidate_caches()
    target = importlib.import_module(module_name)
    names = [f"fix-{n:05d}.py" for n in range(1, size + 1)]
    for n, name in enumerate(names, 1):
        (outbox / name).write_text(PATCH.format(n=n, module=module_name))
    random.Random(size).shuffle(names)
    agent = hotpatch.install(
        "1.0",
        watch=folder,
        journal=root / f"journal-{tag}.json",
        control_socket=False,
        verify=verify,
    )
    applied = folder / "applied"
    cpu, split = _cpu(), _split()
    try:
        start = time.perf_counter()
        # Moved by another process, as `mv` does (here `mv` itself, names in the
        # shuffled order): a mover in this process would wait for the agent's threads.
        subprocess.run(["mv", "-t", str(folder), *names], cwd=outbox, check=True)
        moved = time.perf_counter() - start
        wait_filed(folder, size, last=f"fix-{size:05d}.py")
        elapsed = time.perf_counter() - start
        level = agent.registry.level if agent.registry is not None else ()
        in_order = list(level) == [f"1.0.{n}" for n in range(1, size + 1)]
        active = target.f() == size
        totals = [
            json.loads(p.read_text())["timings"].get("total_s", 0.0)
            for p in applied.glob("*.result.json")
        ]
    finally:
        agent.stop()  # the verifier is reaped: its CPU time, and its checks', count
        cpu = _cpu() - cpu
        user, system = (b - a for a, b in zip(split, _split(), strict=True))
        if agent.registry is not None and agent.registry.level:
            agent.registry.rollback(to="1.0")
        sys.path.remove(str(modules))
        sys.modules.pop(module_name, None)
    return {
        "size": size,
        "verify": verify,
        "elapsed_s": elapsed,
        "rename_s": moved,
        "per_drop_ms": elapsed / size * 1e3,
        "cpu_s": cpu,
        "cpu_user_s": user,
        "cpu_system_s": system,
        "agent_per_drop_ms": sum(totals) / size * 1e3,
        "in_version_order": in_order,
        "active": active,
    }


def _cpu() -> float:
    """CPU seconds of this process and of its children reaped so far (user and system)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _split() -> tuple[float, float]:
    """``_cpu()`` as user and system (kernel) seconds."""
    t = os.times()
    return t.user + t.children_user, t.system + t.children_system


def _ratio(large: float, small: float) -> float | None:
    """``large / small``; ``None`` when ``small`` is below the clock's tick (10 ms)."""
    return large / small if small > 0 else None


def _shown(ratio: float | None) -> str:
    return f"{ratio:.2f}x" if ratio is not None else "-"


def wait_filed(folder: Path, size: int, *, last: str) -> None:
    """Until ``size`` drops are applied; a rejected one ends the run.

    Every 20 ms, looks for the result of ``last`` (the highest version: filed
    last, as the drops go in version order) and lists ``rejected/`` (empty
    unless something went wrong); ``applied/`` is counted once ``last`` is
    there. Each look costs the same at any point of any burst: the waiting,
    in the agent's process, must not cost the agent more as the burst grows
    (counting ``applied/`` every 20 ms did, and made bursts look superlinear).
    """
    deadline = time.monotonic() + WAIT_S
    applied, rejected = folder / "applied", folder / "rejected"
    done = applied / f"{last}.result.json"
    while True:
        if _results_in(rejected):
            first = sorted(rejected.glob("*.result.json"))[0]
            msg = f"a drop of the burst was rejected: {json.loads(first.read_text())}"
            raise RuntimeError(msg)
        if os.path.exists(done):
            filed = _results_in(applied)
            if filed == size:
                return
        if time.monotonic() > deadline:
            filed = _results_in(applied)
            msg = f"gave up after {WAIT_S:g} s with {filed} of {size} filed"
            raise RuntimeError(msg)
        time.sleep(0.02)


def _results_in(folder: Path) -> int:
    try:
        return sum(name.endswith(".result.json") for name in os.listdir(folder))
    except FileNotFoundError:
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    # Thousands of "applied patch" lines would drown the figures: warnings only.
    logging.getLogger("hotpatch").setLevel(logging.WARNING)
    sizes = [4, 20] if args.quick else sorted(int(s) for s in args.sizes.split(","))
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="hotpatch-burst-") as tmp:
        for verify in (False, True):
            for size in sizes:
                run = burst(Path(tmp), size, verify=verify)
                print(
                    f"{size} drops, verification {'on' if verify else 'off'}: "
                    f"{run['elapsed_s']:.2f} s",
                    flush=True,
                )
                runs.append(run)
    print_table(
        f"a burst of N drops -> all filed (Python {sys.version.split()[0]}, journal on)",
        [
            "N",
            "verify",
            "total s",
            "per drop ms",
            "agent ms",
            "CPU s",
            "user",
            "system",
            "in order",
        ],
        [
            [
                r["size"],
                "on" if r["verify"] else "off",
                r["elapsed_s"],
                r["per_drop_ms"],
                r["agent_per_drop_ms"],
                r["cpu_s"],
                r["cpu_user_s"],
                r["cpu_system_s"],
                "yes" if r["in_version_order"] and r["active"] else "NO",
            ]
            for r in runs
        ],
    )
    small, large = sizes[0], sizes[-1]
    goals = []
    for verify in (False, True):
        by_size = {r["size"]: r for r in runs if r["verify"] is verify}
        ratio = by_size[large]["elapsed_s"] / by_size[small]["elapsed_s"]
        cpu_ratio = by_size[large]["cpu_s"] / by_size[small]["cpu_s"]
        user_ratio = _ratio(by_size[large]["cpu_user_s"], by_size[small]["cpu_user_s"])
        system_ratio = _ratio(by_size[large]["cpu_system_s"], by_size[small]["cpu_system_s"])
        limit = GOAL_RATIO * (large / small) / 5  # 5x for 5x the drops: linear
        goal = {
            "what": f"{large} drops / {small} drops, verification {'on' if verify else 'off'}",
            "limit": limit,
            "ratio": ratio,
            "cpu_ratio": cpu_ratio,
            "user_ratio": user_ratio,
            "system_ratio": system_ratio,
            "met": ratio <= limit,
        }
        goals.append(goal)
        print(
            f"goal: {goal['what']} <= {limit:.2f}x: {ratio:.2f}x, "
            f"{'met' if goal['met'] else 'MISSED'} (CPU time {cpu_ratio:.2f}x: "
            f"user {_shown(user_ratio)}, system {_shown(system_ratio)})"
        )
    ordered = all(r["in_version_order"] and r["active"] for r in runs)
    print(f"every burst applied in version order: {'yes' if ordered else 'NO'}")
    write_json(args.json, NAME, args.quick, {"runs": runs, "goals": goals, "in_order": ordered})
    return 0 if ordered else 1


if __name__ == "__main__":
    sys.exit(main())
