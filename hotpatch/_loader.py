"""Patch file -> ``Patch``: executed in a module of its own, never among the service's modules."""

from __future__ import annotations

import builtins
import linecache
import os
import re
import sys
import types
from collections.abc import Callable, Iterable
from pathlib import Path

from hotpatch._classes_hooks import Guard
from hotpatch._errors import NotPatchable, VerificationFailed
from hotpatch._patch import Patch, PatchSource

__all__ = ["DEFAULT_MAX_BYTES", "load_patch", "load_patch_source", "load_patch_text"]

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
# Patch modules live under this prefix in sys.modules (pickle and dataclasses look
# a module up there); nothing real can be imported under it.
MODULE_PREFIX = "hotpatch._patches."

# What bytes.strip() strips (str.strip() would strip Unicode spaces as well).
_ASCII_SPACE = " \t\n\r\x0b\x0c"
_NOT_WORD = re.compile(r"\W")

Compiler = Callable[[str, str, str], types.CodeType]  # (text, sha256, filename) -> code


def load_patch(path: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES) -> Patch:
    """Load the one ``Patch`` a patch file declares.

    Raises ``VerificationFailed`` naming the file and the cause when it is empty,
    too large, not UTF-8, does not compile or import, or declares no ``Patch``
    or more than one.
    """
    file = Path(path)
    try:
        size = file.stat().st_size
        if size > max_bytes:
            msg = (
                f"patch file {file}: {size} bytes is over the limit of {max_bytes}; "
                "a patch is source code, so this is almost certainly not one "
                "(raise the limit if it really is)"
            )
            raise VerificationFailed(msg)
        data = file.read_bytes()
    except OSError as exc:
        msg = f"patch file {file} cannot be read: {exc.strerror or exc}"
        raise VerificationFailed(msg) from exc
    return load_patch_source(data, path=str(file))


def load_patch_source(data: bytes, *, path: str, compiler: Compiler | None = None) -> Patch:
    """Load a patch from its bytes; ``path`` names it in messages and tracebacks.

    ``compiler(text, sha256, filename)`` compiles its text (a replay's, which
    keeps what it compiled: ``_codecache``); by default, ``compile()``.
    """
    name = _name(path)
    if not data.strip():
        raise _empty(name)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        msg = f"patch file {name} is not UTF-8 text ({exc.reason} at byte {exc.start})"
        raise VerificationFailed(msg) from None
    return _load(text, PatchSource.digest(data), path, name, compiler)


def load_patch_text(
    text: str, *, sha256: str, path: str, compiler: Compiler | None = None
) -> Patch:
    """Load a patch from its text, whose UTF-8 bytes the caller has checked hash to ``sha256``.

    A replay's: the journal checks every entry's content against its sha256 as it
    reads it, so it is not encoded and hashed again here.
    """
    name = _name(path)
    if not text.strip(_ASCII_SPACE):
        raise _empty(name)
    return _load(text, sha256, path, name, compiler)


def _empty(name: str) -> VerificationFailed:
    return VerificationFailed(f"patch file {name} is empty: write a Patch(...) declaration into it")


def _load(text: str, sha: str, path: str, name: str, compiler: Compiler | None) -> Patch:
    filename = f"<hotpatch {name} {sha[:12]}>"
    try:
        if compiler is None:
            code = compile(text, filename, "exec", dont_inherit=True)
        else:
            code = compiler(text, sha, filename)
    except SyntaxError as exc:
        msg = f"patch file {name} has a syntax error at line {exc.lineno}: {exc.msg}"
        raise VerificationFailed(msg) from None
    # Tracebacks and debuggers show the patch's own lines, even after the file moves.
    linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)

    module_name = MODULE_PREFIX + _safe(name) + "_" + sha[:16]
    module = types.ModuleType(module_name, f"hotpatch patch file {name}")
    module.__file__ = path
    previous = sys.modules.get(module_name)
    sys.modules[module_name] = module
    try:
        _execute(code, module, Guard.of(text, name), name)
    except BaseException:
        _forget(module_name, previous)
        raise

    patches = _unique(v for v in module.__dict__.values() if isinstance(v, Patch))
    if len(patches) != 1:
        _forget(module_name, previous)
        found = "no Patch" if not patches else f"{len(patches)} Patch objects"
        msg = (
            f"patch file {name} declares {found}: a patch file holds exactly one "
            "`patch = Patch(version=..., baseline=...)`"
        )
        raise VerificationFailed(msg)
    patch = patches[0]
    patch.source = PatchSource(path=path, text=text, sha256=sha, filename=filename)
    return patch


def _execute(
    code: types.CodeType, module: types.ModuleType, guard: Guard | None, name: str
) -> None:
    """Run the patch module's code; what it raises, as the error saying so.

    A ``replace_class`` class statement, or one holding replacements, is checked before
    it runs (``guard``): making the class would run its bases' per-class hooks here, in
    the service.
    """
    if guard is not None:
        module.__dict__["__builtins__"] = guard.builtins()
    try:
        exec(code, module.__dict__)
        if guard is not None and guard.refused is not None:
            raise guard.refused  # the patch file caught it: still refused
    except NotPatchable as exc:
        if guard is None or exc is not guard.refused:
            msg = f"patch file {name} failed to import: {type(exc).__name__}: {exc}"
            raise VerificationFailed(msg) from exc
        raise
    except SystemExit as exc:
        msg = f"patch file {name} calls sys.exit({exc.code!r}) while importing; remove it"
        raise VerificationFailed(msg) from None
    except Exception as exc:
        msg = f"patch file {name} failed to import: {type(exc).__name__}: {exc}"
        raise VerificationFailed(msg) from exc
    finally:
        if guard is not None:
            guard.armed = False
            module.__dict__["__builtins__"] = vars(builtins)  # what exec() puts there


def _unique(items: Iterable[Patch]) -> list[Patch]:
    seen: dict[int, Patch] = {}
    for item in items:
        seen.setdefault(id(item), item)
    return list(seen.values())


def _safe(name: str) -> str:
    return _NOT_WORD.sub("_", name.removesuffix(".py")) or "patch"


def _name(path: str) -> str:
    """``Path(path).name``, without making a ``Path`` of each patch a replay loads."""
    name = os.path.basename(path)
    if not name or name in {".", ".."}:  # a path ending in / or . (Path normalises those)
        return Path(path).name
    return name


def _forget(module_name: str, previous: types.ModuleType | None) -> None:
    if previous is None:
        sys.modules.pop(module_name, None)
    else:
        sys.modules[module_name] = previous
