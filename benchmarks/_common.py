"""Shared helpers for the benchmarks: command line, statistics, the table, the JSON file, and
the stacked patches several benchmarks apply."""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
CHECKOUT = Path(__file__).resolve().parent.parent  # the hotpatch these benchmarks belong to
PY = f"py{sys.version_info.major}{sys.version_info.minor}"


def arguments(
    name: str, doc: str | None, quick: str = "tiny iteration counts: checks it runs, not speed"
) -> argparse.ArgumentParser:
    """The parser every benchmark starts from: ``--quick`` (``quick`` says what it makes
    small, for the smoke test) and ``--json PATH``; a benchmark adds its own options."""
    parser = argparse.ArgumentParser(
        prog=f"benchmarks/{name}.py",
        description=(doc or "").split("\n\n")[0],
    )
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument(
        "--json",
        type=Path,
        default=RESULTS / f"{name}-{PY}.json",
        metavar="PATH",
        help=f"where the results go (default: benchmarks/results/{name}-{PY}.json)",
    )
    return parser


def parse_args(name: str, doc: str | None, argv: Sequence[str] | None) -> argparse.Namespace:
    """``--quick`` and ``--json PATH`` only."""
    return arguments(name, doc).parse_args(argv)


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples)


def p99(samples: Sequence[float]) -> float:
    """The 99th percentile, nearest rank (with few samples: the largest)."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain-text table: figures right-aligned, text left-aligned."""
    cells = [[str(h) for h in headers], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    right = [all(_numeric(row[i]) for row in rows) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right, strict=True)
        )

    print(f"\n{title}")
    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(line(row))


def value_goal_line(goal: dict[str, Any], *, label: str = "", digits: int = 2) -> str:
    """``goal LABEL: WHAT <= LIMIT: VALUE, met`` (or MISSED) from a goal holding its measured
    ``value`` (``None``: it did not start)."""
    value = "did not start" if goal["value"] is None else f"{goal['value']:.{digits}f}"
    return (
        f"goal{label}: {goal['what']} <= {goal['limit']:g}: {value}, "
        f"{'met' if goal['met'] else 'MISSED'}"
    )


def print_goal(goal: dict[str, Any], prefix: str = "\n") -> None:
    """``goal: WHAT <= LIMITx: RATIOx, met`` (or MISSED) from a results' ``goal``."""
    print(
        f"{prefix}goal: {goal['what']} <= {goal['limit']:.2f}x: {goal['ratio']:.3f}x, "
        f"{'met' if goal['met'] else 'MISSED'}"
    )


def _numeric(value: object) -> bool:
    return isinstance(value, int | float) or (isinstance(value, str) and value[:1].isdigit())


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "system": platform.system(),
        "cpus": os.cpu_count(),
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def write_json(path: Path, name: str, quick: bool, results: dict[str, Any]) -> None:
    """Write ``results`` (with the environment) to ``path``, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"benchmark": name, "quick": quick, "environment": environment(), **results}
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nresults written to {path}")


def stacked_module(targets: int) -> str:
    """A module of ``targets`` functions ``f0``.. that stacked patches replace."""
    return "".join(f"def f{i}(x, y=1):\n    return x + y + {i}\n\n" for i in range(targets))


def stacked_patch(module: str, n: int, targets: int) -> str:
    """Patch ``1.0.n``: a new body for every function of ``stacked_module``."""
    head = (
        "from hotpatch import Patch\n\n"
        f"patch = Patch(version='1.0.{n}', baseline='1.0', summary='level {n}')\n\n"
    )
    return head + "".join(
        f"@patch.replace('{module}:f{i}')\ndef f{i}(x, y=1):\n    return x * y + {n + i}\n\n"
        for i in range(targets)
    )


# -- another checkout, run alike: the figures before a change, in the same run -----------------


def add_before(parser: argparse.ArgumentParser) -> None:
    """``--before PATH``: another hotpatch checkout, each of its runs beside this one's."""
    parser.add_argument(
        "--before",
        type=Path,
        metavar="PATH",
        help="another hotpatch checkout, run alike in the same rounds (the figures before a "
        "change; e.g. `git worktree add PATH COMMIT`)",
    )


def checkouts(before: Path | None) -> dict[str, Path]:
    """The checkouts a run measures: ``now`` (this one) and, given, ``before``."""
    return {"now": CHECKOUT} | ({"before": before.resolve()} if before is not None else {})


def run_in_checkout(script: str, root: Path, *args: str) -> dict[str, Any]:
    """``script --one ROOT ARGS...`` in a new process: one run with the hotpatch of ``root``.

    The child imports hotpatch through ``import_checkout(ROOT)`` and prints its
    figures as a JSON object on its last line, ``hotpatch`` naming the checkout
    it ran: a run of another hotpatch than ``root``'s is an error, not a figure.
    """
    proc = subprocess.run(
        [sys.executable, str(Path(script).resolve()), "--one", str(root), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        msg = f"{Path(script).name} {' '.join(args)} (hotpatch of {root}) failed:\n{proc.stderr}"
        raise RuntimeError(msg)
    result: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    if Path(result["hotpatch"]) != root:
        msg = f"the run used the hotpatch of {result['hotpatch']}, not of {root}"
        raise RuntimeError(msg)
    return result


def import_checkout(root: str) -> str:
    """In a ``--one`` child: hotpatch imported from ``root``; the checkout it came from."""
    sys.path.insert(0, root)
    import hotpatch

    return str(Path(hotpatch.__file__).resolve().parent.parent)
