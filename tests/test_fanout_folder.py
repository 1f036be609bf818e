"""install(workers=True) when the shared folder is deleted, made again or replaced under them.

Real worker processes on a real folder. A takeover of the new folder takes
its lock as the first start does, makes ``.workers/`` (every worker's socket,
the group's journal) and the outcome folders again, and exactly one worker
acts on each drop, which reaches every worker. While the folder is unsafe,
one ERROR says so and no drop is taken; once it is safe the workers carry on.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import time
from pathlib import Path

from drops import wait_for
from test_fanout import Workers, levels, patch_text, workers

from hotpatch.agent._control import request
from hotpatch.agent._names import LOCKFILE_NAME, PIDFILE_NAME, WORKERS_DIR

__all__ = ["workers"]

OUTCOMES = ("applied", "rejected", "pending")


def locked(folder: Path) -> bool:
    """Does some process hold the folder's lock (the flock on ``.hotpatch.lock``)?"""
    try:
        fd = os.open(folder / LOCKFILE_NAME, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def delete(folder: Path) -> None:
    """Delete the folder as ``rm -r`` would, seen from the workers: gone at once."""
    trash = folder.with_name(folder.name + ".deleted")
    os.rename(folder, trash)
    shutil.rmtree(trash)


def registered(workers: Workers, pids: list[int]) -> bool:
    """Is every worker's socket in ``.workers/``, answering?"""
    for pid in pids:
        try:
            if not request(workers.socket(pid), {"cmd": "worker"}, timeout=5)["ok"]:
                return False
        except OSError:
            return False
    return True


def owners(workers: Workers, pids: list[int]) -> list[int]:
    """The workers that say they own the folder now."""
    return [pid for pid in pids if request(workers.socket(pid), {"cmd": "worker"})["owner"]]


def errors(workers: Workers, *words: str) -> list[str]:
    return [
        line for line in workers.log_lines() if " ERROR " in line and all(w in line for w in words)
    ]


def taken_over(workers: Workers, pids: list[int]) -> None:
    """Wait until the new folder is locked, every worker registered there and one owns it."""
    folder = workers.folder
    wait_for(lambda: locked(folder), "the new folder's lock to be taken")
    wait_for(lambda: registered(workers, pids), "every worker's socket in the new .workers/")
    wait_for((folder / PIDFILE_NAME).exists, "the owner's pidfile")
    wait_for(lambda: len(owners(workers, pids)) == 1, "exactly one owner")


def test_a_folder_deleted_and_made_again_is_taken_over_with_its_lock(workers: Workers) -> None:
    pids = [workers.start() for _ in range(3)]
    workers.drop("a.py", patch_text("1.1", 1))
    workers.filed("a.py", "applied")

    delete(workers.folder)
    wait_for(lambda: errors(workers, str(workers.folder), "is gone"), "the ERROR saying so")
    time.sleep(1.5)  # several looks at the folder by every worker: still one ERROR
    assert len(errors(workers)) == 1, errors(workers)

    workers.folder.mkdir(mode=0o700)
    taken_over(workers, pids)
    folder = workers.folder
    for sub in OUTCOMES:
        assert (folder / sub).is_dir()
    assert (folder / WORKERS_DIR).stat().st_mode & 0o777 == 0o700
    owner = owners(workers, pids)[0]
    assert workers.owner() == owner
    # The group's journal was in the folder: the owner records the running level again.
    wait_for(workers.journal.exists, "the group's journal written again")
    assert levels(workers.recorded()) == ["1.1"]

    workers.drop("b.py", patch_text("1.2", 2))
    result = workers.filed("b.py", "applied")
    assert sorted(w["pid"] for w in result["workers"]) == sorted(pids)
    assert all(workers.level(pid) == ["1.1", "1.2"] for pid in pids)
    assert sorted(p.name for p in (folder / "applied").iterdir()) == ["b.py", "b.py.result.json"]
    assert len(errors(workers)) == 1, errors(workers)
    assert any("safe again" in line for line in workers.log_lines())
    assert levels(workers.recorded()) == ["1.1", "1.2"]
    assert all(workers.level(pid) == ["1.1", "1.2"] for pid in workers.restart_all(2))


def test_a_folder_replaced_by_rename_is_taken_over_and_each_drop_taken_once(
    workers: Workers,
) -> None:
    pids = [workers.start() for _ in range(3)]
    workers.drop("a.py", patch_text("1.1", 1))
    workers.filed("a.py", "applied")
    old = workers.root / "patches.old"
    new = workers.root / "patches.new"
    new.mkdir(mode=0o700)
    (new / "b.py").write_text(patch_text("1.2", 2))  # waiting in the new folder already
    # A copy of the old folder's .workers/ (cp -a): each worker's socket file, dead.
    (new / WORKERS_DIR).mkdir(mode=0o700)
    shutil.copy(workers.journal, new / WORKERS_DIR / "journal.json")
    for pid in pids:
        with socket.socket(socket.AF_UNIX) as dead:
            dead.bind(str(new / WORKERS_DIR / f"{pid}.sock"))
    os.rename(workers.folder, old)
    os.rename(new, workers.folder)

    result = workers.filed("b.py", "applied")
    assert sorted(w["pid"] for w in result["workers"]) == sorted(pids)
    taken_over(workers, pids)
    assert all(workers.level(pid) == ["1.1", "1.2"] for pid in pids)
    assert sorted(p.name for p in (workers.folder / "applied").iterdir()) == [
        "b.py",
        "b.py.result.json",
    ]
    # Nobody watches the old folder any more: what lands there stays there.
    (old / "stray.py").write_text(patch_text("1.3", 3))
    workers.drop("c.py", patch_text("1.4", 4))
    assert len(workers.filed("c.py", "applied")["workers"]) == 3
    assert (old / "stray.py").exists()
    assert not (old / "applied" / "stray.py.result.json").exists()
    assert all(workers.level(pid) == ["1.1", "1.2", "1.4"] for pid in pids)
    assert levels(workers.recorded()) == ["1.1", "1.2", "1.4"]
    assert errors(workers) == []  # replaced by a safe folder: nothing was ever unsafe


def test_an_unsafe_replacement_is_not_taken_until_it_is_made_safe(workers: Workers) -> None:
    pids = [workers.start() for _ in range(2)]
    delete(workers.folder)
    # Made unsafe before it is put in place: a folder made and then re-permissioned
    # would be a safe folder for an instant, one a worker may rightly take.
    unsafe = workers.folder.with_name(workers.folder.name + ".new")
    unsafe.mkdir()
    unsafe.chmod(0o777)
    os.rename(unsafe, workers.folder)
    (workers.folder / "planted.py").write_text(patch_text("1.1", 1))
    wait_for(lambda: errors(workers, "writable by other users"), "the ERROR saying so")
    time.sleep(1.5)
    assert len(errors(workers, "writable by other users")) == 1, errors(workers)
    assert not locked(workers.folder)  # no worker took the lock of an unsafe folder
    assert not (workers.folder / WORKERS_DIR).exists()  # nor registered there
    assert (workers.folder / "planted.py").exists()

    workers.folder.chmod(0o700)
    result = workers.filed("planted.py", "applied")
    assert sorted(w["pid"] for w in result["workers"]) == sorted(pids)
    taken_over(workers, pids)
    assert all(workers.level(pid) == ["1.1"] for pid in pids)


def test_workers_dir_removed_alone_is_made_again(workers: Workers) -> None:
    """``.workers/`` deleted (the sockets and the journal with it): made again by itself."""
    pids = [workers.start() for _ in range(3)]
    workers.drop("a.py", patch_text("1.1", 1))
    workers.filed("a.py", "applied")
    delete(workers.folder / WORKERS_DIR)
    wait_for(lambda: registered(workers, pids), "every worker's socket again")
    wait_for(workers.journal.exists, "the group's journal written again")
    workers.drop("b.py", patch_text("1.2", 2))
    assert len(workers.filed("b.py", "applied")["workers"]) == 3
    assert levels(workers.recorded()) == ["1.1", "1.2"]
