"""The ``hotpatch`` CLI against a real ``hotpatch run`` supervisor: every command, and rollouts."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import select
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from drops import Watching
from test_baselines import make_bundle
from test_supervisor import Supervised, request, supervise
from test_supervisor_patches import BASE_OPTIONS, drop, logic_patch
from test_supervisor_patches import journal_level as journal_file_level
from test_workers import all_serving, journal_level, unhealthy_patch

from hotpatch.cli._follow import RolloutFollower, render_rollout

pytestmark = pytest.mark.e2e

__all__ = ["supervise"]  # the fixture, shared with test_supervisor

WORKERS = 3
COMMAND_TIMEOUT = 180  # bounds a hung command; never a measurement


def hotpatch(*args: str) -> subprocess.CompletedProcess[str]:
    """The real console script (``python -m hotpatch`` where it is not installed)."""
    script = Path(sys.executable).parent / "hotpatch"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "hotpatch"]
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
    )


def as_json(*args: str) -> dict[str, Any]:
    result = hotpatch(*args, "--json")
    answer: dict[str, Any] = json.loads(result.stdout)
    answer["exit"] = result.returncode
    return answer


def write(where: Path, name: str, text: str) -> str:
    """A patch file outside the watched folder: `hotpatch apply` gets its path."""
    where.mkdir(exist_ok=True)
    path = where / name
    path.write_text(text)
    return str(path)


def tag(supervised: Supervised) -> str:
    answer: str = request(supervised.address, "/get")["tag"]
    return answer


# -- one supervisor ------------------------------------------------------------------------


@pytest.fixture
def single(supervise: Callable[..., Supervised], tmp_path: Path) -> tuple[Supervised, Path]:
    folder = tmp_path / "patches"
    return supervise(options=("--watch", str(folder), *BASE_OPTIONS)), folder


def test_the_supervisor_serves_a_private_control_socket_named_in_its_folder(
    single: tuple[Supervised, Path], tmp_path: Path
) -> None:
    supervised, folder = single
    info = json.loads((folder / ".hotpatch.json").read_text())
    sock = Path(info["socket"])
    assert sock == folder / ".hotpatch.sock"
    assert stat.S_ISSOCK(sock.lstat().st_mode)
    assert stat.S_IMODE(sock.lstat().st_mode) == 0o600

    status = as_json("status", "--folder", str(folder))
    assert status["exit"] == 0, status
    assert status["supervisor"] is True
    assert status["child"]["pid"] == supervised.child_pid
    assert status["patches"]["level"] == []
    human = hotpatch("status", "--socket", str(sock))
    assert human.returncode == 0, human.stderr
    assert f"pid {supervised.child_pid}" in human.stdout

    bundle = make_bundle(tmp_path, "2.0", "baseline-2.0")
    assert as_json("verify", str(bundle), "--folder", str(folder))["hot"] is False
    release = as_json("apply", str(bundle), "--folder", str(folder))
    assert release["exit"] == 0, release
    assert (release["version"], release["via"], release["level"]) == ("2.0", "restart", [])
    assert tag(supervised) == "baseline-2.0"
    assert as_json("status", "--folder", str(folder))["patches"]["baseline"] == "2.0"

    supervised.stop()
    assert not sock.exists()
    assert not (folder / ".hotpatch.json").exists()
    gone = hotpatch("status", "--socket", str(sock))
    assert gone.returncode == 2
    assert "no control socket" in gone.stderr


def test_the_control_socket_can_live_elsewhere(
    supervise: Callable[..., Supervised], tmp_path: Path
) -> None:
    folder, sock = tmp_path / "patches", tmp_path / "run" / "hotpatch.sock"
    sock.parent.mkdir(mode=0o700)
    options = ("--watch", str(folder), "--control-socket", str(sock), *BASE_OPTIONS)
    supervised = supervise(options=options)
    assert json.loads((folder / ".hotpatch.json").read_text())["socket"] == str(sock)
    assert stat.S_IMODE(sock.lstat().st_mode) == 0o600
    assert not (folder / ".hotpatch.sock").exists()
    for where in (("--folder", str(folder)), ("--socket", str(sock))):
        status = as_json("status", *where)
        assert status["child"]["pid"] == supervised.child_pid, status
    supervised.stop()
    assert not sock.exists()


def test_apply_verify_history_and_rollback_through_the_supervisor(
    single: tuple[Supervised, Path], tmp_path: Path
) -> None:
    supervised, folder = single
    files = tmp_path / "outbox"
    where = ("--folder", str(folder))
    hot = write(files, "fix-1.0.1.py", logic_patch("1.0.1", "fixed"))
    checked = as_json("verify", hot, *where)
    assert checked["exit"] == 0, checked
    assert checked["hot"] is True
    assert checked["targets"] == ["counter_logic:tag"]
    assert tag(supervised) == "base"  # verify changed nothing

    with Watching(folder, 4) as watching:  # each apply shows in `hotpatch watch` too
        applied = hotpatch("apply", hot, *where)
        assert applied.returncode == 0, applied.stderr
        assert "applied" in applied.stdout
        assert tag(supervised) == "fixed"

        big = write(files, "big-1.0.2.py", logic_patch("1.0.2", "restarted", head=", restart=True"))
        not_hot = hotpatch("verify", big, *where)
        assert not_hot.returncode == 1, not_hot.stderr
        assert "restart=True" in not_hot.stdout
        assert "not hot" in not_hot.stderr
        first = supervised.child_pid
        through_restart = as_json("apply", big, *where)
        assert through_restart["exit"] == 0, through_restart
        assert through_restart["via"] == "restart"
        assert through_restart["level"] == ["1.0.1", "1.0.2"]
        assert supervised.child_pid != first
        assert tag(supervised) == "restarted"

        top = write(files, "top-1.0.3.py", logic_patch("1.0.3", "on-top"))
        assert hotpatch("apply", top, *where).returncode == 0
        assert tag(supervised) == "on-top"

        refused = write(
            files, "bad.py", logic_patch("1.0.4", "x").replace("counter_logic", "nowhere")
        )
        bad = hotpatch("apply", refused, *where)
        assert bad.returncode == 1
        assert "refused" in bad.stderr
        assert "nowhere" in bad.stderr
        assert tag(supervised) == "on-top"

        watched = watching.records()
    uid = f"uid:{os.getuid()}"
    # `hotpatch show`: from the serving process's journal, also for a patch it replayed.
    for version, path in (("1.0.1", hot), ("1.0.3", top)):
        shown = as_json("show", version, *where)
        assert shown["exit"] == 0, shown
        text = Path(path).read_text()
        assert (shown["source"], shown["path"]) == (text, path)
        assert shown["sha256"] == hashlib.sha256(text.encode()).hexdigest()
        assert shown["targets"] == ["counter_logic:tag"]
    assert as_json("show", "1.0.1", *where)["action"] == "replay"  # by the restarted process
    assert as_json("show", "1.0.3", *where)["who"] == uid
    missing = hotpatch("show", "1.0.4", *where)
    assert missing.returncode == 1
    assert "patch 1.0.4 is not applied: the level is 1.0.1, 1.0.2, 1.0.3" in missing.stderr
    assert [(r["version"], r["outcome"], r.get("via"), r["source"]) for r in watched] == [
        ("1.0.1", "applied", "hot", f"{uid} via hotpatch apply"),
        ("1.0.2", "applied", "restart", f"{uid} via hotpatch apply"),
        ("1.0.3", "applied", "hot", f"{uid} via hotpatch apply"),
        ("1.0.4", "rejected", None, f"{uid} via hotpatch apply"),
    ]

    assert_history_and_rollbacks(supervised, folder)


def assert_history_and_rollbacks(supervised: Supervised, folder: Path) -> None:
    where = ("--folder", str(folder))
    history = as_json("history", *where)
    assert history["exit"] == 0, history
    # The restarted process replayed its journal, then applied 1.0.3.
    assert [(e["action"], e["version"]) for e in history["history"]][-1] == ("apply", "1.0.3")
    human = hotpatch("history", *where)
    assert human.returncode == 0
    assert "1.0.3" in human.stdout
    assert "uid:" in human.stdout  # who asked

    rolled = as_json("rollback", *where)
    assert rolled["exit"] == 0, rolled
    assert rolled["versions"] == ["1.0.3"]
    assert rolled["level"] == ["1.0.1", "1.0.2"]
    assert tag(supervised) == "restarted"
    back_to = hotpatch("rollback", "--to", "1.0.1", *where)
    assert back_to.returncode == 0, back_to.stderr
    assert "1.0.2" in back_to.stdout
    assert tag(supervised) == "fixed"
    assert journal_file_level(folder / ".journal.json") == ["1.0.1"]
    assert supervised.wait(lambda s: s["patches"]["level"] == ["1.0.1"], "the level")

    nothing = hotpatch("rollback", "--to", "0.9", *where)
    assert nothing.returncode == 1
    assert "0.9" in nothing.stderr


# -- several workers ---------------------------------------------------------------------


@pytest.fixture
def fleet(supervise: Callable[..., Supervised], tmp_path: Path) -> tuple[Supervised, Path]:
    folder = tmp_path / "patches"
    options = ("--workers", str(WORKERS), "--settle", "0.1", "--watch", str(folder))
    supervised = supervise("--plugin", options=(*options, *BASE_OPTIONS), serving=False)
    all_serving(supervised, WORKERS)
    return supervised, folder


def test_an_apply_rolls_through_the_workers_and_shows_its_progress(
    fleet: tuple[Supervised, Path], tmp_path: Path
) -> None:
    supervised, folder = fleet
    where = ("--folder", str(folder))
    files = tmp_path / "outbox"
    patch = write(files, "fix-1.0.1.py", logic_patch("1.0.1", "fixed"))
    applied = hotpatch("apply", patch, *where)
    assert applied.returncode == 0, applied.stderr
    lines = applied.stdout.splitlines()
    progress = [line.split(" ", 1)[1] for line in lines if line[:4].isdigit()]
    assert progress == [
        "batch 1/3: workers [0]",
        "batch 1/3 done: 1/3 changed, 0 unhealthy",
        "batch 2/3: workers [1]",
        "batch 2/3 done: 2/3 changed, 0 unhealthy",
        "batch 3/3: workers [2]",
        "batch 3/3 done: 3/3 changed, 0 unhealthy",
        "done: all 3 workers changed",
    ]
    assert any(line.startswith("outcome") and "applied" in line for line in lines)
    assert all(journal_level(folder, i) == ["1.0.1"] for i in range(WORKERS))
    assert {tag(supervised) for _ in range(10)} == {"fixed"}

    # The rendering a terminal redraws, from the real rollout the supervisor recorded.
    rollout = supervised.status()["rollout"]
    line = render_rollout(rollout, 2.5)
    assert line.startswith("patch fix-1.0.1.py  [####################]  batch 3/3")
    assert "3/3 workers changed  0 unhealthy  2.5s  done" in line

    answer = as_json("status", *where)
    assert [w["level"] for w in answer["workers"]] == [["1.0.1"]] * WORKERS

    checked = as_json("verify", write(files, "next-1.0.2.py", logic_patch("1.0.2", "n")), *where)
    assert checked["hot"] is True
    assert [w["index"] for w in checked["workers"]] == [0, 1, 2]

    history = as_json("history", *where)
    applies = [(e["worker"], e["version"]) for e in history["history"] if e["action"] == "apply"]
    assert sorted(applies) == [(0, "1.0.1"), (1, "1.0.1"), (2, "1.0.1")]

    shown = as_json("show", "1.0.1", *where)
    assert shown["exit"] == 0, shown
    assert shown["source"] == Path(patch).read_text()
    assert shown["workers"] == [0, 1, 2]
    assert "WORKER" in hotpatch("history", *where).stdout

    rolled = as_json("rollback", *where)
    assert rolled["exit"] == 0, rolled
    assert [(w["index"], w["versions"], w["level"]) for w in rolled["workers"]] == [
        (i, ["1.0.1"], []) for i in range(WORKERS)
    ]
    assert all(journal_level(folder, i) == [] for i in range(WORKERS))
    assert {tag(supervised) for _ in range(10)} == {"base"}

    # A patch that makes its workers unhealthy: the rollout halts and rolls back.
    sick = write(files, "sick-1.0.2.py", unhealthy_patch("1.0.2"))
    halted = hotpatch("apply", sick, *where)
    assert halted.returncode == 1, halted.stdout
    assert "halted: unhealthy workers [0]" in halted.stdout
    assert "rolled back workers [0]" in halted.stdout
    assert "worker 0: unhealthy: 1 hotpatch_health_check hook(s) answered False" in halted.stderr
    assert all(journal_level(folder, i) == [] for i in range(WORKERS))
    nothing = hotpatch("rollback", *where)
    assert nothing.returncode == 1
    assert "refused: every worker: nothing to roll back" in nothing.stderr

    assert_watch_follows_a_rollout(folder)


def assert_watch_follows_a_rollout(folder: Path) -> None:
    """`hotpatch watch` follows a drop: the rollout's steps as they happen, then the outcome."""
    watching = subprocess.Popen(
        [sys.executable, "-m", "hotpatch", "watch", str(folder), "--count", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watching.stderr is not None
        assert "watching" in watching.stderr.readline()  # it listens before the drop
        drop(folder, "fix-1.0.3.py", logic_patch("1.0.3", "fixed-again"))
        watched, _ = watching.communicate(timeout=COMMAND_TIMEOUT)
    finally:  # a failed wait leaves no process behind
        if watching.poll() is None:
            watching.kill()
            watching.communicate()
    assert watching.returncode == 0
    steps = [line.split("  ", 1)[1] for line in watched.splitlines() if "  rollout " in line]
    assert steps[0] == "rollout patch fix-1.0.3.py: batch 1/3: workers [0]", watched
    assert steps[-1] == "rollout patch fix-1.0.3.py: done: all 3 workers changed", watched
    assert len(steps) == 7, watched
    assert "1.0.3  applied  via hot" in watched.splitlines()[-1], watched


def test_the_progress_line_follows_a_real_status_file_on_a_terminal(tmp_path: Path) -> None:
    status_file = tmp_path / "status.json"
    rollout: dict[str, Any] = {
        "what": "patch fix.py",
        "state": "running",
        "domains": [[0], [1], [2], [3], [4]],
        "batches": [],
        "changed": [],
        "unhealthy": [],
        "progress": [],
        "started": "2026-11-25T10:00:00.000Z",
    }
    old = {**rollout, "what": "patch old.py", "started": "2026-11-25T09:00:00.000Z"}
    status_file.write_text(json.dumps({"rollouts": [old]}))
    primary, secondary = pty.openpty()
    try:
        with open(secondary, "w", closefd=True) as terminal:
            follower = RolloutFollower(status_file, terminal)
            assert follower.tty
            for batch in range(3):
                rollout["batches"].append({"batch": batch + 1})
                rollout["changed"].append(batch)
                rollout["progress"].append(f"t batch {batch + 1}/5")
                if batch == 2:
                    rollout["unhealthy"].append(2)
                status_file.write_text(json.dumps({"rollouts": [old, rollout]}))
                follower.poll()
            follower.finish()
        shown = read_all(primary)
    finally:
        os.close(primary)
    frames = shown.split("\r\x1b[K")
    assert "old.py" not in shown  # a rollout already there is someone else's
    assert [f.split("  ")[2] for f in frames[1:]] == [
        "batch 1/5",
        "batch 2/5",
        "batch 3/5",
        "batch 3/5",
    ]
    assert "3/5 workers changed  1 unhealthy [2]" in frames[-1]
    assert "[############........]" in frames[-1]
    assert shown.endswith("\r\n")  # the line ends once the apply is answered


def read_all(fd: int) -> str:
    chunks = []
    while select.select([fd], [], [], 0.5)[0]:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode()


def test_plain_lines_in_order_when_not_a_terminal(tmp_path: Path) -> None:
    status_file = tmp_path / "status.json"
    rollout = {"what": "patch a.py", "started": "s", "progress": ["1 one"], "domains": [[0]]}
    status_file.write_text(json.dumps({"rollouts": []}))
    read, write_end = os.pipe()
    with os.fdopen(write_end, "w") as out, os.fdopen(read) as back:
        follower = RolloutFollower(status_file, out)
        assert not follower.tty
        status_file.write_text(json.dumps({"rollouts": [rollout]}))
        follower.poll()
        rollout["progress"] = ["1 one", "2 two", "3 three"]
        status_file.write_text(json.dumps({"rollouts": [rollout]}))
        follower.poll()
        follower.finish()
        out.close()
        assert back.read() == "1 one\n2 two\n3 three\n"
