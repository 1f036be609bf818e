"""What the health gate costs a patched function: during its probation, and after it.

Issue 7 asks that counting may cost during probation only: after it, calls must
be back to the steady-state cost. Three cases -- a trivial ``f(x)``, a
function doing some work (a loop of eight steps, about fifty bytecodes) and a
function that raises for one input in eight (caught by the caller) -- each
patched three times from real patch files on a real module, through three
``Registry`` objects:

* **plain** -- patched, no health gate: the steady state every ratio is against.
* **probation** -- patched under a ``HealthGate`` with a one-hour window, so it
  stays on probation while measured (``max_error_rate=1.0``: the raising case
  is counted, never rolled back).
* **after** -- patched under a ``HealthGate`` with a short window, measured once
  ``gate.status()`` is empty (probation confirmed and counting stopped).

The gate counts through ``sys.monitoring`` on 3.13+ (a local ``PY_START``
event on the patch's code objects, and the global ``PY_UNWIND`` event while any
probation runs) and through a counting trampoline (``Registry.wrap``) on 3.11
and 3.12; the table names which one ran. (On 3.12 local events would strip the
code's superinstructions for good: after probation the work case ran 1.12x,
the trivial one 1.05x, which is why the gate does not use them there.)

Two phases, each interleaving its forms in rounds of rotating order (ratios are
medians of per-round ratios): **during** -- plain, probation and after, while
the probation patch is on probation; **quiet** -- the probation is closed
(``gate.close()``), so nothing is watched anywhere, and plain and after are
measured again. On 3.13 the global ``PY_UNWIND`` event is process-wide: while any
patch is on probation, every exception unwinding any frame calls the gate's
callback (which finds the code unwatched and returns), so the raising case's
plain and after forms pay it too in the during phase; the quiet phase shows
the state with no probation anywhere. Times include the ``timeit`` loop (and,
for the raising case, its ``try``/``except`` and counter), shown as "loop".

Usage: ``python benchmarks/health_gate.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import importlib
import sys
import tempfile
import timeit
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import median, parse_args, print_goal, print_table, write_json

NAME = "health_gate"
MODULE = "bench_health_gate_target"

# (case, original body, replacement body, timeit statement); each takes one parameter x
CASES: list[tuple[str, str, str, str]] = [
    ("trivial f(x)", "return x + 1", "return x + 2", "f(1)"),
    (
        "work (8-step loop)",
        "total = 0\n    for i in range(8):\n        total += i * x\n    return total",
        "total = 1\n    for i in range(8):\n        total += i * x\n    return total",
        "f(3)",
    ),
    (
        "raises 1 call in 8",
        "if x % 8 == 0:\n        raise ValueError(x)\n    return x + 1",
        "if x % 8 == 0:\n        raise ValueError(x)\n    return x + 2",
        "try:\n    f(n)\nexcept ValueError:\n    pass\nn += 1",
    ),
]
FORMS = ("plain", "probation", "after")
QUIET_FORMS = ("plain", "after")
LONG_WINDOW_S = 3600.0
SHORT_WINDOW_S = 0.2
# (c)/(a): after probation a call must cost what it costs without the gate.
AFTER_LIMIT = 1.05


def _target_source() -> str:
    return "\n\n".join(
        f"def c{index}_{form}(x):\n    {original}\n"
        for index, (_, original, _, _) in enumerate(CASES)
        for form in FORMS
    )


def _patch_source(form: str) -> str:
    lines = ["from hotpatch import Patch", "", "patch = Patch(version='1.1', baseline='1.0')", ""]
    for index, (_, _, replacement, _) in enumerate(CASES):
        lines += [
            f"@patch.replace('{MODULE}:c{index}_{form}')",
            f"def c{index}_{form}(x):",
            f"    {replacement}",
            "",
        ]
    return "\n".join(lines)


def _expected(index: int, x: int) -> int:
    """What the replacement of case ``index`` returns for ``x`` (not a multiple of 8)."""
    if index == 1:
        return 1 + sum(i * x for i in range(8))
    return x + 2


def _timer(module: Any, index: int, form: str) -> timeit.Timer:
    """A loop of its own (its own call site) calling one form through a local."""
    setup = "f = __f; n = 0"
    return timeit.Timer(
        CASES[index][3], setup, globals={"__f": getattr(module, f"c{index}_{form}")}
    )


class _Setup:
    """The module, its three patches and the two gates."""

    def __init__(self, folder: Path) -> None:
        import hotpatch
        from hotpatch_plugins.health_gate import HealthGate

        (folder / f"{MODULE}.py").write_text(_target_source())
        for form in FORMS:
            (folder / f"patch_{form}.py").write_text(_patch_source(form))
        sys.path.insert(0, str(folder))
        importlib.invalidate_caches()
        self.module = importlib.import_module(MODULE)
        self.short = HealthGate(window_s=SHORT_WINDOW_S, max_error_rate=1.0)
        self.long = HealthGate(window_s=LONG_WINDOW_S, max_error_rate=1.0)
        self.registries = {
            "plain": hotpatch.Registry("1.0"),
            "after": hotpatch.Registry("1.0", plugins=[self.short]),
            "probation": hotpatch.Registry("1.0", plugins=[self.long]),
        }
        self.modes: dict[str, str] = {}
        self.mechanisms: dict[str, str] = {}
        for form in ("after", "plain", "probation"):  # "after" first: its window runs out
            result = self.registries[form].apply(hotpatch.load_patch(folder / f"patch_{form}.py"))
            self.modes.update(result.modes)
            if form == "after":
                self.mechanisms["after"] = self._mechanism(self.short)
                if not self.short.wait(timeout=60) or self.short.status():
                    msg = f"the {SHORT_WINDOW_S} s probation did not end within 60 s"
                    raise RuntimeError(msg)
        self.mechanisms["probation"] = self._mechanism(self.long)
        self.check()

    @staticmethod
    def _mechanism(gate: Any) -> str:
        status = gate.status()
        if list(status) != ["1.1"]:
            msg = f"expected patch 1.1 on probation, the gate reports {status}"
            raise RuntimeError(msg)
        return str(status["1.1"]["mechanism"])

    def check(self) -> None:
        """Every form runs the replacement (and the raising case raises)."""
        for index in range(len(CASES)):
            for form in FORMS:
                f = getattr(self.module, f"c{index}_{form}")
                if f(3) != _expected(index, 3):
                    msg = f"c{index}_{form} did not switch: {f(3)} != {_expected(index, 3)}"
                    raise RuntimeError(msg)
                if index == 2:
                    try:
                        f(8)
                    except ValueError:
                        continue
                    msg = f"c{index}_{form}(8) did not raise"
                    raise RuntimeError(msg)

    def close(self, folder: Path) -> None:
        self.long.close()
        self.short.close()
        for registry in self.registries.values():
            registry.rollback(to="1.0")
        sys.path.remove(str(folder))
        sys.modules.pop(MODULE, None)


def _rounds(
    timers: dict[tuple[int, str], timeit.Timer], rounds: int, number: int
) -> dict[tuple[int, str], list[float]]:
    """ns per call of each timer, ``rounds`` times, interleaved in a rotating order."""
    for timer in timers.values():  # warm up: let every call site specialise
        timer.timeit(max(number // 10, 100))
    samples: dict[tuple[int, str], list[float]] = {k: [] for k in timers}
    order = list(timers)
    for r in range(rounds):
        shift = r % len(order)
        for k in order[shift:] + order[:shift]:
            samples[k].append(timers[k].timeit(number) / number * 1e9)
    return samples


def measure(rounds: int, number: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="hotpatch-bench-") as tmp:
        folder = Path(tmp)
        setup = _Setup(folder)
        try:
            timers = {
                (index, form): _timer(setup.module, index, form)
                for index in range(len(CASES))
                for form in FORMS
            }
            timers[(-1, "loop")] = timeit.Timer("pass")
            during = _rounds(timers, rounds, number)
            calls = setup.long.status()["1.1"]["calls"]
            errors = setup.long.status()["1.1"]["errors"]
            setup.long.close()  # the probation ends: nothing is watched anywhere now
            if setup.long.status():
                msg = f"the long probation did not end on close(): {setup.long.status()}"
                raise RuntimeError(msg)
            setup.check()
            quiet = _rounds(
                {k: t for k, t in timers.items() if k[1] in (*QUIET_FORMS, "loop")},
                rounds,
                number,
            )
        finally:
            setup.close(folder)
    return _summarise(during, quiet, setup, calls, errors)


def _ratio(samples: dict[tuple[int, str], list[float]], index: int, form: str) -> float:
    pairs = zip(samples[(index, form)], samples[(index, "plain")], strict=True)
    return median([x / y for x, y in pairs])


def _summarise(
    during: dict[tuple[int, str], list[float]],
    quiet: dict[tuple[int, str], list[float]],
    setup: _Setup,
    calls: int,
    errors: int,
) -> dict[str, Any]:
    cases: dict[str, Any] = {}
    for index, (name, *_) in enumerate(CASES):
        cases[name] = {
            "during": {
                form: {
                    "ns": median(during[(index, form)]),
                    "ratio": _ratio(during, index, form),
                }
                for form in FORMS
            },
            "quiet": {
                form: {"ns": median(quiet[(index, form)]), "ratio": _ratio(quiet, index, form)}
                for form in QUIET_FORMS
            },
            "modes": {form: setup.modes[f"{MODULE}:c{index}_{form}"] for form in FORMS},
        }
    worst = max(case["quiet"]["after"]["ratio"] for case in cases.values())
    return {
        "unit": "median ns per call, loop included; ratios are medians of per-round ratios "
        "against the plain form",
        "mechanism": setup.mechanisms,
        "loop_ns": {"during": median(during[(-1, "loop")]), "quiet": median(quiet[(-1, "loop")])},
        "probation_counted": {"calls": calls, "errors": errors},
        "cases": cases,
        "goal": {
            "what": "after probation / plain, no probation anywhere (worst case)",
            "limit": AFTER_LIMIT,
            "ratio": worst,
            "met": worst <= AFTER_LIMIT,
        },
    }


def report(results: dict[str, Any]) -> None:
    rows = []
    for name, case in results["cases"].items():
        during, quiet = case["during"], case["quiet"]
        rows.append(
            [
                name,
                during["plain"]["ns"],
                during["probation"]["ns"],
                f"{during['probation']['ratio']:.3f}x",
                during["after"]["ns"],
                f"{during['after']['ratio']:.3f}x",
                quiet["plain"]["ns"],
                quiet["after"]["ns"],
                f"{quiet['after']['ratio']:.3f}x",
            ]
        )
    mechanism = results["mechanism"]
    loop = results["loop_ns"]
    print_table(
        f"health gate, Python {sys.version.split()[0]}, counting through "
        f"{mechanism['probation']} (median ns per call, loop included; empty loop "
        f"{loop['during']:.1f} ns)",
        [
            "case",
            "(a)plain",
            "(b)probation",
            "(b)/(a)",
            "(c)after",
            "(c)/(a)",
            "quiet:(a)",
            "quiet:(c)",
            "(c)/(a)",
        ],
        rows,
    )
    counted = results["probation_counted"]
    print(
        f"\nduring: a patch on probation in the process ({counted['calls']:,} calls and "
        f"{counted['errors']:,} errors counted); quiet: none on probation"
    )
    print_goal(results["goal"], prefix="")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(NAME, __doc__, argv)
    rounds, number = (3, 2_000) if args.quick else (31, 100_000)
    results = measure(rounds, number)
    report(results)
    write_json(args.json, NAME, args.quick, {"rounds": rounds, "number": number, **results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
