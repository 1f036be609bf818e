"""The kubelet's atomic writer for a ConfigMap volume, replayed step by step, and its outcomes.

``Kubelet.write`` does what the kubelet does to a ConfigMap volume, in the same
order: the files in a new ``..<timestamp>`` directory, a ``..data_tmp`` symlink
to it renamed over ``..data``, the visible links ``NAME -> ..data/NAME`` of new
keys, the links of removed keys gone, the old directory removed.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import tempfile
import textwrap
from pathlib import Path
from typing import Any

from drops import wait_for


class Kubelet:
    """The kubelet's atomic writer for one ConfigMap volume mounted at ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.keys: set[str] = set()

    def write(self, payload: dict[str, bytes]) -> str:
        """Project ``payload`` as the ConfigMap's new version; the new directory's name."""
        stamp = datetime.datetime.now(datetime.UTC).strftime("..%Y_%m_%d_%H_%M_%S.")
        version = Path(tempfile.mkdtemp(prefix=stamp, dir=self.folder))
        version.chmod(0o755)
        for name, data in payload.items():
            (version / name).write_bytes(data)
            (version / name).chmod(0o644)
        data_link = self.folder / "..data"
        old = os.readlink(data_link) if data_link.is_symlink() else None
        os.symlink(version.name, self.folder / "..data_tmp")
        os.rename(self.folder / "..data_tmp", data_link)
        for name in sorted(set(payload) - self.keys):
            os.symlink(f"..data/{name}", self.folder / name)
        for name in sorted(self.keys - set(payload)):
            (self.folder / name).unlink()
        self.keys = set(payload)
        if old is not None:
            shutil.rmtree(self.folder / old)
        return version.name


def patch(module: str, version: str, value: str) -> bytes:
    return textwrap.dedent(
        f"""\
        from hotpatch import Patch
        patch = Patch(version={version!r}, baseline="1.0")

        @patch.replace("{module}")
        def f():
            return {value!r}
        """
    ).encode()


def results(folder: Path, name: str) -> list[dict[str, Any]]:
    """Every result filed for the ConfigMap file ``name``, oldest first."""
    found = [
        json.loads(path.read_text())
        for where in ("applied", "rejected", "pending")
        for path in (folder / where).glob("*.result.json")
    ]
    return sorted((r for r in found if r.get("file") == name), key=lambda r: r["time"])


def outcome(folder: Path, name: str, count: int = 1) -> dict[str, Any]:
    """The ``count``-th result filed for ``name``, once it is there."""
    wait_for(lambda: len(results(folder, name)) >= count, f"result {count} of {name}")
    return results(folder, name)[count - 1]


def filed_bytes(folder: Path, name: str, where: str = "applied") -> bytes:
    """The file filed as ``where/name``, once it is there.

    The result is written first and the file filed after it: a reader that has
    seen the result waits for the file too.
    """
    path = folder / where / name
    wait_for(lambda: os.path.lexists(path), f"{where}/{name} filed beside its result")
    return path.read_bytes()
