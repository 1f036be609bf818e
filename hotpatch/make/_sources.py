"""The two versions to compare: files read from git at a revision, or from a directory tree.

A ``Tree`` is every file of one version by its POSIX path relative to the
repository (or tree) root. Git is read through the ``git`` command: the
blobs at a revision, never a checkout, so the user's work tree is left as it
is. ``classify`` says what a path is to the service: a module (with its
dotted name under an import root), a data file under an import root (it
needs a baseline), or something ignored (tests, stubs, docs, packaging, a
path outside every import root or in a directory no import reaches) and why.
``scripts`` finds, in one version, the Python files beside the service's packages
that the service never imports (``examples/``, ``benchmarks/``, ``misc/`` with no
``__init__.py``).
"""

from __future__ import annotations

import ast
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

__all__ = [
    "FileKind",
    "MakeError",
    "Place",
    "Tree",
    "classify",
    "commit_subject",
    "read_git",
    "read_tree",
    "scripts",
]

FileKind = Literal["module", "data", "ignored"]

_TEST_DIRS = frozenset({"tests", "test"})
_DOC_DIRS = frozenset({"docs", "doc", "releasenotes"})  # releasenotes/: reno's notes
_SKIP_DIRS = frozenset({".git", "__pycache__", ".venv", "venv", ".tox", ".nox", "node_modules"})
_PACKAGING = frozenset(
    {
        "setup.py",
        "versioneer.py",
        "setup.cfg",
        "pyproject.toml",
        "MANIFEST.in",
        "tox.ini",
        "pytest.ini",
        "noxfile.py",
        "Makefile",
        "py.typed",
        "requirements.txt",
        "uv.lock",
        "poetry.lock",
        "Pipfile",
        "Pipfile.lock",
    }
)
_DOC_SUFFIXES = frozenset({".md", ".rst"})
_TOP_DOCS = ("README", "CHANGELOG", "CHANGES", "HISTORY", "LICENSE", "COPYING", "AUTHORS", "NEWS")


class MakeError(Exception):
    """The versions could not be read or compared; the message says what to do."""


@dataclass(frozen=True, slots=True)
class Tree:
    """One version: its files by relative POSIX path, and how to name it to a person."""

    label: str  # "v2.3 (1a2b3c4)" or a directory
    files: dict[str, bytes]


@dataclass(frozen=True, slots=True)
class Place:
    """What one path is to the service."""

    kind: FileKind
    module: str = ""  # the dotted module name, for a module
    root: str = ""  # the import root it is under
    why: str = ""  # for an ignored path


# -- reading ------------------------------------------------------------------------------


def _git(repo: Path, *args: str, data: bytes | None = None) -> bytes:
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), *args],
            input=data,
            capture_output=True,
            check=False,
        )
    except FileNotFoundError:
        msg = "the `git` command is not installed; install git, or compare two trees instead"
        raise MakeError(msg) from None
    if done.returncode != 0:
        err = done.stderr.decode("utf-8", "replace").strip()
        msg = f"git {' '.join(args[:2])} in {repo} failed: {err}"
        raise MakeError(msg)
    return done.stdout


def resolve_rev(repo: Path, rev: str) -> str:
    """The full commit id ``rev`` names in ``repo``."""
    try:
        out = _git(repo, "rev-parse", "--verify", "--end-of-options", f"{rev}^{{commit}}")
    except MakeError:
        msg = f"{rev!r} is not a commit in the git repository {repo} (try `git log` there)"
        raise MakeError(msg) from None
    return out.decode().strip()


def read_git(repo: Path, rev: str) -> Tree:
    """Every file at ``rev`` in ``repo``, read from the object store (no checkout)."""
    commit = resolve_rev(repo, rev)
    listing = _git(repo, "ls-tree", "-r", "-z", "--full-tree", commit)
    entries: list[tuple[str, str]] = []  # (object id, path)
    for record in listing.split(b"\0"):
        if not record:
            continue
        meta, _, raw_path = record.partition(b"\t")
        _mode, kind, oid = meta.decode().split()
        if kind == "blob":  # submodules (commits) are not code of this repository
            entries.append((oid, raw_path.decode("utf-8", "surrogateescape")))
    files: dict[str, bytes] = {}
    if entries:
        batch = _git(
            repo, "cat-file", "--batch", data="".join(f"{o}\n" for o, _ in entries).encode()
        )
        offset = 0
        for _oid, path in entries:
            header_end = batch.index(b"\n", offset)
            size = int(batch[offset:header_end].split()[2])
            start = header_end + 1
            files[path] = batch[start : start + size]
            offset = start + size + 1  # the blob, then a newline
    return Tree(f"{rev} ({commit[:10]})" if rev != commit else commit[:10], files)


def commit_subject(repo: Path, rev: str) -> str:
    """The first line of ``rev``'s commit message."""
    return _git(repo, "log", "-1", "--format=%s", resolve_rev(repo, rev)).decode().strip()


def read_tree(directory: Path) -> Tree:
    """Every file under ``directory`` (version control and caches left out)."""
    if not directory.is_dir():
        msg = f"{directory} is not a directory; give two source trees, or --from/--to"
        raise MakeError(msg)
    files: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for name in sorted(filenames):
            if name.endswith((".pyc", ".pyo")):
                continue
            path = Path(dirpath, name)
            if path.is_symlink() or not path.is_file():
                continue
            files[path.relative_to(directory).as_posix()] = path.read_bytes()
    return Tree(str(directory), files)


# -- what a path is -----------------------------------------------------------------------


def classify(path: str, roots: tuple[str, ...]) -> Place:  # noqa: PLR0911 - one rule a return
    """What ``path`` (relative, POSIX) is to a service whose import roots are ``roots``."""
    pure = PurePosixPath(path)
    name, parts = pure.name, pure.parts
    if any(p.startswith(".") for p in parts):
        return Place("ignored", why="a hidden file (tooling, not service code)")
    if len(parts) == 1 and (name in _PACKAGING or name.startswith(_TOP_DOCS)):
        return Place("ignored", why="packaging or project metadata")
    if name in _PACKAGING:
        return Place("ignored", why="packaging metadata")
    if any(p in _TEST_DIRS for p in parts[:-1]) or _is_test_file(name):
        return Place("ignored", why="test code")
    if any(p in _DOC_DIRS for p in parts[:-1]) or pure.suffix in _DOC_SUFFIXES:
        return Place("ignored", why="documentation")
    if pure.suffix == ".pyi":
        return Place("ignored", why="a type stub")
    root = _root_of(pure, roots)
    if root is None:
        return Place("ignored", why=f"outside the import roots ({', '.join(roots)})")
    inner = pure.relative_to(root) if root != "." else pure
    if len(inner.parts) > 1 and not inner.parts[0].isidentifier():
        why = (
            f"in no package: `{inner.parts[0]}` is not a Python name, so no import reaches "
            f"{inner.parts[0]}/ under the import root {root} (nor reads package data there)"
        )
        return Place("ignored", why=why)
    if pure.suffix == ".py" and all(p.isidentifier() for p in inner.with_suffix("").parts):
        names = list(inner.with_suffix("").parts)
        if names[-1] == "__init__":
            names.pop()
        if names:
            return Place("module", module=".".join(names), root=root)
    return Place("data", root=root)


def _is_test_file(name: str) -> bool:
    return name == "conftest.py" or (
        name.endswith(".py") and (name.startswith("test_") or name.endswith("_test.py"))
    )


def _root_of(path: PurePosixPath, roots: tuple[str, ...]) -> str | None:
    """The longest import root holding ``path``."""
    best: str | None = None
    for root in roots:
        inside = root == "." or path.is_relative_to(root)
        if inside and (best is None or best == "." or len(root) > len(best)):
            best = root
    return best


def scripts(tree: Tree, roots: tuple[str, ...]) -> dict[str, str]:
    """The Python files of ``tree`` in a folder under an import root that is not a package
    (no ``__init__.py``: ``examples/``, ``benchmarks/``) and that no module of the service
    imports, and those whose name no import can spell (``build-data.py``), by path, with
    why: scripts beside the service, which it never imports. A
    namespace package's module (PEP 420) that the service imports, by name or by a string
    naming it, stays a module."""
    loose: dict[str, str] = {}  # path -> its dotted name
    modules: dict[str, str] = {}  # path -> dotted name, of the modules of the service
    found: dict[str, str] = {}
    for path in tree.files:
        place = classify(path, roots)
        if place.kind not in ("module", "data") or not path.endswith(".py"):
            continue
        folder = PurePosixPath(path).parent
        in_package = folder == PurePosixPath(place.root) or f"{folder}/__init__.py" in tree.files
        if place.kind == "data":  # a name no import can spell (``build-data.py``)
            if not in_package:
                found[path] = (
                    f"a script beside the service: {folder}/ is not a package (no "
                    f"__init__.py) and {PurePosixPath(path).stem} is not a Python name, so "
                    "no import reaches it"
                )
            continue
        (modules if in_package else loose)[path] = place.module
    if not loose:
        return found
    imported: set[str] = set()
    todo = list(modules)
    while todo:
        path = todo.pop()
        imported |= _imported(tree.files[path], modules[path], path.endswith("__init__.py"))
        reached = [p for p, name in loose.items() if _reaches(imported, name)]
        for path in reached:
            modules[path] = loose.pop(path)
        todo += reached
    for path, name in loose.items():
        folder = PurePosixPath(path).parent
        found[path] = (
            f"a script beside the service: {folder}/ is not a package (no __init__.py) and "
            f"no module of the service imports {name}"
        )
    return found


def _imported(data: bytes, name: str, package: bool) -> set[str]:
    """The dotted names the module ``name`` imports (``from a import b``: ``a`` and
    ``a.b``), and its strings that could name a module (``import_module("a.b")``)."""
    try:
        tree = ast.parse(data)
    except (SyntaxError, ValueError):
        return set()
    names: set[str] = set()
    here = name.split(".") if package else name.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            parts = here[: len(here) - node.level + 1] if node.level else []
            base = ".".join([*parts, node.module] if node.module else parts)
            names.add(base)
            names |= {f"{base}.{a.name}" if base else a.name for a in node.names}
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and node.value.replace(".", "").replace("_", "").isalnum()
        ):
            names.add(node.value)
    return names


def _reaches(imported: set[str], name: str) -> bool:
    """Does importing one of ``imported`` import the module ``name`` (it, or one under it)?"""
    return name in imported or any(i.startswith(f"{name}.") for i in imported)
