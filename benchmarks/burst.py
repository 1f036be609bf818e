"""Bursts: N patches moved into the watched folder at once, until the last one is filed.

A real agent (``hotpatch.install``) with its journal and its control socket
on, as a service runs (after each apply it asks its own socket for a brief
status: the top of the level, the first drops waiting), watches a real
folder. N patch files (versions 1.0.1 ... 1.0.N, each replacing the same
function, so they stack) are written beside the folder,
then renamed into it one after the other in a shuffled order by ``mv`` (in
its own process, as a person or a deployment script would move them), with
the names in no useful order. The
clock runs from the first rename until the last result file is written; the
agent must take them in version order, so every one is applied and the level
ends at 1.0.N.

Runs at N = 200 and N = 1,000, with and without verification. Goal: linear,
the time of 1,000 at most 5x the time of 200 (ratios in the same run). Also
the CPU time the burst cost (the agent's process, the verifier and its
checks, from the agent's start to its stop), split into user and system
(kernel) time: on a shared machine a 200-drop burst lasts a second or two, so
a busy moment elsewhere weighs on the wall-clock ratio; the CPU ratio says
what the agent itself does. And the garbage collections of the agent's process
during each burst, by generation, with their time: a full collection (the
oldest generation) is the one step whose cost is the whole heap's.

Each burst runs in a new process of its own (a service that takes a burst
has not just taken another one in the same heap), ``--rounds`` times. A
round moves as many drops in the small bursts as in the large one: the
200-drop burst runs five times, two before the 1,000-drop burst and three
after, so both sides of a round's ratio span about the same stretch of the
machine's time (on a shared virtual machine the speed of the same work
changes by a third from one second to the next, and a single 200-drop burst
lasting under a second fell in one such stretch or another). Each round's
ratio is the large burst's time over the mean of its small bursts'; the
ratios are those of each round, with their median. ``--before PATH`` runs
the same bursts, in the same rounds, with another hotpatch checkout (the
figures before a change; e.g. ``git archive main | tar -x -C PATH``).

Usage: ``python benchmarks/burst.py [--quick] [--sizes 200,1000] [--rounds 3]
[--verify off|on|both] [--before PATH] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import logging
import os
import random
import resource
import statistics
import subprocess
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
    print_table,
    run_in_checkout,
    write_json,
)

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
    parser = arguments(NAME, __doc__, quick="tiny bursts: checks it runs")
    parser.add_argument(
        "--sizes", default="200,1000", help="burst sizes, comma-separated (default: 200,1000)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds, each the largest burst once and the smaller ones around it (default: 3)",
    )
    parser.add_argument(
        "--verify",
        choices=("off", "on", "both"),
        default="both",
        help="bursts without verification, with it, or both (default: both)",
    )
    add_before(parser)
    # One burst in this process, with the hotpatch of ROOT: how the rounds run each burst.
    parser.add_argument(
        "--one", nargs=4, metavar=("ROOT", "TMP", "SIZE", "VERIFY"), help=argparse.SUPPRESS
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
        verify=verify,
    )
    applied = folder / "applied"
    collections = _Collections()
    split = _cpu_split()
    try:
        start = time.perf_counter()
        # Moved by another process, as `mv` does (here `mv` itself, names in the
        # shuffled order): a mover in this process would wait for the agent's threads.
        subprocess.run(["mv", "-t", str(folder), *names], cwd=outbox, check=True)
        moved = time.perf_counter() - start
        wait_filed(folder, size, last=f"fix-{size:05d}.py")
        elapsed = time.perf_counter() - start
    finally:
        agent.stop()  # the verifier is reaped: its CPU time, and its checks', count
        user, system = (b - a for a, b in zip(split, _cpu_split(), strict=True))
        cpu = user + system
        collections.stop()
    # Looked at once the clocks stopped: reading the N result files is not the burst's.
    level = agent.registry.level if agent.registry is not None else ()
    in_order = list(level) == [f"1.0.{n}" for n in range(1, size + 1)]
    active = target.f() == size
    totals = [
        json.loads(p.read_text())["timings"].get("total_s", 0.0)
        for p in applied.glob("*.result.json")
    ]
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
        "gc_s": collections.seconds,
        "gc_full": collections.full,
        "gc_collections": collections.by_generation,
        "in_version_order": in_order,
        "active": active,
        "hotpatch": str(Path(hotpatch.__file__).resolve().parent.parent),
    }


class _Collections:
    """The garbage collections of this process while it runs: their time, how many of
    each generation (``full``: of the oldest)."""

    def __init__(self) -> None:
        self.seconds, self._started = 0.0, 0.0
        self.by_generation = [0, 0, 0]
        gc.callbacks.append(self._note)

    @property
    def full(self) -> int:
        return self.by_generation[2]

    def _note(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started
            self.by_generation[min(info["generation"], 2)] += 1

    def stop(self) -> None:
        gc.callbacks.remove(self._note)


def _cpu_split() -> tuple[float, float]:
    """CPU seconds of this process and of its children reaped so far, user and system
    (kernel), to the microsecond (``getrusage``; ``os.times`` counts whole 10 ms ticks,
    under which a small burst read as no CPU at all)."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + children.ru_utime, own.ru_stime + children.ru_stime


def _ratio(large: float, small: float) -> float | None:
    """``large / small``; ``None`` when either is 0."""
    return large / small if small > 0 and large > 0 else None


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


def one(root: str, tmp: str, size: str, verify: str) -> int:
    """The ``--one`` child: one burst with the hotpatch of ``root``; its figures on stdout."""
    import_checkout(root)
    # Thousands of "applied patch" lines would drown the figures: warnings only.
    logging.getLogger("hotpatch").setLevel(logging.WARNING)
    run = burst(Path(tmp), int(size), verify=verify == "on")
    print(json.dumps(run))
    return 0


def run_one(root: Path, tmp: Path, size: int, *, verify: bool) -> dict[str, Any]:
    """One burst in a new process with the hotpatch of ``root`` (``run_in_checkout``).

    Its files stay until the end of the run: thousands of files removed just
    before a burst would cost it (ext4 without a journal, as on the machine
    these figures come from, looks past the inodes freed in the last seconds
    each time it makes a file).
    """
    work = tempfile.mkdtemp(prefix="burst-", dir=tmp)
    return run_in_checkout(__file__, root, work, str(size), "on" if verify else "off")


def in_round(sizes: list[int]) -> list[int]:
    """The bursts of a round, in order: each smaller size as many times as it takes to
    move as many drops as the largest (five 200s for a 1,000), half of them before the
    largest and the rest after it."""
    large = sizes[-1]
    before = [s for s in sizes[:-1] for _ in range(max(large // s, 1) // 2)]
    after = [s for s in sizes[:-1] for _ in range(max(large // s, 1) - max(large // s, 1) // 2)]
    return [*before, large, *after]


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def ratios(
    runs: list[dict[str, Any]], checkout: str, verify: bool, small: int, large: int
) -> dict[str, Any]:
    """``large`` drops / ``small`` drops: each round's ratios (wall, CPU, user, system) of
    the large burst to the mean of the round's small ones, and their medians."""
    rounds = sorted({r["round"] for r in runs})
    fields = {"wall": "elapsed_s", "cpu": "cpu_s", "user": "cpu_user_s", "system": "cpu_system_s"}
    each: dict[str, list[float | None]] = {k: [] for k in fields}
    for n in rounds:
        mine = [
            r
            for r in runs
            if r["round"] == n and r["checkout"] == checkout and r["verify"] is verify
        ]
        big = next(r for r in mine if r["size"] == large)
        little = [r for r in mine if r["size"] == small]
        for name, field in fields.items():
            each[name].append(_ratio(big[field], statistics.fmean(r[field] for r in little)))
    return {"each": each, **{k: _median(v) for k, v in each.items()}}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.one:
        return one(*args.one)
    sizes = [4, 20] if args.quick else sorted(int(s) for s in args.sizes.split(","))
    rounds = 1 if args.quick else args.rounds
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.verify]
    roots = checkouts(args.before)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="hotpatch-burst-") as tmp:
        for n in range(1, rounds + 1):
            for verify in modes:
                for size in in_round(sizes):
                    for checkout, root in roots.items():
                        run = run_one(root, Path(tmp), size, verify=verify)
                        run |= {"round": n, "checkout": checkout}
                        print(
                            f"round {n}, {checkout}: {size} drops, verification "
                            f"{'on' if verify else 'off'}: {run['elapsed_s']:.2f} s, "
                            f"CPU {run['cpu_s']:.2f} s",
                            flush=True,
                        )
                        runs.append(run)
    print_table(
        f"a burst of N drops -> all filed (Python {sys.version.split()[0]}, journal on; "
        f"each burst a new process, {rounds} round{'s' if rounds > 1 else ''})",
        [
            "round",
            "hotpatch",
            "N",
            "verify",
            "total s",
            "per drop ms",
            "agent ms",
            "CPU s",
            "user",
            "system",
            "gc ms",
            "gc 0/1/2",
            "in order",
        ],
        [
            [
                r["round"],
                r["checkout"],
                r["size"],
                "on" if r["verify"] else "off",
                r["elapsed_s"],
                r["per_drop_ms"],
                r["agent_per_drop_ms"],
                r["cpu_s"],
                r["cpu_user_s"],
                r["cpu_system_s"],
                r["gc_s"] * 1e3,
                "/".join(map(str, r["gc_collections"])),
                "yes" if r["in_version_order"] and r["active"] else "NO",
            ]
            for r in sorted(
                runs, key=lambda r: (r["verify"], r["checkout"] != "now", r["round"], r["size"])
            )
        ],
    )
    small, large = sizes[0], sizes[-1]
    limit = GOAL_RATIO * (large / small) / 5  # 5x for 5x the drops: linear
    goals = []
    print()
    for verify in modes:
        for checkout in roots:
            got = ratios(runs, checkout, verify, small, large)
            goal = {
                "what": (
                    f"{large} drops / {small} drops, verification {'on' if verify else 'off'}"
                    + ("" if checkout == "now" else f" ({checkout})")
                ),
                "checkout": checkout,
                "verify": verify,
                "limit": limit,
                "ratio": got["wall"],
                "cpu_ratio": got["cpu"],
                "user_ratio": got["user"],
                "system_ratio": got["system"],
                "each_round": got["each"],
                "rounds_met": sum(r <= limit for r in got["each"]["wall"] if r is not None),
                # full (oldest generation) collections in each round's largest burst
                "full_collections": [
                    r["gc_full"]
                    for r in runs
                    if r["checkout"] == checkout and r["verify"] is verify and r["size"] == large
                ],
                "met": got["wall"] <= limit,
            }
            goals.append(goal)
            walls = ", ".join(f"{r:.2f}x" for r in got["each"]["wall"] if r is not None)
            cpus = ", ".join(_shown(r) for r in got["each"]["cpu"])
            print(
                f"goal: {goal['what']} <= {limit:.2f}x: {got['wall']:.2f}x (median), "
                f"{'met' if goal['met'] else 'MISSED'}; CPU time {_shown(got['cpu'])}: "
                f"user {_shown(got['user'])}, system {_shown(got['system'])}"
                + (f"\n  each round: wall {walls}; CPU {cpus}" if rounds > 1 else "")
                + f"\n  full collections in each {large}-drop burst: "
                + ", ".join(map(str, goal["full_collections"]))
            )
    ordered = all(r["in_version_order"] and r["active"] for r in runs)
    print(f"every burst applied in version order: {'yes' if ordered else 'NO'}")
    write_json(
        args.json,
        NAME,
        args.quick,
        {
            "rounds": rounds,
            "before": str(args.before) if args.before else None,
            "load_average": os.getloadavg()[0],
            "runs": runs,
            "goals": goals,
            "in_order": ordered,
        },
    )
    return 0 if ordered else 1


if __name__ == "__main__":
    sys.exit(main())
