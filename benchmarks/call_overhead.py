"""Call overhead of a patched function against its replacement called directly.

Three shapes -- (a) ``f(x)``, (b) ``f(a, b, c=3)`` called as ``f(1, 2)`` (the
default is used), (c) a method ``box.m(x)`` -- each patched four ways, all on a
real module patched through a ``Registry`` from a real patch file:

* **inline** -- hotpatch installs the replacement's own code in the function.
* **forward, same layout** -- forced by a replacement that is a closure: a
  trampoline with the original's exact layout calls it (one extra frame).
* **forward, widened** -- forced by a replacement with an extra optional
  parameter: the trampoline takes ``(*args, **kwargs)`` so the new parameter
  is reachable, and passes them on with ``CALL_FUNCTION_EX``.
* **plain __code__ swap** -- ``f.__code__ = g.__code__`` by hand, no hotpatch:
  the floor any reassignment of ``__code__`` pays.

Each is compared with its unpatched twin: a ``def`` of the module holding the
replacement's code (for the closure, made by the same factory). Every form is
called through a local reference in a ``timeit`` loop of its own (one call site
per form, so each can specialise), the rounds are interleaved in a rotating
order, and the ratio is the median of the per-round ratios. Times include the
loop itself (shown as "empty loop").

What remains, by version (CPython):

* **3.11, 3.12** -- nothing, inline. Assigning ``__code__`` (or
  ``__defaults__``) zeroes the function's ``func_version``, and
  ``_PyFunction_GetVersionForCurrentState`` hands out a fresh one the next time
  a call site specialises, so call sites re-specialise (``CALL_PY_EXACT_ARGS``,
  ``CALL_PY_WITH_DEFAULTS``, ``LOAD_ATTR_METHOD_*``) and a patched call costs
  what the replacement costs.
* **3.13** -- ``func_version`` is set only by ``MAKE_FUNCTION`` (from the code
  object's ``co_version``). ``func_set_code``, ``func_set_defaults`` and
  ``func_set_kwdefaults`` clear it for good, and
  ``_PyFunction_GetVersionForCurrentState`` now just returns it, so every call
  site of a patched function stays on the generic ``CALL`` path (which still
  pushes the frame inline: no extra frame, no C recursion). That is the plain
  swap's cost, and inline sits on it. Nothing at the Python level can give an
  existing function a version again. Writing one with ``ctypes`` (calling the
  exported but private ``_PyFunction_SetVersion`` with the ``co_version`` of
  the new code, read at a hard-coded struct offset) does restore
  specialisation in an experiment, but it is not safe: private ABI that changes
  between releases (3.14 asserts the version is unset), the interpreter's
  version-to-code cache must be kept consistent by hand, and a free-threaded
  build needs a stop-the-world around it. hotpatch does not do it. The gap is
  largest for the cheapest calls (exact-argument calls: ``f(x)``, methods) and
  vanishes where the call was generic anyway (``f(1, 2)`` using a default).
* **forward, every version** -- one more Python call: the trampoline's frame
  (unspecialised on 3.13, like any patched function) plus the call to the
  replacement. A widened trampoline also packs and unpacks ``*args`` and
  ``**kwargs`` (a tuple and a dict per call), roughly three times a direct
  call; the dict is passed on as is, without the copy ``f(**k)`` makes.

Usage: ``python benchmarks/call_overhead.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import importlib
import sys
import tempfile
import textwrap
import timeit
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import median, parse_args, print_goal, print_table, write_json

NAME = "call_overhead"
MODULE = "bench_call_target"

# (case, original body, replacement body, parameters, call arguments)
CASES: list[tuple[str, str, str, str, str]] = [
    ("trivial f(x)", "return x + 1", "return x + 2", "x", "1"),
    ("f(a, b, c=3) as f(1, 2)", "return a + b + c", "return a + b - c", "a, b, c=3", "1, 2"),
    ("method box.m(x)", "return x + self.k", "return x - self.k", "self, x", "1"),
]
# How each case is measured: form -> the twin it is compared with.
PAIRS = {
    "inline": "direct",
    "closure": "closure_direct",
    "widened": "widened_direct",
    "swap": "direct",
}
LABELS = {
    "inline": "inline",
    "closure": "forward, same layout",
    "widened": "forward, widened",
    "swap": "plain __code__ swap",
}
FORMS = tuple(dict.fromkeys([*PAIRS, *PAIRS.values()]))
EXTRA = ", _extra=None"  # a replacement with this parameter cannot be inlined

# On 3.13 a reassigned __code__ leaves call sites unspecialised (see the docstring).
GOAL = 1.35 if sys.version_info >= (3, 13) else 1.05


def _is_method(index: int) -> bool:
    return CASES[index][0].startswith("method")


def _closure(name: str, params: str, body: str, indent: str = "") -> list[str]:
    """A factory making ``name`` as a closure over ``k`` (0): a replacement inline refuses."""
    return [
        f"{indent}def _make_{name}():",
        f"{indent}    k = 0",
        f"{indent}    def {name}({params}):",
        f"{indent}        {body} + k",
        f"{indent}    return {name}",
        "",
    ]


def _target_source() -> str:
    functions: list[str] = []
    methods: list[str] = []
    for index, (_, original, replacement, params, _) in enumerate(CASES):
        out = methods if _is_method(index) else functions
        bodies = {
            "inline": (params, original),
            "direct": (params, replacement),
            "closure": (params, original),
            "widened": (params, original),
            "widened_direct": (params + EXTRA, replacement),
            "swap": (params, original),
        }
        for form, (signature, body) in bodies.items():
            out.append(f"def c{index}_{form}({signature}):\n    {body}\n")
        # The closure twin: the same factory as in the patch file, called here.
        functions.append("\n".join(_closure(f"c{index}_closure_direct", params, replacement)))
        out.append(f"c{index}_closure_direct = _make_c{index}_closure_direct()\n")
    box = "class Box:\n    def __init__(self):\n        self.k = 1\n\n" + "\n".join(
        textwrap.indent(m, "    ") for m in methods
    )
    return "\n\n".join([*functions, box])


def _patch_source() -> str:
    lines = ["from hotpatch import Patch", "", "patch = Patch(version='1.1', baseline='1.0')", ""]
    for index, (_, _, replacement, params, _) in enumerate(CASES):
        owner = "Box." if _is_method(index) else ""
        for form, signature in (("inline", params), ("widened", params + EXTRA)):
            lines += [
                f"@patch.replace('{MODULE}:{owner}c{index}_{form}')",
                f"def c{index}_{form}({signature}):",
                f"    {replacement}",
                "",
            ]
        lines += _closure(f"c{index}_closure", params, replacement)
        lines += [
            f"patch.replace('{MODULE}:{owner}c{index}_closure')(_make_c{index}_closure())",
            "",
        ]
    return "\n".join(lines)


def _timer(module: Any, index: int, form: str) -> timeit.Timer:
    """A loop of its own (its own call site) calling one form through a local."""
    name, args = f"c{index}_{form}", CASES[index][4]
    if _is_method(index):
        return timeit.Timer(f"box.{name}({args})", "box = __box", globals={"__box": module.Box()})
    return timeit.Timer(f"f({args})", "f = __f", globals={"__f": getattr(module, name)})


def _setup(folder: Path) -> tuple[Any, Any, dict[str, str]]:
    """Import the target module, swap by hand, apply the patch: (module, registry, modes)."""
    import hotpatch

    (folder / f"{MODULE}.py").write_text(_target_source())
    (folder / "call_overhead_patch.py").write_text(_patch_source())
    sys.path.insert(0, str(folder))
    importlib.invalidate_caches()
    module = importlib.import_module(MODULE)
    for index in range(len(CASES)):
        owner = module.Box if _is_method(index) else module
        swap = getattr(owner, f"c{index}_swap")
        swap.__code__ = getattr(owner, f"c{index}_direct").__code__
    registry = hotpatch.Registry("1.0")
    result = registry.apply(hotpatch.load_patch(folder / "call_overhead_patch.py"))
    for index in range(len(CASES)):  # the patch took: each form runs the new code
        owner = module.Box() if _is_method(index) else module
        args = [1, 2] if CASES[index][4] == "1, 2" else [1]
        want = getattr(owner, f"c{index}_direct")(*args)
        for form in PAIRS:
            got = getattr(owner, f"c{index}_{form}")(*args)
            if got != want:
                msg = f"c{index}_{form} did not switch: {got} != {want}"
                raise RuntimeError(msg)
    return module, registry, dict(result.modes)


def measure(rounds: int, number: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="hotpatch-bench-") as tmp:
        module, registry, modes = _setup(Path(tmp))
        try:
            timers = {
                (index, form): _timer(module, index, form)
                for index in range(len(CASES))
                for form in FORMS
            }
            timers[(-1, "loop")] = timeit.Timer("pass")
            for timer in timers.values():  # warm up: let every call site specialise
                timer.timeit(max(number // 10, 100))
            samples: dict[tuple[int, str], list[float]] = {k: [] for k in timers}
            order = list(timers)
            for r in range(rounds):  # interleaved, in a rotating order
                shift = r % len(order)
                for k in order[shift:] + order[:shift]:
                    samples[k].append(timers[k].timeit(number) / number * 1e9)
        finally:
            registry.rollback(to="1.0")
            sys.path.remove(tmp)
            sys.modules.pop(MODULE, None)
    return _summarise(samples, modes)


def _ratio(samples: dict[tuple[int, str], list[float]], index: int, a: str, b: str) -> float:
    return median([x / y for x, y in zip(samples[(index, a)], samples[(index, b)], strict=True)])


def _summarise(
    samples: dict[tuple[int, str], list[float]], modes: dict[str, str]
) -> dict[str, Any]:
    cases: dict[str, Any] = {}
    for index, (name, *_) in enumerate(CASES):
        owner = "Box." if _is_method(index) else ""
        cases[name] = {
            form: {
                "patched_ns": median(samples[(index, form)]),
                "unpatched_ns": median(samples[(index, twin)]),
                "ratio": _ratio(samples, index, form, twin),
                "mode": modes.get(f"{MODULE}:{owner}c{index}_{form}", "none (by hand)"),
            }
            for form, twin in PAIRS.items()
        }
    ratio = cases[CASES[0][0]]["inline"]["ratio"]
    return {
        "unit": "median ns per call, loop included; ratios are medians of per-round ratios",
        "loop_ns": median(samples[(-1, "loop")]),
        "cases": cases,
        "goal": {
            "what": "inline ratio of the trivial function",
            "limit": GOAL,
            "ratio": ratio,
            "met": ratio <= GOAL,
        },
    }


def report(results: dict[str, Any]) -> None:
    rows = [
        [name, LABELS[form], f["patched_ns"], f["unpatched_ns"], f"{f['ratio']:.3f}x"]
        for name, forms in results["cases"].items()
        for form, f in forms.items()
    ]
    print_table(
        f"call overhead, Python {sys.version.split()[0]} (median ns per call, "
        f"loop included; empty loop {results['loop_ns']:.1f} ns)",
        ["case", "form", "patched", "unpatched twin", "ratio"],
        rows,
    )
    print_goal(results["goal"])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(NAME, __doc__, argv)
    rounds, number = (3, 2_000) if args.quick else (31, 200_000)
    results = measure(rounds, number)
    report(results)
    write_json(args.json, NAME, args.quick, {"rounds": rounds, "number": number, **results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
