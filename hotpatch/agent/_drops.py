"""Reading a drop safely: once, no symlinks or strangers' files; its version without importing."""

from __future__ import annotations

import ast
import errno
import os
import stat
import tomllib
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from packaging.version import InvalidVersion, Version

from hotpatch._errors import VerificationFailed
from hotpatch.agent._names import shown
from hotpatch.agent._signing import SIGNATURE_SUFFIX

__all__ = [
    "MAX_SIGNATURE_BYTES",
    "TEMPORARY_SUFFIXES",
    "Interrupted",
    "PatchBytes",
    "Vanished",
    "bundle_version",
    "is_bundle_name",
    "is_ignored",
    "peek_targets",
    "peek_version",
    "read_patch_file",
    "read_signature",
]

TEMPORARY_SUFFIXES = (".tmp", ".part", "~")
MAX_SIGNATURE_BYTES = 64 * 1024
_MAX_TOML_BYTES = 64 * 1024


class Vanished(Exception):
    """The drop disappeared before it was read (deleted or replaced by its writer)."""


class Interrupted(Exception):
    """A drop's checks were cut short by its folder going away (deleted, replaced) meanwhile.

    Not the patch's fault, and nothing of it was applied: the folder keeps it
    and tries it again once the folder is safe.
    """


# -- names ------------------------------------------------------------------------------


def is_ignored(name: str) -> bool:
    """Dotfiles and temporary names, which wait for a rename to a real name."""
    return name.startswith(".") or name.endswith(TEMPORARY_SUFFIXES)


def is_bundle_name(name: str) -> bool:
    return name.endswith(".zip")


# -- reading a drop safely --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PatchBytes:
    """A file's bytes read once, and the identity of the inode they came from."""

    data: bytes
    ino: int
    dev: int


def read_patch_file(path: Path, *, max_bytes: int, owners: Iterable[int]) -> PatchBytes:
    """Read ``path`` once, refusing symlinks, special files, strangers' files and huge files.

    The size is checked on the open file before reading, so an oversized file
    is never read into memory. Raises ``VerificationFailed`` with the reason,
    or ``Vanished`` when the file is gone.
    """
    name = shown(path.name)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise Vanished(str(path)) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            msg = (
                f"{name} is a symbolic link; hotpatch refuses symlinks in the patch "
                "folder (copy or rename the file itself into it)"
            )
            raise VerificationFailed(msg) from None
        msg = f"{name} cannot be opened: {exc.strerror or exc}"
        raise VerificationFailed(msg) from exc
    try:
        st = os.fstat(fd)
        _check_file(name, st, max_bytes=max_bytes, owners=owners)
        chunks = []
        remaining = max_bytes + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        msg = f"{name} grew past the size limit of {max_bytes} bytes while being read"
        raise VerificationFailed(msg)
    return PatchBytes(data, st.st_ino, st.st_dev)


def _check_file(name: str, st: os.stat_result, *, max_bytes: int, owners: Iterable[int]) -> None:
    if not stat.S_ISREG(st.st_mode):
        msg = f"{name} is not a regular file; a patch is a plain Python file"
        raise VerificationFailed(msg)
    allowed = set(owners)
    if st.st_uid not in allowed:
        msg = (
            f"{name} is owned by uid {st.st_uid}, not by this service's user "
            f"(uid {', '.join(map(str, sorted(allowed)))}); hotpatch refuses files owned by "
            f"another user. Copy it as the service's user (or `chown {os.geteuid()} {name}`) "
            "and drop it again"
        )
        raise VerificationFailed(msg)
    if st.st_size > max_bytes:
        msg = (
            f"{name} is {st.st_size} bytes, over the size limit of {max_bytes} bytes; "
            "a patch is source code, so this is almost certainly not one (raise max_bytes "
            "if it really is)"
        )
        raise VerificationFailed(msg)


def read_signature(path: Path, *, owners: Iterable[int]) -> bytes | None:
    """The content of ``PATH.sig`` (read like a patch file), or ``None`` when there is none."""
    sig = path.with_name(path.name + SIGNATURE_SUFFIX)
    try:
        return read_patch_file(sig, max_bytes=MAX_SIGNATURE_BYTES, owners=owners).data
    except Vanished:
        return None


# -- versions without importing ---------------------------------------------------------


def peek_version(data: bytes) -> str | None:
    """The version literal of the one ``Patch(...)`` call in a patch file, without running it.

    ``None`` when the file does not parse, has no such literal, or more than one.
    """
    try:
        tree = ast.parse(data)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    found: list[str] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not _names_patch(node.func):
            continue
        values = [kw.value for kw in node.keywords if kw.arg == "version"]
        values += node.args[:1]
        literal = [v.value for v in values if isinstance(v, ast.Constant)]
        if len(literal) == 1 and isinstance(literal[0], str):
            found.append(literal[0])
    if len(found) != 1:
        return None
    return found[0] if _valid_version(found[0]) else None


def peek_targets(data: bytes) -> tuple[str, ...]:
    """The ``@patch.replace("m:q")`` target literals of a patch file, without running it.

    For messages about a file that is refused before it is loaded; best effort.
    """
    try:
        tree = ast.parse(data)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return ()
    targets = [
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("replace", "replace_class")
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
        and ":" in node.args[0].value
    ]
    return tuple(dict.fromkeys(targets))


def _names_patch(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id == "Patch"
    return isinstance(func, ast.Attribute) and func.attr == "Patch"


def _valid_version(text: str) -> bool:
    try:
        Version(text)
    except InvalidVersion:
        return False
    return True


def bundle_version(path: Path) -> str | None:
    """``[patch] version`` of a bundle's ``patch.toml`` (directory or zip), best effort."""
    try:
        if path.is_dir() and not path.is_symlink():
            toml = path / "patch.toml"
            if toml.is_symlink() or toml.stat().st_size > _MAX_TOML_BYTES:
                return None
            raw = toml.read_bytes()
        else:
            with zipfile.ZipFile(path) as archive:
                info = archive.getinfo("patch.toml")
                if info.file_size > _MAX_TOML_BYTES:
                    return None
                raw = archive.read(info)
        version = tomllib.loads(raw.decode("utf-8"))["patch"]["version"]
    except (OSError, KeyError, TypeError, ValueError, zipfile.BadZipFile):
        return None
    return version if isinstance(version, str) and _valid_version(version) else None
