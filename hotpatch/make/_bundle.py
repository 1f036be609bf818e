"""A baseline bundle from the new version: ``patch.toml`` and the new code tree (SPEC §3, §5).

A directory, or a ``.zip`` when the output's name ends in ``.zip``. It holds
every file of the new version under the import roots (hidden files and
caches aside); ``[code] root`` is the first import root. ``[make]`` records
where it came from and the changes that forced a baseline, for a reviewer
(the supervisor reads only ``[patch]`` and ``[code]``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from hotpatch.make._diff import Change
from hotpatch.make._sources import Tree

__all__ = ["bundle_files", "write_bundle"]

_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the same bundle from the same commit: the same bytes


def bundle_files(new: Tree, roots: tuple[str, ...]) -> dict[str, bytes]:
    """The files of ``new`` that go into the bundle: those under the import roots."""
    files: dict[str, bytes] = {}
    for path, data in new.files.items():
        parts = PurePosixPath(path).parts
        if any(p.startswith(".") or p == "__pycache__" for p in parts):
            continue
        if any(root == "." or PurePosixPath(path).is_relative_to(root) for root in roots):
            files[path] = data
    return files


def _toml(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string


def patch_toml(
    *,
    version: str,
    kind: str,
    summary: str,
    root: str,
    origin: str,
    generator: str,
    reasons: Sequence[Change],
) -> str:
    lines = [
        "# A baseline bundle made by hotpatch make: the changes below cannot go in hot.",
        "[patch]",
        f"version = {_toml(version)}",
        f"kind = {_toml(kind)}",
        f"summary = {_toml(summary)}",
        "",
        "[code]",
        f"root = {_toml(root)}",
        "",
        "[make]",
        f"from = {_toml(origin)}",
        f"generator = {_toml(generator)}",
        "reasons = [",
        *(f"    {_toml(f'{c.name}: {c.why}')}," for c in reasons),
        "]",
    ]
    return "\n".join(lines) + "\n"


def write_bundle(dest: Path, toml: str, files: dict[str, bytes]) -> Path:
    """Write the bundle to ``dest`` (a directory, or a zip by its name), replacing one there."""
    dest = dest.absolute()
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.suffix == ".zip":
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
                archive.writestr(zipfile.ZipInfo("patch.toml", _ZIP_TIME), toml)
                for path, data in sorted(files.items()):
                    info = zipfile.ZipInfo(path, _ZIP_TIME)
                    info.compress_type = zipfile.ZIP_DEFLATED
                    archive.writestr(info, data)
            tmp.replace(dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return dest
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        (tmp / "patch.toml").write_text(toml)
        for path, data in files.items():
            target = tmp / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
