"""Running short under ``hotpatch run --watch``: the serving process's disk fills up.

The serving process writes the journal; the supervisor stages, files the
result and moves the drop. Each may find a real small tmpfs full (mounted
here, as root). A patch taken then is not the patch's fault: it must wait in
the folder, first in line, be tried again, go in once there is room, in
version order, with nothing lost and no rejection recorded -- as under an
embedded agent (``test_folder_resources``).
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_baselines import drop_bundle, make_bundle
from test_folder_resources import FS_BYTES, SmallDisk, small_disk
from test_supervisor import Supervised, request, supervise, wait_for
from test_supervisor_health import HOT, SICK_HOOK, drop_release, with_hot_patch
from test_supervisor_patches import (
    BASE_OPTIONS,
    drop,
    journal_level,
    logic_patch,
    result_of,
    under_load,
)

from hotpatch._journal import Journal
from hotpatch.agent._control import request as control

__all__ = ["small_disk", "supervise"]  # the fixtures

pytestmark = pytest.mark.slow  # the back-off of a real supervisor: seconds


def big(text: str) -> str:
    """``text`` and a comment of two pages: its journal record cannot fit in a page's slack."""
    return text + "#" * 8192 + "\n"


def stage(folder: Path, name: str, text: str) -> Path:
    """``name`` written under a temporary name in ``folder`` (before the disk fills)."""
    tmp = folder / f".{name}.part"
    tmp.write_text(text)
    return tmp


def put(staged: Path) -> None:
    """The drop: the staged file renamed to its name (takes no space)."""
    staged.rename(staged.with_name(staged.name[1 : -len(".part")]))


def outcome_of(state: Path, name: str, supervised: Supervised) -> tuple[str, dict[str, Any]]:
    """Where ``name``'s result was filed under ``state``, and the result."""
    found: list[tuple[str, dict[str, Any]]] = []

    def filed() -> bool:
        for where in ("applied", "rejected", "pending"):
            path = state / where / f"{name}.result.json"
            if path.exists():
                found.append((where, json.loads(path.read_text())))
                return True
        return supervised.process.poll() is not None

    wait_for(filed, f"the outcome of {name}")
    assert found, supervised.log()[-5000:]
    return found[0]


def folder_status(socket: Path) -> dict[str, Any]:
    answer: dict[str, Any] = control(socket, {"cmd": "status"})
    return answer


def waited(socket: Path, name: str, what: str, *, attempts: int) -> dict[str, Any]:
    """``name`` waited for ``what`` through ``attempts`` tries (status); its ``waiting``.

    Fails at once when ``name`` is filed as rejected meanwhile (beside the socket).
    """
    found: list[dict[str, Any]] = []
    refused = socket.parent / "rejected" / f"{name}.result.json"

    def tried() -> bool:
        if refused.exists():
            pytest.fail(f"{name} was rejected: {refused.read_text()}")
        if not socket.exists():
            return False  # the fleet serves its folder's socket once its workers started
        waiting = folder_status(socket).get("waiting") or {}
        if (
            waiting.get("file") == name
            and what in str(waiting.get("reason"))
            and waiting.get("attempts", 0) >= attempts
        ):
            found.append(waiting)
            return True
        return False

    wait_for(tried, f"{name} to be tried {attempts} times for want of {what}")
    return found[0]


def errors(supervised: Supervised, *words: str) -> int:
    """How many ERROR lines of the log say all of ``words``."""
    lines = supervised.log().splitlines()
    return sum(1 for line in lines if " ERROR " in line and all(w in line for w in words))


def served(supervised: Supervised, *words: str) -> list[str]:
    """The lines of the serving process's log (its pid) that say all of ``words``."""
    pid = f"[{supervised.child_pid}] "
    lines = supervised.log().splitlines()
    return [line for line in lines if pid in line and all(w in line for w in words)]


def rejections(state: Path) -> list[str]:
    rejected = state / "rejected"
    return sorted(os.listdir(rejected)) if rejected.exists() else []


@pytest.mark.parametrize("full", ["journal", "state"])
def test_a_full_disk_under_run_keeps_the_drop_and_retries_it_in_version_order(
    supervise: Callable[..., Supervised], tmp_path: Path, small_disk: SmallDisk, full: str
) -> None:
    # "journal": the serving process cannot record the level (--journal on the
    # small disk); "state": nothing hotpatch writes fits (--state-dir there:
    # staging, journal, result files, outcome folders).
    folder = tmp_path / "patches"
    folder.mkdir(mode=0o700)
    if full == "journal":
        state, options = folder, ("--journal", str(small_disk.path / "journal.json"))
        journal = small_disk.path / "journal.json"
    else:
        state, options = small_disk.path, ("--state-dir", str(small_disk.path))
        journal = small_disk.path / ".journal.json"
    supervised = supervise(options=("--watch", str(folder), *options, *BASE_OPTIONS))
    socket = state / ".hotpatch.sock"
    with under_load(supervised) as load:
        first = stage(folder, "a-1.0.1.py", logic_patch("1.0.1", "one"))
        put(first)  # with room: the journal is there before the disk fills
        assert outcome_of(state, "a-1.0.1.py", supervised)[0] == "applied"
        second = stage(folder, "b-1.0.2.py", big(logic_patch("1.0.2", "two")))
        third = stage(folder, "c-1.0.3.py", big(logic_patch("1.0.3", "three")))

        small_disk.fill()
        put(second)
        held = waited(socket, "b-1.0.2.py", "disk full", attempts=2)
        assert "nothing of it was applied" in held["reason"], held
        put(third)  # a later version, which must not go first
        waited(socket, "b-1.0.2.py", "disk full", attempts=held["attempts"] + 1)
        assert errors(supervised, "b-1.0.2.py waits", "disk full") == 1  # said once
        # hotpatch apply through the folder's socket: refused as a shortage, nothing changed.
        fix = tmp_path / "fix.py"
        fix.write_text(big(logic_patch("1.0.9", "nine")))
        answer = control(socket, {"cmd": "apply", "path": str(fix)}, timeout=60)
        assert (answer["ok"], answer["error_type"]) == (False, "Shortage"), answer
        assert "disk full" in answer["error"]
        assert request(supervised.address, "/get")["tag"] == "one"
        assert supervised.status()["patches"]["level"] == ["1.0.1"]
        assert (folder / "b-1.0.2.py").exists()
        assert (folder / "c-1.0.3.py").exists()
        assert rejections(state) == []
        if full == "journal":  # the serving process says what happens: kept, tried again, why
            said = served(supervised, "1.0.2")
            assert not [line for line in said if "rejected" in line], said
            kept = [line for line in said if "keeps it" in line and "tries again" in line]
            assert kept, supervised.log()[-3000:]
            assert all("disk full" in line for line in kept), kept

        small_disk.free()
        for name in ("b-1.0.2.py", "c-1.0.3.py"):
            where, result = outcome_of(state, name, supervised)
            assert (where, result["outcome"]) == ("applied", "applied"), result
        assert request(supervised.address, "/get")["tag"] == "three"
        assert supervised.status()["patches"]["level"] == ["1.0.1", "1.0.2", "1.0.3"]
        assert journal_level(journal) == ["1.0.1", "1.0.2", "1.0.3"]
        assert folder_status(socket)["waiting"] is None
        assert rejections(state) == []
    load.check(request(supervised.address, "/get")["counters"])


def test_a_disk_full_before_the_outcome_is_filed_under_run_keeps_it_until_there_is_room(
    supervise: Callable[..., Supervised], tmp_path: Path, small_disk: SmallDisk
) -> None:
    # The folder on the small disk, the journal elsewhere: the patch's migration
    # (in the serving process) fills the disk, so the patch is applied and
    # journalled, and only its result file and the move to applied/ find no room.
    folder = small_disk.path / "patches"
    folder.mkdir(mode=0o700)
    journal = tmp_path / "journal.json"
    options = ("--watch", str(folder), "--journal", str(journal), *BASE_OPTIONS)
    supervised = supervise(options=options)
    socket = folder / ".hotpatch.sock"
    filler = small_disk.filler
    filling = logic_patch(
        "1.0.1",
        "one",
        extra=f"""
        @patch.migrate("counter_logic")
        def fill(module):
            import os
            fd = os.open({str(filler)!r}, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                while True:
                    os.write(fd, bytes(4096))
            except OSError:
                pass
            finally:
                os.close(fd)
        """,
    )
    with under_load(supervised) as load:
        first = stage(folder, "a-1.0.1.py", filling)
        second = stage(folder, "b-1.0.2.py", logic_patch("1.0.2", "two"))
        put(first)
        held = waited(socket, "a-1.0.1.py", "disk full", attempts=2)
        assert "its outcome (applied) cannot be filed" in held["reason"], held
        assert request(supervised.address, "/get")["tag"] == "one"  # applied: only filing waits
        assert journal_level(journal) == ["1.0.1"]
        put(second)
        waited(socket, "a-1.0.1.py", "disk full", attempts=held["attempts"] + 1)
        assert supervised.status()["patches"]["level"] == ["1.0.1"]
        assert (folder / "b-1.0.2.py").exists()

        small_disk.free()
        where, result = outcome_of(folder, "a-1.0.1.py", supervised)
        assert (where, result["outcome"]) == ("applied", "applied"), result
        where, result = outcome_of(folder, "b-1.0.2.py", supervised)
        assert (where, result["outcome"]) == ("applied", "applied"), result
        wait_for(lambda: not (folder / "b-1.0.2.py").exists(), "b-1.0.2.py to be filed")
        assert sorted(os.listdir(folder / "applied")) == [
            "a-1.0.1.py",
            "a-1.0.1.py.result.json",
            "b-1.0.2.py",
            "b-1.0.2.py.result.json",
        ]
        assert request(supervised.address, "/get")["tag"] == "two"
        assert journal_level(journal) == ["1.0.1", "1.0.2"]
        assert rejections(folder) == []
    load.check(request(supervised.address, "/get")["counters"])


def test_a_patch_needing_a_restart_waits_while_the_journal_disk_is_full(
    supervise: Callable[..., Supervised], tmp_path: Path, small_disk: SmallDisk
) -> None:
    folder = tmp_path / "patches"
    folder.mkdir(mode=0o700)
    journal = small_disk.path / "journal.json"
    options = ("--watch", str(folder), "--journal", str(journal), *BASE_OPTIONS)
    supervised = supervise(options=options)
    socket = folder / ".hotpatch.sock"
    first_pid = supervised.child_pid
    with under_load(supervised) as load:
        restart = logic_patch("1.0.1", "restarted", head=", restart=True")
        first = stage(folder, "a-1.0.1.py", big(restart))
        later = stage(folder, "b-1.0.2.py", big(logic_patch("1.0.2", "two")))
        small_disk.fill()
        put(first)
        held = waited(socket, "a-1.0.1.py", "disk full", attempts=2)
        put(later)
        waited(socket, "a-1.0.1.py", "disk full", attempts=held["attempts"] + 1)
        assert errors(supervised, "a-1.0.1.py waits", "disk full", "restart") == 1
        assert errors(supervised, ") failed: ") == 0  # each failed restart: a warning
        answer = request(supervised.address, "/get")
        assert answer["tag"] == "base"
        assert answer["pid"] == first_pid  # the old process keeps serving meanwhile
        assert (folder / "b-1.0.2.py").exists()
        assert rejections(folder) == []

        small_disk.free()
        where, result = outcome_of(folder, "a-1.0.1.py", supervised)
        assert (where, result["outcome"], result["via"]) == ("applied", "applied", "restart")
        where, result = outcome_of(folder, "b-1.0.2.py", supervised)
        assert (where, result["outcome"]) == ("applied", "applied"), result
        wait_for(
            lambda: request(supervised.address, "/get")["tag"] == "two", "the service to say two"
        )
        assert journal_level(journal) == ["1.0.1", "1.0.2"]
        assert rejections(folder) == []
        time.sleep(0.2)  # the load goes on across the restart
    load.check(request(supervised.address, "/get")["counters"])


def test_a_worker_short_of_disk_halts_the_rollout_and_the_drop_waits(
    supervise: Callable[..., Supervised], tmp_path: Path, small_disk: SmallDisk
) -> None:
    # --workers 2: each worker keeps its own journal beside --journal, on the small disk.
    folder = tmp_path / "patches"
    folder.mkdir(mode=0o700)
    journal = small_disk.path / "journal.json"
    options = ("--workers", "2", "--settle", "0", "--watch", str(folder), "--journal")
    supervised = supervise(options=(*options, str(journal), *BASE_OPTIONS), serving=False)
    supervised.wait(
        lambda s: len(s.get("workers", [])) == 2 and all(w["pid"] for w in s["workers"]),
        "two serving workers",
    )
    socket = folder / ".hotpatch.sock"
    first = stage(folder, "a-1.0.1.py", big(logic_patch("1.0.1", "one")))
    later = stage(folder, "b-1.0.2.py", big(logic_patch("1.0.2", "two")))
    small_disk.fill()
    put(first)
    held = waited(socket, "a-1.0.1.py", "disk full", attempts=2)
    assert "halted after batch 1" in held["reason"], held
    put(later)
    waited(socket, "a-1.0.1.py", "disk full", attempts=held["attempts"] + 1)
    assert all(w["level"] == [] for w in supervised.status()["workers"])
    assert rejections(folder) == []

    small_disk.free()
    for name in ("a-1.0.1.py", "b-1.0.2.py"):
        where, result = outcome_of(folder, name, supervised)
        assert (where, result["outcome"]) == ("applied", "applied"), result
    workers = supervised.wait(
        lambda s: all(w["level"] == ["1.0.1", "1.0.2"] for w in s["workers"]),
        "both workers at 1.0.2",
    )["workers"]
    assert len(workers) == 2
    for index in range(2):
        worker_journal = small_disk.path / f"journal.worker{index}.json"
        assert journal_level(worker_journal) == ["1.0.1", "1.0.2"]
    assert rejections(folder) == []


def test_a_serving_process_out_of_descriptors_keeps_the_drop_until_it_has_some(
    supervise: Callable[..., Supervised], tmp_path: Path
) -> None:
    folder = tmp_path / "patches"
    folder.mkdir(mode=0o700)
    supervised = supervise(options=("--watch", str(folder), *BASE_OPTIONS))
    socket = folder / ".hotpatch.sock"
    pid = supervised.child_pid
    first = stage(folder, "a-1.0.1.py", logic_patch("1.0.1", "one"))
    second = stage(folder, "b-1.0.2.py", logic_patch("1.0.2", "two"))
    # No descriptor number left below the limit: the serving process's next open() fails.
    _, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    open_fds = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
    lowest_free = min(set(range(len(open_fds) + 1)) - open_fds)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (lowest_free, hard))
    put(first)
    held = waited(socket, "a-1.0.1.py", "out of file descriptors", attempts=2)
    put(second)
    waited(socket, "a-1.0.1.py", "out of file descriptors", attempts=held["attempts"] + 1)
    assert (folder / "b-1.0.2.py").exists()
    assert rejections(folder) == []

    resource.prlimit(pid, resource.RLIMIT_NOFILE, (hard, hard))
    for name in ("a-1.0.1.py", "b-1.0.2.py"):
        where, result = outcome_of(folder, name, supervised)
        assert (where, result["outcome"]) == ("applied", "applied"), result
    assert request(supervised.address, "/get")["tag"] == "two"
    assert supervised.child_pid == pid  # hot, in the same process, which never stopped
    assert set(supervised.status()["restarts"]) <= {"start"}, supervised.status()["restarts"]
    assert rejections(folder) == []


def test_a_restart_at_the_descriptor_limit_loses_no_update(
    supervise: Callable[..., Supervised],
) -> None:
    # The old process can make no new descriptor: a state round before the drain
    # cannot be written, and the restart stops with the old process serving; its
    # final round, if it comes to that, goes in the memfd kept in reserve. Either
    # way no update is lost.
    supervised = supervise()
    with under_load(supervised) as load:
        pid = supervised.child_pid
        wait_for(lambda: supervised.status()["snapshot"]["count"] >= 1, "a state round")
        _, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        open_fds = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
        lowest_free = min(set(range(len(open_fds) + 1)) - open_fds)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (lowest_free, hard))
        outcome = supervised.restart()
        if outcome["ok"]:
            assert outcome["state"] == "complete", outcome
            wait_for(lambda: load.served_by(outcome["new_pid"]), "a request to the new process")
        else:
            assert "keeps serving" in outcome["error"], outcome
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (hard, hard))
            assert supervised.child_pid == pid
    load.check(request(supervised.address, "/get")["counters"])


def test_a_good_patch_taken_at_the_descriptor_limit_is_not_refused_by_the_vital_check(
    supervise: Callable[..., Supervised], tmp_path: Path
) -> None:
    # One descriptor left below the limit: enough to receive the patch's memfd and
    # write the journal (one at a time), not for a new socket pair. The check that
    # the channel still works after the apply must not need one: the chaos run saw a
    # good patch applied, rolled back and refused as if it broke the channel
    # ("Too many open files").
    folder = tmp_path / "patches"
    folder.mkdir(mode=0o700)
    options = ("--watch", str(folder), "--snapshot-interval", "0", *BASE_OPTIONS)
    supervised = supervise(options=options)
    pid = supervised.child_pid
    staged = stage(folder, "a-1.0.1.py", logic_patch("1.0.1", "one"))
    _, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    open_fds = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
    free = sorted(set(range(len(open_fds) + 2)) - open_fds)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (free[1], hard))  # only free[0] below it
    try:
        put(staged)
        where, result = outcome_of(folder, "a-1.0.1.py", supervised)
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (hard, hard))
    assert (where, result["outcome"]) == ("applied", "applied"), result
    assert request(supervised.address, "/get")["tag"] == "one"
    assert supervised.child_pid == pid
    assert journal_level(folder / ".journal.json") == ["1.0.1"]


# -- a rollback while the journal's disk is full ------------------------------------------

# The rest of a health check: write to ``filler`` until the disk is full, then fail.
FILL_THE_DISK = """\
    fd = os.open({filler!r}, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while True:
            os.write(fd, bytes(4096))
    except OSError:
        pass
    finally:
        os.close(fd)
    return False
"""

# The health check of the new code fills the journal's disk, then fails: the
# rollback that follows must put the journal back without a byte of new space.
FILL_THEN_SICK = (
    """
def healthy():
    import os
"""
    + FILL_THE_DISK
)

# In the new process, the journal is compacted (rewritten whole, renamed over
# the old file) at the patch's record: the file the rollback puts back is no
# longer the journal's.
COMPACTS = """
import hotpatch._journal
hotpatch._journal.Journal._compaction_due = lambda self: True
"""


def assert_rolled_back_on_a_full_disk(
    supervised: Supervised, journal: Path, small_disk: SmallDisk
) -> None:
    """The old code and level serve, from the journal as it was, and a restart keeps it."""
    status = supervised.wait(
        lambda s: s["state"] == "running" and s["child"] and s["child"]["ready"],
        "a process serving the old code",
    )
    assert (status["patches"]["baseline"], status["patches"]["level"]) == ("1.0", ["1.0.1"])
    assert request(supervised.address, "/get")["tag"] == HOT
    assert small_disk.filler.stat().st_size > FS_BYTES // 2  # the new code filled the disk
    state = Journal(journal).read()
    assert state is not None
    assert (state.baseline, [e.version for e in state.level]) == ("1.0", ["1.0.1"])
    # Nothing of the restart is left beside it: no kept copy, nothing set aside.
    names = os.listdir(small_disk.path)
    assert journal.name in names
    assert [n for n in names if journal.name in n and n != journal.name] == []
    # The next process replays the journal: the rolled-back change does not come back.
    outcome = supervised.restart()
    assert outcome["ok"], outcome
    assert request(supervised.address, "/get")["tag"] == HOT
    assert supervised.status()["patches"]["level"] == ["1.0.1"]


@pytest.mark.parametrize("journal_after", ["appended", "compacted"])
def test_a_patch_rolled_back_on_a_full_disk_leaves_the_journal_as_it_was(
    supervise: Callable[..., Supervised], tmp_path: Path, small_disk: SmallDisk, journal_after: str
) -> None:
    folder = tmp_path / "patches"
    journal = small_disk.path / "journal.json"
    options = ("--watch", str(folder), "--journal", str(journal), "--settle", "0.1")
    supervised = supervise("--plugin", options=(*options, *BASE_OPTIONS))
    sick = logic_patch(
        "1.0.3",
        "sick",
        head=", restart=True",
        extra=(COMPACTS if journal_after == "compacted" else "")
        + '\n@patch.replace("counter_logic:healthy")'
        + FILL_THEN_SICK.format(filler=str(small_disk.filler)),
    )
    with under_load(supervised) as load:
        with_hot_patch(supervised, folder)
        # A journal of several records (applied, applied, rolled back), which a
        # compaction rewrites as one: the old file is then no longer a prefix of it.
        drop(folder, "two-1.0.2.py", logic_patch("1.0.2", "two"))
        assert result_of(folder, "two-1.0.2.py", supervised)["outcome"] == "applied"
        answer = control(folder / ".hotpatch.sock", {"cmd": "rollback", "to": None})
        assert answer["ok"], answer
        assert journal_level(journal) == ["1.0.1"]
        drop(folder, "big-1.0.3.py", sick)
        result = result_of(folder, "big-1.0.3.py", supervised)
        assert (result["dir"], result["via"]) == ("rejected", "restart"), result
        assert result["health"] == [SICK_HOOK]
        assert result["rolled_back"] == "baseline 1.0 at level 1.0.1", result
        assert errors(supervised, "cannot restore the journal") == 0
        assert_rolled_back_on_a_full_disk(supervised, journal, small_disk)
        small_disk.free()
    load.check(request(supervised.address, "/get")["counters"])


def test_a_baseline_rolled_back_on_a_full_disk_gets_its_journal_back(
    supervise: Callable[..., Supervised], tmp_path: Path, small_disk: SmallDisk
) -> None:
    # The new baseline's process set the old baseline's journal aside; its health
    # check filled the disk. The old code comes back with its journal and hot patch.
    folder = tmp_path / "patches"
    journal = small_disk.path / "journal.json"
    options = ("--watch", str(folder), "--journal", str(journal), "--settle", "0.1")
    supervised = supervise("--plugin", options=(*options, *BASE_OPTIONS))
    logic = 'def tag():\n    return "sick-2.0"\n\n' + FILL_THEN_SICK.format(
        filler=str(small_disk.filler)
    )
    with under_load(supervised) as load:
        with_hot_patch(supervised, folder)
        result = drop_release(supervised, folder, logic)
        assert result["dir"] == "rejected", result
        assert result["health"] == [SICK_HOOK]
        assert result["rolled_back"] == "baseline 1.0 at level 1.0.1", result
        assert errors(supervised, "cannot restore the journal") == 0
        assert_rolled_back_on_a_full_disk(supervised, journal, small_disk)
        small_disk.free()
    load.check(request(supervised.address, "/get")["counters"])


# The health check also removes the file the supervisor keeps to put the journal
# back (by hand, say): after the compaction it must be written whole, on a full disk.
REMOVE_KEPT_FILL_THEN_SICK = (
    """
def healthy():
    import os
    for name in os.listdir({folder!r}):
        if ".undo-" in name:
            os.unlink(os.path.join({folder!r}, name))
"""
    + FILL_THE_DISK
)


def test_a_rollback_that_must_write_the_journal_whole_waits_for_room(
    supervise: Callable[..., Supervised], tmp_path: Path, small_disk: SmallDisk
) -> None:
    folder = tmp_path / "patches"
    journal = small_disk.path / "journal.json"
    options = ("--watch", str(folder), "--journal", str(journal), "--settle", "0.1")
    supervised = supervise("--plugin", options=(*options, *BASE_OPTIONS))
    sick = logic_patch(
        "1.0.3",
        "sick",
        head=", restart=True",
        extra=COMPACTS
        + '\n@patch.replace("counter_logic:healthy")'
        + REMOVE_KEPT_FILL_THEN_SICK.format(
            folder=str(small_disk.path), filler=str(small_disk.filler)
        ),
    )
    with under_load(supervised) as load:
        with_hot_patch(supervised, folder)
        drop(folder, "two-1.0.2.py", logic_patch("1.0.2", "two"))
        assert result_of(folder, "two-1.0.2.py", supervised)["outcome"] == "applied"
        answer = control(folder / ".hotpatch.sock", {"cmd": "rollback", "to": None})
        assert answer["ok"], answer
        before = journal.read_bytes()
        drop(folder, "big-1.0.3.py", sick)
        wait_for(
            lambda: errors(supervised, "journal waits to be put back", "disk full") == 1,
            "the supervisor to say the journal waits for room",
        )
        # Meanwhile: no process started from the new journal; it is whole, the level
        # of the code that serves until the rollback can go on.
        state = Journal(journal).read()
        assert state is not None
        assert [e.version for e in state.level] == ["1.0.1", "1.0.3"]
        assert request(supervised.address, "/get")["tag"] == "sick"
        assert not (folder / "rejected" / "big-1.0.3.py.result.json").exists()

        small_disk.free()
        result = result_of(folder, "big-1.0.3.py", supervised)
        assert (result["dir"], result["via"]) == ("rejected", "restart"), result
        assert result["rolled_back"] == "baseline 1.0 at level 1.0.1", result
        assert errors(supervised, "cannot restore the journal") == 0
        assert journal.read_bytes() == before
        assert request(supervised.address, "/get")["tag"] == HOT
        outcome = supervised.restart()  # the next process replays the journal put back
        assert outcome["ok"], outcome
        assert request(supervised.address, "/get")["tag"] == HOT
        assert supervised.status()["patches"]["level"] == ["1.0.1"]
    load.check(request(supervised.address, "/get")["counters"])


# -- a baseline bundle short of a resource -------------------------------------------------


@pytest.mark.parametrize("full", ["releases", "state"])
def test_a_baseline_bundle_short_of_disk_waits_and_is_not_overtaken(
    supervise: Callable[..., Supervised], tmp_path: Path, small_disk: SmallDisk, full: str
) -> None:
    # "releases": the bundle cannot be unpacked (--releases on the small disk);
    # "state": it cannot even be staged to be checked (--state-dir there).
    folder = tmp_path / "patches"
    folder.mkdir(mode=0o700)
    if full == "releases":
        state, options = folder, ("--releases", str(small_disk.path / "releases"))
    else:
        state, options = small_disk.path, ("--state-dir", str(small_disk.path))
    supervised = supervise(options=("--watch", str(folder), *options, *BASE_OPTIONS))
    socket = state / ".hotpatch.sock"
    two = make_bundle(tmp_path, "2.0", "two")
    three = make_bundle(tmp_path / "later", "3.0", "three")
    with under_load(supervised) as load:
        small_disk.fill()
        drop_bundle(folder, two)
        held = waited(socket, "release-2.0", "disk full", attempts=2)
        assert "nothing of it was applied" in held["reason"], held
        drop_bundle(folder, three)  # a later baseline, which must not go first
        waited(socket, "release-2.0", "disk full", attempts=held["attempts"] + 1)
        assert errors(supervised, "release-2.0 waits", "disk full") == 1  # said once
        assert request(supervised.address, "/get")["tag"] == "base"
        assert supervised.status()["patches"]["baseline"] == "1.0"
        assert (folder / "release-2.0").is_dir()
        assert (folder / "release-3.0").is_dir()
        assert rejections(state) == []

        small_disk.free()
        where, result = outcome_of(state, "release-2.0", supervised)
        assert (where, result["outcome"]) == ("applied", "applied"), result
        where, result = outcome_of(state, "release-3.0", supervised)
        assert (where, result["outcome"]) == ("applied", "applied"), result
        assert request(supervised.address, "/get")["tag"] == "three"
        assert supervised.status()["patches"]["baseline"] == "3.0"
        recent = supervised.status()["patches"]["recent"]
        applied = [r["version"] for r in recent if r["outcome"] == "applied"]
        assert applied == ["2.0", "3.0"], recent
        assert rejections(state) == []
    load.check(request(supervised.address, "/get")["counters"])


@pytest.mark.parametrize("change", ["baseline", "patch"])
def test_a_code_change_whose_journal_cannot_be_kept_for_a_rollback_waits(
    supervise: Callable[..., Supervised], tmp_path: Path, small_disk: SmallDisk, change: str
) -> None:
    # No inode left on the journal's file system: the journal cannot be kept for
    # a rollback of the restart, so the restart does not start -- a shortage, not a
    # rejection -- and the change goes in once there is room, before a later one.
    folder = tmp_path / "patches"
    journal = small_disk.path / "journal.json"
    options = ("--watch", str(folder), "--journal", str(journal))
    supervised = supervise(options=(*options, *BASE_OPTIONS))
    socket = folder / ".hotpatch.sock"
    first_pid = supervised.child_pid
    with under_load(supervised) as load:
        drop(folder, "fix-1.0.1.py", logic_patch("1.0.1", HOT))  # the journal is there
        assert result_of(folder, "fix-1.0.1.py", supervised)["outcome"] == "applied"
        if change == "baseline":
            name, later = "release-2.0", "release-3.0"
            first = make_bundle(tmp_path, "2.0", "two")
            second = make_bundle(tmp_path / "later", "3.0", "three")
        else:
            name, later = "a-1.0.2.py", "b-1.0.3.py"
            first = stage(folder, name, logic_patch("1.0.2", "two", head=", restart=True"))
            second = stage(folder, later, logic_patch("1.0.3", "three"))
        small_disk.use_up_inodes()
        (drop_bundle(folder, first) if change == "baseline" else put(first))
        held = waited(socket, name, "disk full", attempts=2)
        assert "no undo point can be kept for a rollback" in held["reason"], held
        assert "nothing was changed" in held["reason"], held
        (drop_bundle(folder, second) if change == "baseline" else put(second))
        waited(socket, name, "disk full", attempts=held["attempts"] + 1)
        answer = request(supervised.address, "/get")
        assert (answer["tag"], answer["pid"]) == (HOT, first_pid)  # never stopped serving
        assert supervised.status()["restarts"].get("preserving", 0) == 0
        assert (folder / later).exists()
        assert rejections(folder) == []

        small_disk.free()
        for each in (name, later):
            where, result = outcome_of(folder, each, supervised)
            assert (where, result["outcome"]) == ("applied", "applied"), result
        assert request(supervised.address, "/get")["tag"] == "three"
        assert rejections(folder) == []
        assert [n for n in os.listdir(small_disk.path) if ".undo-" in n] == []
    load.check(request(supervised.address, "/get")["counters"])
