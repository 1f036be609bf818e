"""What the loader's check of replace_class class statements costs a patch file's load.

A patch file naming ``replace_class`` is imported with a ``__build_class__`` that
works out what making each class would run (``hotpatch._classes_hooks``). This
loads the same patch files with that check and without it (the loader told there
is nothing to guard), in alternating rounds of one run: files of 10 class
patches of plain classes (the check runs, finds nothing), files of 10 function
patches (never checked), and a file whose patch class would run a base's
``__init_subclass__`` (refused: the source is parsed once more to name the
target). CPU time per file, the median of the rounds.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import parse_args, print_goal, print_table, write_json

import hotpatch._loader
from hotpatch import NotPatchable
from hotpatch._classes_hooks import Guard
from hotpatch._loader import load_patch_source

NAME = "class_guard"
CLASSES = 10
GOAL = 1.25  # a class patch file loads in at most this times the time without the check

MODULE = (
    "REGISTRY = []\n"
    "class Plugin:\n"
    "    def __init_subclass__(cls, **kw):\n"
    "        super().__init_subclass__(**kw)\n"
    "        REGISTRY.append(cls)\n"
    "class Base:\n    pass\n"
    + "".join(f"class C{i}(Base):\n    def m(self):\n        return {i}\n" for i in range(CLASSES))
    + "class Echo(Plugin):\n    pass\n"
    + "".join(f"def f{i}(x):\n    return x + {i}\n" for i in range(CLASSES))
)


def _head(n: int, module: str) -> str:
    return (
        f"from hotpatch import Patch\nfrom {module} import Base, Plugin\n"
        f"patch = Patch(version='1.0.{n + 1}', baseline='1.0')\n"
    )


def class_file(n: int, module: str) -> str:
    return _head(n, module) + "".join(
        f"@patch.replace_class('{module}:C{i}')\nclass C{i}(Base):\n"
        f"    def m(self):\n        return {i} * {n}\n"
        for i in range(CLASSES)
    )


def function_file(n: int, module: str) -> str:
    return _head(n, module) + "".join(
        f"@patch.replace('{module}:f{i}')\ndef f{i}(x):\n    return x * {n + i}\n"
        for i in range(CLASSES)
    )


def hooked_file(n: int, module: str) -> str:
    return _head(n, module) + (
        f"@patch.replace_class('{module}:Echo')\nclass Echo(Plugin):\n    pass\n"
    )


def _load(text: str, n: int) -> None:
    with contextlib.suppress(NotPatchable):
        load_patch_source(text.encode(), path=f"p{n}.py")


class _Unguarded:
    """What the loader is given in place of ``Guard``: nothing to guard, as before the check."""

    @staticmethod
    def of(text: str, name: str) -> None:
        return None


def _round(texts: Sequence[str], guarded: bool) -> float:
    """CPU seconds per file to load ``texts``, with the check or without it."""
    namespace = vars(hotpatch._loader)
    namespace["Guard"] = Guard if guarded else _Unguarded
    try:
        start = time.process_time()
        for n, text in enumerate(texts):
            _load(text, n)
        return (time.process_time() - start) / len(texts)
    finally:
        namespace["Guard"] = Guard


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(NAME, __doc__, argv)
    files, rounds = (20, 3) if args.quick else (200, 9)
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "bench_classes.py").write_text(MODULE)
        sys.path.insert(0, tmp)
        import bench_classes

        makers: dict[str, Callable[[int, str], str]] = {
            "class patch": class_file,
            "function patch": function_file,
            "refused (a hook)": hooked_file,
        }
        samples: dict[tuple[str, bool], list[float]] = {
            (what, guarded): [] for what in makers for guarded in (False, True)
        }
        for _ in range(rounds):
            for what, make in makers.items():
                texts = [make(n, "bench_classes") for n in range(files)]
                for guarded in (False, True):
                    samples[what, guarded].append(_round(texts, guarded))
        registered = len(bench_classes.REGISTRY) - 1  # the module's own Echo
    rows: list[dict[str, Any]] = []
    for what in makers:
        without = statistics.median(samples[what, False])
        with_check = statistics.median(samples[what, True])
        rows.append(
            {
                "what": what,
                "classes": CLASSES if what != "refused (a hook)" else 1,
                "without_us": without * 1e6,
                "with_us": with_check * 1e6,
                "ratio": with_check / without,
                "rounds": rounds,
                "files": files,
            }
        )
    print_table(
        f"loading a patch file, CPU per file (median of {rounds} rounds of {files} files)",
        ["what", "classes", "without", "with check", "ratio"],
        [
            (
                r["what"],
                r["classes"],
                f"{r['without_us']:.0f} us",
                f"{r['with_us']:.0f} us",
                f"{r['ratio']:.2f}x",
            )
            for r in rows
        ],
    )
    ratio = rows[0]["ratio"]
    goal = {
        "what": f"class patch file load CPU ({CLASSES} classes), with the check / without",
        "limit": GOAL,
        "ratio": ratio,
        "met": ratio <= GOAL,
    }
    print_goal(goal)
    # Without the check the hooked file's class statement ran the hook each time; with it, never.
    print(f"the hook ran for a patch class {registered} times, all in the rounds without the check")
    write_json(
        args.json,
        NAME,
        args.quick,
        {"runs": rows, "goals": [goal], "hook_ran_without_check": registered},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
