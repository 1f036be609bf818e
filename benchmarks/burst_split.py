"""Split bursts: how often one `mv` of 7 drops (versions unsorted) into a watched folder is split.

A real agent (``hotpatch.install``) watches a real folder; each move renames
7 patch files (versions 9, 3, 12, 1, 7, 10, 2 of a fresh range, in that
order) into it with one `mv` in a process of its own, and waits until all 7
are filed. A move is *split* when any of its drops is rejected: a lower
version came after a higher one was applied (the `mv` was descheduled between
two renames for longer than the folder waits). What it counts depends on the
machine's load: run it on a loaded machine, with ``--before PATH`` (another
hotpatch checkout) to compare two checkouts under the same load, their moves
interleaved in chunks.

Usage: ``python benchmarks/burst_split.py [--quick] [--moves N] [--verify off|on|both]
[--before PATH] [--json PATH]``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import arguments, print_table, write_json

NAME = "burst_split"
HERE = Path(__file__).resolve().parent.parent
VERSIONS = (9, 3, 12, 1, 7, 10, 2)  # the order of the renames
CHUNK = 10  # moves per checkout in a row, before the other checkout's


def parse(argv: Sequence[str] | None) -> Any:
    parser = arguments(NAME, __doc__, quick="2 moves per checkout and mode: checks it runs")
    parser.add_argument("--moves", type=int, default=100, help="moves per checkout and mode")
    parser.add_argument("--verify", choices=("off", "on", "both"), default="both")
    parser.add_argument(
        "--before", type=Path, metavar="PATH", help="another hotpatch checkout, run alike"
    )
    parser.add_argument("--one", nargs=3, metavar=("ROOT", "MOVES", "VERIFY"), help="internal")
    return parser.parse_args(argv)


def one(root: str, moves: str, verify: str) -> int:
    """In a process whose ``hotpatch`` is ``root``'s: ``moves`` moves; prints the counts."""
    import hotpatch  # the checkout's, from PYTHONPATH

    work = Path(tempfile.mkdtemp(prefix="hotpatch-split-"))
    (work / "lib").mkdir()
    (work / "lib" / "split_target.py").write_text("def f():\n    return 0\n")
    sys.path.insert(0, str(work / "lib"))
    folder, outbox = work / "patches", work / "outbox"
    folder.mkdir(mode=0o700)
    outbox.mkdir()
    agent = hotpatch.install("1.0", watch=folder, verify=verify == "on", control_socket=False)
    split = rejected = 0
    try:
        for move in range(int(moves)):
            names = []
            for i, n in enumerate(VERSIONS):
                version = 20 * move + n
                path = outbox / f"m{move}-p{i}.py"
                path.write_text(
                    "from hotpatch import Patch\n"
                    f'patch = Patch(version="1.0.{version}", baseline="1.0")\n'
                    '@patch.replace("split_target:f")\n'
                    f"def f():\n    return {version}\n"
                )
                names.append(path.name)
            subprocess.run(["mv", *[str(outbox / n) for n in names], str(folder)], check=True)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                filed = [
                    n
                    for n in names
                    if not (folder / n).exists()
                    and ((folder / "applied" / n).exists() or (folder / "rejected" / n).exists())
                ]
                if len(filed) == len(names):
                    break
                time.sleep(0.01)
            else:
                raise SystemExit(f"move {move} was not filed within 120 s")
            lost = sum((folder / "rejected" / n).exists() for n in names)
            rejected += lost
            split += bool(lost)
            time.sleep(0.2)  # the agent idle again when the next move comes
    finally:
        agent.stop()
    print(json.dumps({"moves": int(moves), "split": split, "rejected": rejected}))
    return 0


def chunk(root: Path, moves: int, verify: bool) -> dict[str, int]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.run(
        [sys.executable, __file__, "--one", str(root), str(moves), "on" if verify else "off"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{root}: {proc.stderr.strip()[-2000:]}")
    counts: dict[str, int] = json.loads(proc.stdout.strip().splitlines()[-1])
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.one:
        return one(*args.one)
    moves = 2 if args.quick else args.moves
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.verify]
    checkouts = {"now": HERE} | ({"before": args.before.resolve()} if args.before else {})
    totals: dict[tuple[str, bool], dict[str, int]] = {
        (c, v): {"moves": 0, "split": 0, "rejected": 0} for c in checkouts for v in modes
    }
    for verify in modes:
        done = 0
        while done < moves:
            size = min(CHUNK, moves - done)
            for checkout, root in checkouts.items():
                for key, value in chunk(root, size, verify).items():
                    totals[checkout, verify][key] += value
            done += size
    rows: list[list[object]] = []
    for (c, v), t in totals.items():
        share = f"{100 * t['split'] / t['moves']:.1f}"
        rows.append([c, "on" if v else "off", t["moves"], t["split"], share, t["rejected"]])
    print_table(
        f"moves of {len(VERSIONS)} drops split, load average {os.getloadavg()[0]:.1f}",
        ["checkout", "verification", "moves", "split", "split %", "rejected drops"],
        rows,
    )
    write_json(
        args.json,
        NAME,
        args.quick,
        {
            "before": str(args.before) if args.before else None,
            "load_average": list(os.getloadavg()),
            "runs": [{"checkout": c, "verify": v, **t} for (c, v), t in totals.items()],
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
