"""A state directory's cost: drop latency with the folder only read, against the folder written.

A real agent (``hotpatch.install``, journal on, ``verify=False`` so that the
verification child's cost does not hide the folder's) watches a folder; each
drop is a patch written beside it and renamed in, stacking on the ones before.
The clock runs from the rename to the drop's ``NAME.result.json`` being there
(filed). Two ways, measured in the same run and with the same drops:

* **folder** -- the default: outcome folders in the watched folder, each drop
  moved to ``applied/``;
* **state dir** -- ``install(..., state_dir=...)``: the outcomes in a state
  directory, each drop filed as a copy and left in the folder.

With a state directory every file taken stays in the folder, so each is run
with the folder empty at start and with ``KEPT`` files taken already (not
patches: each rejected once at start, then kept). The ratio is state dir over
folder, per number of files kept.

Usage: ``python benchmarks/state_dir.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import median, p99, parse_args, print_table, write_json

import hotpatch

NAME = "state_dir"
FILED_TIMEOUT_S = 120.0
KEPT = 200

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


def run(root: Path, *, drops: int, kept: int, state: bool) -> list[float]:
    """Rename -> filed, in ms, for ``drops`` drops with ``kept`` files taken before."""
    case = root / f"{'state' if state else 'folder'}-{kept}"
    modules, folder, outbox = case / "modules", case / "patches", case / "outbox"
    for path in (modules, outbox):
        path.mkdir(parents=True)
    folder.mkdir(mode=0o700)
    module = f"bench_state_dir_{'s' if state else 'f'}{kept}"
    (modules / f"{module}.py").write_text("def f():\n    return 0\n")
    sys.path.insert(0, str(modules))
    importlib.import_module(module)
    for i in range(kept):
        (folder / f"old{i:04d}.txt").write_text("not a patch\n")
    state_dir = case / "state" if state else None
    outcomes = state_dir or folder
    agent = hotpatch.install(
        "1.0",
        watch=folder,
        state_dir=state_dir,
        journal=case / "journal.json",
        verify=False,
        entry_points=False,
    )
    samples = []
    try:
        _wait(
            lambda: len(list((outcomes / "rejected").glob("*.result.json"))) >= kept,
            "the files already there",
        )
        for n in range(1, drops + 1):
            name = f"fix{n:04d}.py"
            (outbox / name).write_text(PATCH.format(n=n, module=module))
            result = outcomes / "applied" / f"{name}.result.json"
            start = time.perf_counter()
            os.rename(outbox / name, folder / name)
            _wait(result.exists, str(result))
            samples.append((time.perf_counter() - start) * 1e3)
    finally:
        agent.stop()
        sys.path.remove(str(modules))
        sys.modules.pop(module, None)
    return samples


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(NAME, __doc__, argv)
    # A line per drop, and a warning per file kept (each rejected once), would drown
    # the figures: errors only.
    logging.getLogger("hotpatch").setLevel(logging.ERROR)
    drops, kept_counts = (3, (0, 5)) if args.quick else (100, (0, KEPT))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="hotpatch-bench-") as tmp:
        root = Path(tmp)
        for kept in kept_counts:
            folder = run(root, drops=drops, kept=kept, state=False)
            state = run(root, drops=drops, kept=kept, state=True)
            rows.append(
                {
                    "kept": kept,
                    "drops": drops,
                    "folder_median_ms": median(folder),
                    "folder_p99_ms": p99(folder),
                    "state_dir_median_ms": median(state),
                    "state_dir_p99_ms": p99(state),
                    "ratio": median(state) / median(folder),
                }
            )
    print_table(
        f"rename into the folder -> filed, ms (Python {sys.version.split()[0]}, no verification)",
        ["files kept", "drops", "folder", "p99", "state dir", "p99", "ratio"],
        [
            [
                r["kept"],
                r["drops"],
                r["folder_median_ms"],
                r["folder_p99_ms"],
                r["state_dir_median_ms"],
                r["state_dir_p99_ms"],
                f"{r['ratio']:.2f}x",
            ]
            for r in rows
        ],
    )
    print("\nratio: state dir over folder, medians; both measured in this run.")
    write_json(args.json, NAME, args.quick, {"runs": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
