"""Baseline bundles: ``patch.toml`` and a code tree, checked and unpacked into a release folder.

A bundle is a directory or a ``.zip`` holding::

    patch.toml      [patch] version, kind, summary, deadline; [code] root
    <root>/...      the new code tree (``root`` defaults to ``.``)

Nothing in it may point outside it: no absolute paths, no ``..``, no
symlinks (in a directory) and no special members (in a zip). It is copied
into ``RELEASES/<version>/`` -- never run from the drop folder -- and the
new process runs with ``RELEASES/<version>/<root>`` first on ``sys.path``.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import stat
import tempfile
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from packaging.version import InvalidVersion, Version

from hotpatch._errors import VerificationFailed
from hotpatch._shortage import Shortage, shortage_of

__all__ = ["Bundle", "Release", "copy_tree", "read_bundle", "short_of", "unpack_bundle"]

KINDS = ("planned-baseline", "unplanned-baseline")
MAX_TOML_BYTES = 64 * 1024
MAX_BUNDLE_BYTES = 512 * 2**20
MAX_MEMBERS = 20000
ORIGIN = ".hotpatch-bundle"  # in a release folder: the digest of the bundle it came from


@dataclass(frozen=True, slots=True)
class Bundle:
    """What ``patch.toml`` says."""

    version: str
    kind: str
    summary: str
    deadline: datetime.datetime | None
    root: str

    @property
    def planned(self) -> bool:
        return self.kind == "planned-baseline"


@dataclass(frozen=True, slots=True)
class Release:
    """An unpacked bundle: where its code is."""

    bundle: Bundle
    path: Path  # RELEASES/<version>

    @property
    def code_root(self) -> Path:
        return self.path / self.bundle.root

    @property
    def version(self) -> str:
        return self.bundle.version


def _refuse(name: str, why: str) -> VerificationFailed:
    return VerificationFailed(f"bundle {name}: {why}")


def _safe_member(name: str, member: str) -> PurePosixPath:
    path = PurePosixPath(member)
    if path.is_absolute() or ".." in path.parts or "\\" in member or member.startswith("/"):
        msg = f"member {member!r} points outside the bundle; use relative paths inside it"
        raise _refuse(name, msg)
    return path


def parse_toml(name: str, raw: bytes) -> Bundle:
    """``patch.toml`` -> ``Bundle``, refusing what is missing or wrong."""
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise _refuse(name, f"patch.toml is not valid TOML ({exc})") from exc
    patch = data.get("patch")
    if not isinstance(patch, dict):
        raise _refuse(name, "patch.toml has no [patch] table")
    version = patch.get("version")
    try:
        Version(str(version))
    except InvalidVersion:
        version = None
    if not isinstance(version, str) or version is None:
        raise _refuse(name, 'patch.toml needs [patch] version = "X.Y" (PEP 440)')
    kind = patch.get("kind", "unplanned-baseline")
    if kind not in KINDS:
        msg = f"[patch] kind is {kind!r}; a bundle is one of {', '.join(KINDS)}"
        raise _refuse(name, msg)
    deadline = patch.get("deadline")
    if isinstance(deadline, str):
        try:
            deadline = datetime.datetime.fromisoformat(deadline)
        except ValueError as exc:
            msg = f"[patch] deadline {deadline!r} is not an ISO 8601 time"
            raise _refuse(name, msg) from exc
    if deadline is not None and not isinstance(deadline, datetime.datetime):
        raise _refuse(name, "[patch] deadline must be a date and time (ISO 8601, UTC)")
    if deadline is not None and deadline.tzinfo is None:
        deadline = deadline.replace(tzinfo=datetime.UTC)
    code = data.get("code", {})
    root = code.get("root", ".") if isinstance(code, dict) else "."
    if not isinstance(root, str):
        raise _refuse(name, "[code] root must be a relative path")
    _safe_member(name, root)
    return Bundle(version, kind, str(patch.get("summary", "")), deadline, root)


def read_bundle(path: Path) -> Bundle:
    """Check a bundle where it lies (directory or zip) and return its ``patch.toml``."""
    name = path.name
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        raise _refuse(name, "is a symbolic link; drop the bundle itself")
    if stat.S_ISDIR(st.st_mode):
        return _read_directory(path)
    if not stat.S_ISREG(st.st_mode) or not name.endswith(".zip"):
        raise _refuse(name, "is neither a directory nor a .zip")
    if st.st_size > MAX_BUNDLE_BYTES:
        raise _refuse(name, f"is over {MAX_BUNDLE_BYTES // 2**20} MB")
    return _read_zip(path)


def _read_directory(path: Path) -> Bundle:
    name = path.name
    count = 0
    for folder, dirs, files in os.walk(path):
        for entry in [*dirs, *files]:
            count += 1
            full = Path(folder) / entry
            mode = full.lstat().st_mode
            if stat.S_ISLNK(mode):
                rel = full.relative_to(path)
                raise _refuse(name, f"{rel} is a symbolic link; bundles may not hold links")
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                rel = full.relative_to(path)
                raise _refuse(name, f"{rel} is not a regular file")
        if count > MAX_MEMBERS:
            raise _refuse(name, f"holds more than {MAX_MEMBERS} files")
    toml = path / "patch.toml"
    if not toml.is_file() or toml.stat().st_size > MAX_TOML_BYTES:
        raise _refuse(name, "has no patch.toml (or it is over 64 KB)")
    bundle = parse_toml(name, toml.read_bytes())
    if not (path / bundle.root).is_dir():
        raise _refuse(name, f"[code] root {bundle.root!r} is not a directory in it")
    return bundle


def _read_zip(path: Path) -> Bundle:
    name = path.name
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            if len(infos) > MAX_MEMBERS:
                raise _refuse(name, f"holds more than {MAX_MEMBERS} members")
            total = 0
            for info in infos:
                _safe_member(name, info.filename)
                kind = stat.S_IFMT(info.external_attr >> 16)
                if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                    msg = f"member {info.filename!r} is a link or special file"
                    raise _refuse(name, msg)
                total += info.file_size
            if total > MAX_BUNDLE_BYTES:
                raise _refuse(name, f"unpacks to over {MAX_BUNDLE_BYTES // 2**20} MB")
            try:
                info = archive.getinfo("patch.toml")
            except KeyError:
                raise _refuse(name, "has no patch.toml at its top") from None
            if info.file_size > MAX_TOML_BYTES:
                raise _refuse(name, "patch.toml is over 64 KB")
            return parse_toml(name, archive.read(info))
    except zipfile.BadZipFile as exc:
        raise _refuse(name, f"is not a valid zip ({exc})") from exc


@contextlib.contextmanager
def short_of(doing: str) -> Iterator[None]:
    """An ``OSError`` of a resource running out while ``doing`` (staging or unpacking a
    bundle): ``Shortage``, said the same way each time (not with the temporary names
    the error carries), so that the drop waits and is tried again, not rejected."""
    try:
        yield
    except OSError as exc:
        resource = shortage_of(exc)
        if resource is None:
            raise
        raise Shortage(resource, f"{doing}: {exc.strerror or resource}") from exc


def copy_tree(source: Path, target: Path) -> None:
    """Copy the directory ``source`` to ``target`` (links as links), stopping at the first
    error, raised as it came (``shutil.copytree`` gathers them into one without their
    errno: a full disk must read as one, to be waited out, not as a bad bundle)."""
    target.mkdir(exist_ok=True)
    with os.scandir(source) as entries:
        for entry in entries:
            to = target / entry.name
            if entry.is_symlink():
                os.symlink(os.readlink(entry.path), to)
            elif entry.is_dir(follow_symlinks=False):
                copy_tree(Path(entry.path), to)
            else:
                shutil.copy2(entry.path, to, follow_symlinks=False)
    shutil.copystat(source, target, follow_symlinks=False)


def unpack_bundle(
    path: Path, bundle: Bundle, releases: Path, *, origin: str | None = None
) -> Release:
    """Copy the checked bundle into ``releases/<version>/`` (a new folder; never overwritten).

    ``origin``: the bundle's digest, kept in the release: the same bundle again
    (an attempt that ran short of a resource after it was unpacked, tried
    again) takes the release it left, where another bundle of that version is
    refused.
    """
    releases.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = releases / bundle.version
    if target.exists():
        if origin is not None and _origin_of(target) == origin:
            return _release(path, bundle, target)
        msg = (
            f"release {bundle.version} already exists in {releases}; publish the new code "
            "under a newer version"
        )
        raise _refuse(path.name, msg)
    tmp = Path(tempfile.mkdtemp(dir=releases, prefix=f".{bundle.version}."))
    try:
        if path.is_dir():
            copy_tree(path, tmp)
        else:
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    member = tmp / _safe_member(path.name, info.filename)
                    if info.is_dir():
                        member.mkdir(parents=True, exist_ok=True)
                        continue
                    member.parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(info) as source, member.open("xb") as out:
                        shutil.copyfileobj(source, out)
        if origin is not None:
            (tmp / ORIGIN).write_text(origin)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _release(path, bundle, target)


def _release(path: Path, bundle: Bundle, target: Path) -> Release:
    release = Release(bundle, target)
    if not release.code_root.is_dir():
        msg = f"[code] root {bundle.root!r} is not a directory in it"
        raise _refuse(path.name, msg)
    return release


def _origin_of(release: Path) -> str | None:
    try:
        return (release / ORIGIN).read_text()
    except (OSError, UnicodeDecodeError):
        return None
