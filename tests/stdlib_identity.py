"""Run in a child: every function of a standard library module patched with its own source.

    python tests/stdlib_identity.py MODULE TESTS [--break NAME]

Code nobody here wrote, with tests nobody here wrote: each function and method
defined in MODULE (module functions, methods, static and class methods,
property getters, setters and deleters, each function once) is replaced by a
hot patch holding its own source, as a user would copy it into a patch file to
fix it. CPython's own tests of the module (TESTS, from the ``test`` package)
run three times: before, with the patch applied, and after rolling it back.
A patch that changes nothing must change no test's outcome, and the rollback
must put back every original code object.

Each target is checked alone first (``Registry.check``), so a refusal names
its target; the targets that pass go in as one patch. ``--break NAME`` makes
the replacement of NAME raise instead, to show the tests see the patch.

Prints one JSON object: ``targets``, ``hot``, ``refused`` (target -> why),
``switched`` (hot targets running patched code), the failing test ids of each
run (``failed_before``, ``failed_patched``, ``failed_after``), ``tests_run``
and ``not_restored`` (targets whose code rollback did not put back).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import json
import sys
import tempfile
import textwrap
import types
import unittest
from pathlib import Path
from typing import Any

import hotpatch

Target = tuple[str, str | None, types.FunctionType]  # qualname, class, function


def targets_of(module: types.ModuleType) -> list[Target]:
    """The functions ``module`` defines, each once, with the qualname a patch names."""
    name = module.__name__
    files = {module.__file__, f"<frozen {name}>"}

    def own(obj: object) -> bool:
        return (
            isinstance(obj, types.FunctionType)
            and obj.__module__ == name
            and obj.__code__.co_filename in files
        )

    found: list[Target] = []
    for attr, obj in vars(module).items():
        if own(obj) and obj.__qualname__ == attr:
            found.append((attr, None, obj))
        elif isinstance(obj, type) and obj.__module__ == name and obj.__qualname__ == attr:
            found.extend(_members(obj, own))
    # A patch reaches a function under functools.wraps wrappers (__wrapped__): so do we.
    found = [(q, cls, inspect.unwrap(f)) for q, cls, f in found]
    seen: set[int] = set()
    return [t for t in found if own(t[2]) and not (id(t[2]) in seen or seen.add(id(t[2])))]


def _members(cls: type, own: Any) -> list[Target]:
    found: list[Target] = []
    for attr, obj in cls.__dict__.items():
        func = obj.__func__ if isinstance(obj, (staticmethod, classmethod)) else obj
        if own(func) and func.__qualname__ == f"{cls.__name__}.{attr}":
            found.append((f"{cls.__name__}.{attr}", cls.__name__, func))
        elif isinstance(obj, property):
            for part, fn in (("", obj.fget), (".setter", obj.fset), (".deleter", obj.fdel)):
                if own(fn) and fn.__qualname__ == f"{cls.__name__}.{fn.__name__}":
                    found.append((f"{cls.__name__}.{attr}{part}", cls.__name__, fn))
    return found


class Sources:
    """Each def of a module's source, found by the line its code starts on."""

    def __init__(self, module: types.ModuleType) -> None:
        assert module.__file__ is not None
        self.lines = Path(module.__file__).read_text(encoding="utf-8").splitlines(keepends=True)
        self.defs: dict[int, ast.FunctionDef | ast.AsyncFunctionDef] = {}
        for node in ast.walk(ast.parse("".join(self.lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([d.lineno for d in node.decorator_list] + [node.lineno])
                self.defs[first] = node

    def plain(self, func: types.FunctionType) -> str:
        """The def of ``func`` as written, without its decorators."""
        node = self.defs[func.__code__.co_firstlineno]
        return textwrap.dedent("".join(self.lines[node.lineno - 1 : node.end_lineno]))

    def broken(self, func: types.FunctionType) -> str:
        """The def of ``func`` with a body that raises."""
        node = self.defs[func.__code__.co_firstlineno]
        head = ast.parse(self.plain(func)).body[0]
        assert isinstance(head, (ast.FunctionDef, ast.AsyncFunctionDef))
        head.body = ast.parse(f"raise RuntimeError('{node.name} broken on purpose')").body
        if any(isinstance(n, (ast.Yield, ast.YieldFrom)) for n in ast.walk(node)):
            head.body.append(ast.parse("yield").body[0])  # stays a generator
        return ast.unparse(head) + "\n"


class PatchFiles:
    """Patch files in a temporary folder, each a new version on baseline 1.0."""

    def __init__(self, module: types.ModuleType, sources: Sources, broken: str | None) -> None:
        self.module, self.sources, self.broken = module, sources, broken
        self.folder = Path(tempfile.mkdtemp(prefix="stdlib-identity-"))
        self.count = 0

    def load(self, targets: list[Target], version: str) -> hotpatch.Patch:
        name = self.module.__name__
        # Default values and annotations are evaluated in the patch file: give it the
        # module's names, as a fix copied into a patch file imports what it needs.
        parts = [
            "from hotpatch import Patch\n"
            f"import {name} as _module\n"
            "globals().update({k: v for k, v in vars(_module).items() if k[:2] != '__'})\n"
            f"patch = Patch(version={version!r}, baseline='1.0')\n\n"
        ]
        for qualname, cls, func in targets:
            write = self.sources.broken if qualname == self.broken else self.sources.plain
            text = f"@patch.replace({name + ':' + qualname!r})\n" + write(func)
            if cls is not None:
                # The holder class mangles private names as the target class does;
                # "__X" is not a name the module itself uses.
                text = f"class __{cls}:\n" + textwrap.indent(text, "    ")
            parts.append(text + "\n")
        self.count += 1
        path = self.folder / f"patch_{self.count}.py"
        path.write_text("".join(parts), encoding="utf-8")
        return hotpatch.load_patch(path)


def failing(tests: str) -> tuple[int, list[str]]:
    """Run ``tests``: how many ran and the ids of those that failed or erred."""
    result = unittest.TestResult()
    unittest.defaultTestLoader.loadTestsFromName(tests).run(result)
    return result.testsRun, sorted(test.id() for test, _ in result.failures + result.errors)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("module")
    parser.add_argument("tests")
    parser.add_argument("--break", dest="broken")
    args = parser.parse_args()
    module = importlib.import_module(args.module)
    targets = targets_of(module)
    files = PatchFiles(module, Sources(module), args.broken)
    originals = {qualname: func.__code__ for qualname, _, func in targets}

    registry = hotpatch.Registry("1.0")
    hot: list[Target] = []
    refused: dict[str, str] = {}
    for target in targets:
        try:
            report = registry.check(files.load([target], "1.0.1"))
        except hotpatch.PatchError as exc:
            refused[target[0]] = f"{type(exc).__name__}: {exc}"
            continue
        if report.hot:
            hot.append(target)
        else:
            refused[target[0]] = "; ".join(report.reasons)

    run_before, failed_before = failing(args.tests)
    registry.apply(files.load(hot, "1.0.1"))
    switched = sum(func.__code__ is not originals[qualname] for qualname, _, func in hot)
    run_patched, failed_patched = failing(args.tests)
    registry.rollback(to="1.0")
    run_after, failed_after = failing(args.tests)
    print(
        json.dumps(
            {
                "targets": len(targets),
                "hot": len(hot),
                "refused": refused,
                "switched": switched,
                "tests_run": [run_before, run_patched, run_after],
                "failed_before": failed_before,
                "failed_patched": failed_patched,
                "failed_after": failed_after,
                "not_restored": sorted(q for q, _, f in targets if f.__code__ is not originals[q]),
            }
        )
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
