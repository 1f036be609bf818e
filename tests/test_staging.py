"""Staging: the private copy of each drop the verification child reads.

A burst of drops stages each copy in one reused private directory (mode 0700,
owned by the service's user, checked before each copy), never one made and
removed per drop; copies held at the same time never share a directory or a
file. Real directories and files; a copy checked by reading it back.
"""

from __future__ import annotations

import os
import shutil
import stat
import threading
from pathlib import Path

import pytest

from hotpatch.agent._drops import Interrupted
from hotpatch.agent._names import STAGING
from hotpatch.agent._staging import Staging

OTHER_UID = 4242


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "patches"
    (path / STAGING).mkdir(parents=True, mode=0o700)
    return path


def _private(path: Path) -> bool:
    st = path.lstat()
    return (
        stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()
    )


def test_a_burst_of_copies_reuses_one_private_directory(folder: Path) -> None:
    with Staging(folder) as staging:
        parents = set()
        for n in range(50):
            data = f"patch {n}\n".encode()
            with staging.copy(f"p{n}.py", data) as staged:
                assert staged.read_bytes() == data
                assert stat.S_IMODE(staged.lstat().st_mode) == 0o600
                assert _private(staged.parent)
                assert staged.parent.parent == folder / STAGING
                parents.add(staged.parent.stat().st_ino)
            assert not staged.exists()  # the copy goes, its directory stays
            assert staged.parent.is_dir()
            assert os.listdir(staged.parent) == []
        assert len(parents) == 1
        assert os.listdir(folder / STAGING) == [staged.parent.name]
    assert os.listdir(folder / STAGING) == []  # closed: nothing left behind


def test_copies_held_at_the_same_time_never_share_a_directory(folder: Path) -> None:
    with Staging(folder) as staging:
        with staging.copy("fix.py", b"one") as first, staging.copy("fix.py", b"two") as second:
            assert first.parent != second.parent
            assert (first.read_bytes(), second.read_bytes()) == (b"one", b"two")
        # Both directories are kept, and taken again one after the other.
        with staging.copy("fix.py", b"three") as third:
            assert third.parent in (first.parent, second.parent)
            assert third.read_bytes() == b"three"


def test_copies_from_many_threads_each_read_their_own_bytes(folder: Path) -> None:
    errors: list[str] = []
    barrier = threading.Barrier(8)

    def stage(n: int) -> None:
        for round_ in range(20):
            data = f"thread {n} round {round_}\n".encode() * (n + 1)
            with staging.copy("same-name.py", data) as staged:
                if round_ == 0:
                    barrier.wait()  # all eight held at once, at least once
                if staged.read_bytes() != data:
                    errors.append(f"thread {n} read another copy in {staged}")

    with Staging(folder) as staging:
        threads = [threading.Thread(target=stage, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        kept = os.listdir(folder / STAGING)
        assert 1 <= len(kept) <= 8  # directories for the copies held at once, no more
        assert all(_private(folder / STAGING / name) for name in kept)
        assert all(os.listdir(folder / STAGING / name) == [] for name in kept)


@pytest.mark.parametrize("how", ["opened up", "another owner", "a symlink", "a file"])
def test_a_directory_changed_between_two_copies_is_not_used_again(
    folder: Path, tmp_path: Path, how: str
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    with Staging(folder) as staging:
        with staging.copy("a.py", b"a") as staged:
            used = staged.parent
        if how == "opened up":
            used.chmod(0o777)
        elif how == "another owner":
            os.chown(used, OTHER_UID, -1)
        elif how == "a symlink":
            used.rmdir()
            used.symlink_to(elsewhere)
        else:
            used.rmdir()
            used.write_bytes(b"not a directory")
        with staging.copy("b.py", b"b") as staged:
            assert staged.parent != used
            assert _private(staged.parent)
            assert staged.read_bytes() == b"b"
        assert os.listdir(elsewhere) == []  # nothing written through the link
        if how == "a file":
            assert used.read_bytes() == b"not a directory"


def test_a_directory_the_check_wrote_into_is_not_used_again(folder: Path) -> None:
    with Staging(folder) as staging:
        with staging.copy("a.py", b"a") as staged:
            (staged.parent / "left-by-the-check").write_text("x")
            (staged.parent / "__pycache__").mkdir()
            used = staged.parent
        assert not used.exists()  # removed with what the check left
        with staging.copy("b.py", b"b") as staged:
            assert staged.parent != used
            assert os.listdir(staged.parent) == ["b.py"]


def test_a_directory_removed_between_two_copies_is_made_again(folder: Path) -> None:
    with Staging(folder) as staging:
        with staging.copy("a.py", b"a") as staged:
            used = staged.parent
        shutil.rmtree(used)
        with staging.copy("b.py", b"b") as staged:
            assert _private(staged.parent)
            assert staged.read_bytes() == b"b"


def test_staging_gone_under_a_copy_is_interrupted_not_the_patch(folder: Path) -> None:
    with Staging(folder) as staging:
        with staging.copy("a.py", b"a"):
            pass
        shutil.rmtree(folder / STAGING)
        with pytest.raises(Interrupted, match="is gone"), staging.copy("b.py", b"b"):
            pass
        (folder / STAGING).mkdir(mode=0o700)  # made again (the guard does): staged again
        with staging.copy("c.py", b"c") as staged:
            assert staged.read_bytes() == b"c"


def _check_a_copy_removed(staging: Staging) -> None:
    with staging.copy("a.py", b"a") as staged:
        shutil.rmtree(staged.parent)
        staged.read_bytes()


def test_a_copy_removed_while_checked_is_interrupted(folder: Path) -> None:
    with Staging(folder) as staging:
        with pytest.raises(Interrupted, match="was removed while it was checked"):
            _check_a_copy_removed(staging)
        with staging.copy("b.py", b"b") as staged:  # staged again, in a new directory
            assert staged.read_bytes() == b"b"


def test_opening_clears_what_a_crash_left(folder: Path) -> None:
    left = folder / STAGING / "tmp-left"
    left.mkdir()
    (left / "x.py").write_text("x")
    (folder / STAGING / "stray.py").write_text("x")
    with Staging(folder) as staging:
        assert os.listdir(folder / STAGING) == []
        with staging.copy("a.py", b"a") as staged:
            assert staged.read_bytes() == b"a"


def test_a_staging_of_its_own_goes_on_closing() -> None:
    staging = Staging(None).open()
    with staging.copy("a.py", b"a") as staged:
        own = staged.parent.parent
        assert staged.read_bytes() == b"a"
    assert own.is_dir()
    staging.close()
    assert not own.exists()
