"""Patches delivered as Kubernetes delivers a ConfigMap volume: the kubelet's atomic-writer layout.

The kubelet keeps a ConfigMap's files in a folder like this::

    ..2026_12_03_19_00_00.123456789/fix-1.0.1.py   the files of one version
    ..data -> ..2026_12_03_19_00_00.123456789       which version is current
    fix-1.0.1.py -> ..data/fix-1.0.1.py             what a reader sees

A new version is a new timestamped directory, a ``..data_tmp`` symlink to it,
renamed over ``..data`` (one atomic step), then the visible links of new keys
are added and the old directory removed. The folder follows such a visible link
only when it is exactly ``NAME -> ..data/NAME``, the link, ``..data`` and the
timestamped directory are owned by the service's user, ``..data`` names a
directory of the folder itself, and the file behind is a regular file of the
service's user (``read_patch_file`` checks that): every other symlink is still
refused (SPEC §8).

Outcomes. The kubelet owns those files, so they cannot move to ``applied/``.
The folder reads the file once, writes those bytes to a private copy in
``.configmap/`` (with the signature beside it), and gives the copy to the
pipeline; the copy is filed like any drop (``applied/NAME`` and
``NAME.result.json``), and the result carries ``"configmap": {"file", "sha256",
"data"}``. That key is the record of what was taken: a name with the same
sha256 is never processed again -- not on the next ``..data`` swap, not after a
restart (the index is rebuilt from the result files at start) -- and a changed
file (same name, new sha256) is processed once more.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from hotpatch._errors import VerificationFailed
from hotpatch.agent._drops import read_patch_file
from hotpatch.agent._outcome import OUTCOME_DIRS, RESULT_SUFFIX
from hotpatch.agent._signing import SIGNATURE_SUFFIX

__all__ = [
    "CONFIGMAP_STAGING",
    "DATA",
    "KEPT",
    "ConfigMapDrop",
    "Taken",
    "identity",
    "is_configmap_link",
    "resolve",
]

DATA = "..data"  # the kubelet's symlink to the current version's directory
CONFIGMAP_STAGING = ".configmap"  # private copies of the files behind the links
KEPT = "identity:"  # a plain file kept in a read-only folder, noted by what was read


def identity(path: Path) -> str | None:
    """``INO:SIZE:MTIME_NS`` of ``path`` itself (``None`` when gone): which file a drop was."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def is_configmap_link(folder: Path, name: str) -> bool:
    """Is ``name`` a visible link of the kubelet's layout (``NAME -> ..data/NAME``)?"""
    try:
        return os.readlink(folder / name) == f"{DATA}/{name}"
    except OSError:
        return False


@dataclass(frozen=True, slots=True)
class ConfigMapDrop:
    """A visible link resolved and read: the file's bytes, its sha256, the version directory."""

    name: str
    data: bytes
    sha256: str
    version_dir: str  # the timestamped directory ``..data`` pointed to


def resolve(folder: Path, name: str, *, max_bytes: int) -> ConfigMapDrop:
    """Read the file behind the visible link ``name``, checking the whole chain.

    Raises ``VerificationFailed`` naming the link that fails a check, or
    ``FileNotFoundError`` when a part vanished (the kubelet swapped versions
    meanwhile: the next swap's event brings the name back).
    """
    owner = os.geteuid()
    link = folder / name
    _owned_link(link, owner)
    data_link = folder / DATA
    _owned_link(data_link, owner)
    version_dir = os.readlink(data_link)
    if "/" in version_dir or not version_dir.startswith("..") or version_dir in ("..", DATA):
        msg = (
            f"{name} -> {DATA}/{name}, but {DATA} points to {version_dir!r}, not to a "
            "timestamped directory of the folder itself; hotpatch follows only the kubelet's "
            "layout"
        )
        raise VerificationFailed(msg)
    st = os.lstat(folder / version_dir)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != owner:
        msg = (
            f"{name}: {version_dir} is not a directory owned by this service's user (uid "
            f"{owner}); hotpatch refuses it"
        )
        raise VerificationFailed(msg)
    real_folder = os.path.realpath(folder)
    target = os.path.realpath(link)
    if os.path.dirname(os.path.dirname(target)) != real_folder:
        msg = f"{name} resolves to {target}, outside the patch folder {real_folder}; refused"
        raise VerificationFailed(msg)
    read = read_patch_file(folder / version_dir / name, max_bytes=max_bytes, owners={owner})
    return ConfigMapDrop(name, read.data, hashlib.sha256(read.data).hexdigest(), version_dir)


def _owned_link(path: Path, owner: int) -> None:
    st = os.lstat(path)
    if not stat.S_ISLNK(st.st_mode):
        msg = f"{path.name} is not a symbolic link of the kubelet's layout"
        raise VerificationFailed(msg)
    if st.st_uid != owner:
        msg = (
            f"{path.name} is a symbolic link owned by uid {st.st_uid}, not by this service's "
            f"user (uid {owner}); hotpatch follows only the service's user's links"
        )
        raise VerificationFailed(msg)


class Taken:
    """Which (name, sha256) of the ConfigMap were processed: rebuilt from the result files.

    ``folder`` is where the outcomes are filed: the patch folder, or the agent's
    state directory. With a state directory every drop stays in the folder it
    was read from, so a plain file is noted too, by the identity of what was
    read (``"kept": {"file", "identity"}``, inode, size and modification time).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._taken: set[tuple[str, str]] = set()
        self._names: set[str] = set()  # every name taken, whatever its content

    def load(self) -> None:
        """Read the ``configmap`` (or ``kept``) key of every result file in the outcome folders."""
        for where in sorted(set(OUTCOME_DIRS.values())):
            directory = self.folder / where
            with contextlib.suppress(FileNotFoundError):
                for entry in os.scandir(directory):
                    if entry.name.endswith(RESULT_SUFFIX):
                        self._note(Path(entry.path))

    def _note(self, result: Path) -> None:
        try:
            record = json.loads(result.read_bytes())
            if "kept" in record:
                mark = record["kept"]
                self.add(str(mark["file"]), KEPT + str(mark["identity"]))
            else:
                mark = record["configmap"]
                self.add(str(mark["file"]), str(mark["sha256"]))
        except (OSError, ValueError, KeyError, TypeError):
            return  # not a ConfigMap drop's result (or not readable): nothing to note

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._taken

    def add(self, name: str, sha256: str) -> None:
        self._taken.add((name, sha256))
        self._names.add(name)

    def has_name(self, name: str) -> bool:
        """Was something taken under ``name`` (as it is now, or before it changed)?"""
        return name in self._names

    def stage(self, drop: ConfigMapDrop, signature: bytes | None) -> Path:
        """A private copy of the bytes read (and of the signature) to give the pipeline."""
        staging = self.folder / CONFIGMAP_STAGING
        if not staging.exists() and not staging.is_symlink():
            staging.mkdir(mode=0o700)
        st = staging.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            msg = f"{staging} must be a directory owned by this service's user; remove it"
            raise VerificationFailed(msg)
        copy = staging / drop.name
        sig = copy.with_name(copy.name + SIGNATURE_SUFFIX)
        for data, path in ((drop.data, copy), (signature, sig)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            if data is None:
                continue
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
        return copy
