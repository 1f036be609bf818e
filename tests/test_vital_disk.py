"""The check after an apply on a disk that does not take writes: the disk, not the patch.

After each apply the agent writes a result file and reads it back (can it
still file outcomes?) within its ``vital_timeout``. A disk that holds that write
longer -- frozen (``fsfreeze``), or saturated -- must not get a good patch
refused as one that broke the agent, nor a CRITICAL "restart the service": the
patch is rolled back (it is never kept unchecked), the drop waits with the disk
named, and goes in once the disk takes writes again.

The disks are real: an ext4 image on a loop device, mounted and frozen here,
and a tmpfs filled to its last block (as root; skipped where that cannot
be done).
"""

from __future__ import annotations

import logging
import os
import subprocess
import textwrap
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from drops import DropFolder, wait_for
from test_folder_resources import (
    SmallDisk,
    quick_retries,  # noqa: F401 -- autouse here too
    tmpfs,
)

import hotpatch
from hotpatch._journal import COMPACT_MIN
from hotpatch.agent import _local
from hotpatch.agent._local import ROLLBACK_TRIES_S
from hotpatch.agent._outcome import RESULT_SUFFIX
from hotpatch.agent._vital import SLOW_DISK

HELD = """\
import threading
STARTED = threading.Event()
RELEASE = threading.Event()

def f():
    return 0
"""


def held_patch(module: str) -> str:
    """A patch of ``module.f`` whose migration waits for ``module.RELEASE``."""
    return textwrap.dedent(
        f"""\
        from hotpatch import Patch
        patch = Patch(version="1.0.1", baseline="1.0")

        @patch.replace("{module}:f")
        def f():
            return 1

        @patch.migrate({module!r})
        def up(module):
            module.STARTED.set()
            module.RELEASE.wait(60)
        """
    )


class FreezableDisk:
    """An ext4 file system on a loop device mounted at ``path``; ``freeze()`` holds every
    write to it (``fsfreeze``) until ``thaw()``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.frozen = False

    def freeze(self) -> None:
        subprocess.run(["fsfreeze", "--freeze", str(self.path)], check=True)
        self.frozen = True

    def thaw(self) -> None:
        if self.frozen:
            subprocess.run(["fsfreeze", "--unfreeze", str(self.path)], check=True)
            self.frozen = False


# A frozen disk holds the check's write for good, and a full one refuses the rollback's
# journal record every time: the agent gives up on either the same way after 3 s and 1 s
# as after its 10 s and 10 s, which these tests would only wait out. The agents here are
# installed with vital_timeout=QUICK_CHECK.
QUICK_CHECK = 3.0


@pytest.fixture(autouse=True)
def quick_rollback_tries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_local, "ROLLBACK_TRIES_S", 1.0)


@pytest.fixture
def freezable_disk(tmp_path: Path) -> Iterator[FreezableDisk]:
    image, mount = tmp_path / "disk.img", tmp_path / "disk"
    mount.mkdir()
    with image.open("wb") as out:
        out.truncate(32 << 20)
    made = subprocess.run(
        ["mkfs.ext4", "-q", str(image)], check=False, capture_output=True, text=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot make an ext4 file system here: {made.stderr.strip()}")
    done = subprocess.run(
        ["mount", "-o", "loop", str(image), str(mount)], check=False, capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a loop device here (needs root): {done.stderr.strip()}")
    disk = FreezableDisk(mount)
    try:
        os.chmod(mount, 0o700)
        yield disk
    finally:
        disk.thaw()
        subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.fixture
def journal_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A tmpfs big enough for a journal past its compaction size, and no bigger."""
    with tmpfs(tmp_path / "journal-disk", f"size={2 * COMPACT_MIN + (256 << 10)}") as disk:
        yield disk


@pytest.fixture
def held(make_module: Callable[[str], types.ModuleType]) -> Iterator[types.ModuleType]:
    module = make_module(HELD)
    yield module
    module.RELEASE.set()


def test_a_good_patch_on_a_frozen_disk_waits_and_goes_in_never_refused(
    tmp_path: Path,
    freezable_disk: FreezableDisk,
    held: types.ModuleType,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="hotpatch")
    folder = DropFolder(freezable_disk.path)
    journal = tmp_path / "journal.json"  # elsewhere: the rollback is not held by the disk
    agent = hotpatch.install("1.0", watch=folder.path, journal=journal, vital_timeout=QUICK_CHECK)

    def blamed() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.levelno >= logging.CRITICAL or "broke what the agent needs" in r.getMessage()
        ]

    try:
        folder.drop("fix.py", held_patch(held.__name__))
        assert held.STARTED.wait(60)  # the apply is in its migration
        freezable_disk.freeze()  # the check after the apply cannot write its result file
        held.RELEASE.set()
        wait_for(
            lambda: agent.status()["waiting"] is not None or blamed(),
            "the drop to wait for the disk",
            timeout=QUICK_CHECK + 60,
        )
        assert blamed() == []
        waiting = agent.status()["waiting"]
        assert waiting is not None
        assert SLOW_DISK in str(waiting), waiting
        assert held.f() == 0  # rolled back meanwhile: never kept unchecked
        assert agent.registry is not None
        assert agent.registry.level == ()

        freezable_disk.thaw()
        assert folder.filed("fix.py")["outcome"] == "applied"
        assert held.f() == 1
        assert agent.registry.level == ("1.0.1",)
        assert not (folder.path / "rejected" / f"fix.py{RESULT_SUFFIX}").exists()
        assert blamed() == []
    finally:
        freezable_disk.thaw()
        held.RELEASE.set()
        agent.stop()
        if agent.registry is not None and agent.registry.level:
            agent.registry.rollback(to="1.0")


class FillsDisk:
    """A plugin filling ``disk`` once a patch is in (its journal record written), before
    the check after the apply: the rollback's record then finds the disk full."""

    def __init__(self, disk: SmallDisk) -> None:
        self.disk = disk

    @hotpatch.hookimpl
    def hotpatch_after_apply(self) -> None:
        self.disk.fill()


def test_an_unchecked_patch_whose_rollback_cannot_be_journalled_is_not_called_broken(
    tmp_path: Path,
    freezable_disk: FreezableDisk,
    journal_disk: SmallDisk,
    held: types.ModuleType,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The check is held by the frozen disk (not known: roll back), and the rollback's
    journal record finds the journal's disk full: the patch stays, said as unchecked at
    ERROR with both causes, never CRITICAL as one that broke the agent."""
    caplog.set_level(logging.INFO, logger="hotpatch")
    folder = DropFolder(freezable_disk.path)
    journal = journal_disk.path / "journal.json"
    agent = hotpatch.install(
        "1.0",
        watch=folder.path,
        journal=journal,
        plugins=[FillsDisk(journal_disk)],
        vital_timeout=QUICK_CHECK,
    )
    # Past the journal's compaction size: the rollback rewrites it whole, in a new file.
    padding = "#" * 99 + "\n"
    text = held_patch(held.__name__) + padding * (COMPACT_MIN // len(padding) + 1)
    try:
        folder.drop("fix.py", text)
        assert held.STARTED.wait(60)
        freezable_disk.freeze()
        held.RELEASE.set()
        wait_for(
            lambda: any(r.levelno >= logging.ERROR for r in caplog.records),
            "the rollback to fail",
            timeout=QUICK_CHECK + ROLLBACK_TRIES_S + 60,
        )
        critical = [r.getMessage() for r in caplog.records if r.levelno >= logging.CRITICAL]
        assert critical == []
        said = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(said) == 1, said
        assert "unchecked" in said[0]
        assert SLOW_DISK in said[0]
        assert "No space left" in said[0]
        assert "hotpatch rollback" in said[0]
        assert held.f() == 1  # stays applied, as the journal says
        assert agent.registry is not None
        assert agent.registry.level == ("1.0.1",)

        journal_disk.free()
        freezable_disk.thaw()
        result = folder.filed("fix.py")
        assert result["outcome"] == "applied"
        assert "unchecked" in result["reason"]
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.CRITICAL] == []
    finally:
        freezable_disk.thaw()
        journal_disk.free()
        held.RELEASE.set()
        agent.stop()
        if agent.registry is not None and agent.registry.level:
            agent.registry.rollback(to="1.0")
