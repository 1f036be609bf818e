"""What came into and went from a folder, from an inotify instance read without a thread."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotpatch.agent._arrivals import Arrivals


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "patches"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def arrivals(folder: Path) -> Iterator[Arrivals]:
    watch = Arrivals.open(folder)
    assert watch is not None
    yield watch
    watch.close()


def test_the_first_look_lists_the_folder(folder: Path) -> None:
    (folder / "before.py").write_text("x = 1\n")
    watch = Arrivals.open(folder)
    assert watch is not None
    try:
        (folder / "after.py").write_text("x = 2\n")
        look = watch.look()
        assert look is not None
        assert look.whole
        assert look.came == {"before.py", "after.py"}
        again = watch.look()
        assert again is not None
        assert (again.came, again.went, again.whole) == (set(), set(), False)
    finally:
        watch.close()


def test_names_created_renamed_in_and_linked_are_seen_at_once(
    folder: Path, arrivals: Arrivals, tmp_path: Path
) -> None:
    arrivals.look()
    with (folder / "open.py").open("w") as f:  # being written: seen when created
        f.write("x = 1\n")
        outside = tmp_path / "moved.py"
        outside.write_text("x = 2\n")
        outside.rename(folder / "moved.py")
        os.link(folder / "moved.py", folder / "linked.py")
        (folder / "sub").mkdir()
        look = arrivals.look()
    assert look is not None
    assert look.came == {"open.py", "moved.py", "linked.py", "sub"}
    assert look.went == set()


def test_names_deleted_or_renamed_away_are_gone(
    folder: Path, arrivals: Arrivals, tmp_path: Path
) -> None:
    for name in ("a.py", "b.py", "c.py"):
        (folder / name).write_text("x = 1\n")
    arrivals.look()
    (folder / "a.py").unlink()
    (folder / "b.py").rename(tmp_path / "b.py")
    (folder / "c.py").rename(folder / "d.py")
    look = arrivals.look()
    assert look is not None
    assert look.came == {"d.py"}
    assert look.went == {"a.py", "b.py", "c.py"}


def test_a_name_that_came_and_went_between_looks_is_only_gone(
    folder: Path, arrivals: Arrivals
) -> None:
    arrivals.look()
    (folder / "brief.py").write_text("x = 1\n")
    (folder / "brief.py").unlink()
    (folder / "back.py").write_text("x = 1\n")
    (folder / "back.py").unlink()
    (folder / "back.py").write_text("x = 2\n")
    look = arrivals.look()
    assert look is not None
    assert look.came == {"back.py"}
    assert look.went == {"brief.py"}


def test_after_lost_events_the_folder_is_listed_again(folder: Path, arrivals: Arrivals) -> None:
    """More changes than the kernel's queue holds: the look says so and lists the folder."""
    arrivals.look()
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    (folder / "stays.py").write_text("x = 1\n")
    (folder / "goes.py").write_text("x = 1\n")
    for _ in range(limit // 2 + 1):  # a rename is two events
        os.rename(folder / "stays.py", folder / "stays.tmp")
        os.rename(folder / "stays.tmp", folder / "stays.py")
    (folder / "goes.py").unlink()  # lost with the overflow
    look = arrivals.look()
    assert look is not None
    assert look.whole
    assert look.came == {"stays.py"}
    follow = arrivals.look()
    assert follow is not None
    assert not follow.whole


@pytest.mark.parametrize("how", ["renamed away", "deleted"])
def test_the_folder_deleted_or_replaced_ends_the_watch(
    folder: Path, arrivals: Arrivals, how: str
) -> None:
    arrivals.look()
    if how == "deleted":
        folder.rmdir()
    else:
        folder.rename(folder.with_name("old"))
    folder.mkdir(mode=0o700)
    (folder / "new.py").write_text("x = 1\n")
    assert arrivals.look() is None  # the caller lists the folder there now
    assert arrivals.look() is None
    again = Arrivals.open(folder)
    assert again is not None
    try:
        look = again.look()
        assert look is not None
        assert look.came == {"new.py"}
    finally:
        again.close()


def test_a_folder_that_is_not_there_cannot_be_watched(tmp_path: Path) -> None:
    assert Arrivals.open(tmp_path / "missing") is None
    (tmp_path / "file").write_text("")
    assert Arrivals.open(tmp_path / "file") is None  # IN_ONLYDIR
