"""Test helpers shared by the watched-folder tests: bounded waits and a folder to drop into."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hotpatch.agent._outcome import RESULT_SUFFIX

WAIT_S = 60.0  # a bound so a broken build fails instead of hanging; never a measurement


def wait_for(predicate: Callable[[], object], what: str, timeout: float = WAIT_S) -> None:
    """Poll ``predicate`` until it is true; fail the test naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.005)


class DropFolder:
    """A watched folder (0700) and an outbox: files are written outside, then renamed in."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / "patches"
        self.path.mkdir(mode=0o700)
        self.outbox = root / "outbox"
        self.outbox.mkdir()
        self.journal = root / "state" / "journal.json"

    def write(self, name: str, content: str | bytes) -> Path:
        """``name`` in the outbox, ready to be renamed in."""
        path = self.outbox / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    def put(self, path: Path) -> Path:
        """Rename ``path`` (file, link, directory) into the folder: a drop."""
        target = self.path / path.name
        os.rename(path, target)
        return target

    def drop(self, name: str, content: str | bytes) -> Path:
        return self.put(self.write(name, content))

    def result(self, name: str, where: str) -> dict[str, Any]:
        """The result file of ``name`` under ``where``, once it exists."""
        path = self.path / where / f"{name}{RESULT_SUFFIX}"
        wait_for(path.exists, str(path))
        data: dict[str, Any] = json.loads(path.read_text())
        return data

    def filed(self, name: str, where: str = "applied") -> dict[str, Any]:
        """Wait until ``name`` is filed under ``where`` (result and file); its result."""
        wait_for(
            lambda: (
                os.path.lexists(self.path / where / name) and not os.path.lexists(self.path / name)
            ),
            f"{name} to move to {where}/",
        )
        return self.result(name, where)

    def listing(self, where: str) -> list[str]:
        return sorted(os.listdir(self.path / where))


class Watching:
    """``hotpatch watch FOLDER --json --count N`` running in a process of its own.

    Started on entering (once it says it is listening); ``records()`` waits for
    its N lines; leaving kills it if it is still running.
    """

    def __init__(self, folder: Path, count: int, *, plain: bool = False) -> None:
        self.folder, self.count, self.plain = folder, count, plain
        self.process: subprocess.Popen[str] | None = None
        self.stderr = ""

    def __enter__(self) -> Watching:
        command = [sys.executable, "-m", "hotpatch", "watch", str(self.folder)]
        json_flag = [] if self.plain else ["--json"]
        self.process = subprocess.Popen(
            [*command, "--count", str(self.count), *json_flag],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stderr is not None
        assert "watching" in self.process.stderr.readline()  # it follows from here on
        return self

    def output(self) -> str:
        """Its whole output, once it has shown ``count`` lines and ended."""
        assert self.process is not None
        out, self.stderr = self.process.communicate(timeout=WAIT_S * 2)
        assert self.process.returncode == 0, self.stderr
        return out

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.output().splitlines()]

    def __exit__(self, *exc_info: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.communicate()
