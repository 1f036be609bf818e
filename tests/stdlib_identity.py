"""Run in a child: every function of a standard library module patched with its own source.

    python tests/stdlib_identity.py MODULE TESTS [--break NAME] [--classes]

Code nobody here wrote, with tests nobody here wrote: each function and method
defined in MODULE (module functions, methods, static and class methods,
property getters, setters and deleters, each function once) is replaced by a
hot patch holding its own source, as a user would copy it into a patch file to
fix it. CPython's own tests of the module (TESTS, from the ``test`` package)
run three times: before, with the patch applied, and after rolling it back.
A patch that changes nothing must change no test's outcome, and the rollback
must put back every original code object.

With ``--classes`` the targets are the module's classes instead, each replaced
whole (``replace_class``) by its own class statement, decorators and all.

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


def classes_of(module: types.ModuleType, sources: Sources) -> list[ast.ClassDef]:
    """The class statements at the top of ``module`` that made a class it still holds."""
    return [
        node
        for node in ast.parse("".join(sources.lines)).body
        if isinstance(node, ast.ClassDef)
        and isinstance(cls := getattr(module, node.name, None), type)
        and cls.__module__ == module.__name__
        and cls.__qualname__ == node.name
    ]


def functions_of(cls: type) -> dict[str, types.CodeType]:
    """The code of each function a class's own members are made of, by member."""
    found: dict[str, types.CodeType] = {}
    for attr, obj in vars(cls).items():
        parts = [obj.__func__] if isinstance(obj, (staticmethod, classmethod)) else [obj]
        if isinstance(obj, property):
            parts = [obj.fget, obj.fset, obj.fdel]
        for n, part in enumerate(parts):
            func = inspect.unwrap(part) if callable(part) else part
            if isinstance(func, types.FunctionType):
                found[f"{attr}/{n}"] = func.__code__
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
        parts = [self._header(version)]
        for qualname, cls, func in targets:
            write = self.sources.broken if qualname == self.broken else self.sources.plain
            text = f"@patch.replace({name + ':' + qualname!r})\n" + write(func)
            if cls is not None:
                # The holder class mangles private names as the target class does;
                # "__X" is not a name the module itself uses.
                text = f"class __{cls}:\n" + textwrap.indent(text, "    ")
            parts.append(text + "\n")
        return self._write(parts)

    def load_classes(self, nodes: list[ast.ClassDef], version: str) -> hotpatch.Patch:
        name = self.module.__name__
        parts = [self._header(version)]
        for node in nodes:
            first = min([d.lineno for d in node.decorator_list] + [node.lineno])
            text = "".join(self.sources.lines[first - 1 : node.end_lineno])
            parts.append(f"@patch.replace_class({name + ':' + node.name!r})\n{text}\n")
        return self._write(parts)

    def _header(self, version: str) -> str:
        # Default values and annotations are evaluated in the patch file: give it the
        # module's names, as a fix copied into a patch file imports what it needs.
        return (
            "from hotpatch import Patch\n"
            f"import {self.module.__name__} as _module\n"
            "globals().update({k: v for k, v in vars(_module).items() if k[:2] != '__'})\n"
            f"patch = Patch(version={version!r}, baseline='1.0')\n\n"
        )

    def _write(self, parts: list[str]) -> hotpatch.Patch:
        self.count += 1
        path = self.folder / f"patch_{self.count}.py"
        path.write_text("".join(parts), encoding="utf-8")
        return hotpatch.load_patch(path)


def failing(tests: str) -> tuple[int, list[str]]:
    """Run ``tests``: how many ran and the ids of those that failed or erred."""
    result = unittest.TestResult()
    unittest.defaultTestLoader.loadTestsFromName(tests).run(result)
    return result.testsRun, sorted(test.id() for test, _ in result.failures + result.errors)


def _same(before: Any, now: Any) -> bool:
    """The same code objects: one, or a class's by member."""
    if isinstance(before, dict):
        return before.keys() == now.keys() and all(now[k] is v for k, v in before.items())
    return before is now


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("module")
    parser.add_argument("tests")
    parser.add_argument("--break", dest="broken")
    parser.add_argument("--classes", action="store_true")
    args = parser.parse_args()
    module = importlib.import_module(args.module)
    sources = Sources(module)
    files = PatchFiles(module, sources, args.broken)
    items: list[tuple[str, Any]]
    if args.classes:
        items = [(node.name, node) for node in classes_of(module, sources)]

        def load(chosen: list[Any], version: str) -> hotpatch.Patch:
            return files.load_classes(chosen, version)

        def codes() -> dict[str, Any]:
            return {name: functions_of(getattr(module, name)) for name, _ in items}
    else:
        items = [(target[0], target) for target in targets_of(module)]

        def load(chosen: list[Any], version: str) -> hotpatch.Patch:
            return files.load(chosen, version)

        def codes() -> dict[str, Any]:
            return {name: target[2].__code__ for name, target in items}

    originals = codes()
    registry = hotpatch.Registry("1.0")
    hot: list[tuple[str, Any]] = []
    refused: dict[str, str] = {}
    for name, item in items:
        try:
            report = registry.check(load([item], "1.0.1"))
        except hotpatch.PatchError as exc:
            refused[name] = f"{type(exc).__name__}: {exc}"
            continue
        if report.hot:
            hot.append((name, item))
        else:
            refused[name] = "; ".join(report.reasons)

    run_before, failed_before = failing(args.tests)
    registry.apply(load([item for _, item in hot], "1.0.1"))
    patched = codes()
    switched = sum(not _same(originals[name], patched[name]) for name, _ in hot)
    run_patched, failed_patched = failing(args.tests)
    registry.rollback(to="1.0")
    run_after, failed_after = failing(args.tests)
    after = codes()
    print(
        json.dumps(
            {
                "targets": len(items),
                "hot": len(hot),
                "refused": refused,
                "switched": switched,
                "tests_run": [run_before, run_patched, run_after],
                "failed_before": failed_before,
                "failed_patched": failed_patched,
                "failed_after": failed_after,
                "not_restored": sorted(n for n, _ in items if not _same(originals[n], after[n])),
            }
        )
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
