"""install(workers=True): one folder shared by several real worker processes (no server)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from drops import Watching, wait_for

import hotpatch
from hotpatch._journal import Journal
from hotpatch._journal_format import JournalEntry, JournalState
from hotpatch.agent._control import request
from hotpatch.agent._names import WORKERS_DIR

WORKER = """\
import os, sys
sys.path.insert(0, sys.argv[2])
import app_mod
if os.environ.get("POISON"):
    app_mod.CACHE["bad"] = object()  # state the 1.2 migration cannot convert
import hotpatch
wait = os.environ.get("VITAL_TIMEOUT")  # the check after an apply's, if given
agent = hotpatch.install(
    "1.0",
    watch=sys.argv[1],
    workers=True,
    entry_points=False,
    journal=os.environ.get("JOURNAL"),
    vital_timeout=float(wait) if wait else None,
)
print("ready", os.getpid(), flush=True)
sys.stdin.read()  # until the test closes stdin
agent.stop()
"""

APP = """\
CACHE = {"a": "1"}

def f():
    return 0
"""


def patch_text(version: str, value: int, *, migrate: bool = False) -> str:
    text = (
        "from hotpatch import Patch\n\n"
        f"patch = Patch(version={version!r}, baseline='1.0')\n\n"
        "@patch.replace('app_mod:f')\n"
        "def f():\n"
        f"    return {value!r}\n"
    )
    if migrate:
        text += (
            "\n@patch.migrate('app_mod')\n"
            "def to_int(module):\n"
            "    module.CACHE = {k: int(v) for k, v in module.CACHE.items()}\n"
        )
    return text


class Workers:
    """Real worker processes sharing one patch folder; killed at teardown."""

    def __init__(self, root: Path):
        self.root = root
        self.folder = root / "patches"
        self.folder.mkdir(mode=0o700)
        self.outbox = root / "outbox"
        self.outbox.mkdir()
        modules = root / "modules"
        modules.mkdir()
        (modules / "app_mod.py").write_text(APP)
        self.modules = modules
        self.script = root / "worker.py"
        self.script.write_text(WORKER)
        self.procs: list[subprocess.Popen[str]] = []
        self.logs: list[Path] = []

    def start(
        self,
        *,
        poison: bool = False,
        journal: Path | None = None,
        vital_timeout: float | None = None,
        wait: bool = True,
    ) -> int:
        env = {
            k: v for k, v in os.environ.items() if k not in ("POISON", "JOURNAL", "VITAL_TIMEOUT")
        }
        if poison:
            env["POISON"] = "1"
        if journal is not None:
            env["JOURNAL"] = str(journal)
        if vital_timeout is not None:
            env["VITAL_TIMEOUT"] = str(vital_timeout)
        log = self.root / f"worker-{len(self.procs)}.log"
        with log.open("w") as stderr:
            proc = subprocess.Popen(
                [sys.executable, str(self.script), str(self.folder), str(self.modules)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=env,
                start_new_session=True,
            )
        self.procs.append(proc)
        self.logs.append(log)
        return self.ready(proc) if wait else proc.pid

    def launch(self) -> subprocess.Popen[str]:
        """A worker started and not waited for (``ready`` waits)."""
        self.start(wait=False)
        return self.procs[-1]

    def ready(self, proc: subprocess.Popen[str]) -> int:
        """``proc``'s pid once its ``install()`` has returned."""
        assert proc.stdout is not None
        line = proc.stdout.readline()
        log = self.logs[self.procs.index(proc)]
        assert line.startswith("ready"), (
            f"worker failed to start (exit {proc.poll()}):\n{log.read_text()[-3000:]}"
        )
        return proc.pid

    def log_lines(self) -> list[str]:
        """What every worker started so far logged (hotpatch's log lines on stderr)."""
        return [line for log in self.logs for line in log.read_text().splitlines()]

    def socket(self, pid: int) -> Path:
        return self.folder / WORKERS_DIR / f"{pid}.sock"

    def level(self, pid: int) -> list[str]:
        answer = request(self.socket(pid), {"cmd": "worker"})
        assert answer["ok"], answer
        level: list[str] = answer["level"]
        return level

    def owner(self) -> int:
        pid: int = json.loads((self.folder / ".hotpatch.json").read_text())["pid"]
        return pid

    def drop(self, name: str, text: str) -> None:
        path = self.outbox / name
        path.write_text(text)
        os.rename(path, self.folder / name)

    def filed(self, name: str, where: str) -> dict[str, Any]:
        result = self.folder / where / f"{name}.result.json"
        wait_for(lambda: result.exists() and not (self.folder / name).exists(), f"{name} filed")
        data: dict[str, Any] = json.loads(result.read_text())
        return data

    def status(self, pid: int) -> dict[str, Any]:
        answer: dict[str, Any] = request(self.socket(pid), {"cmd": "status"})
        assert answer["ok"], answer
        return answer

    @property
    def journal(self) -> Path:
        return self.folder / WORKERS_DIR / "journal.json"

    def recorded(self, journal: Path | None = None) -> JournalState:
        state = Journal(journal or self.journal).read()
        assert state is not None, "no journal"
        return state

    def restart_all(self, n: int, **options: Any) -> list[int]:
        """Every worker stops at once (a deploy, a reboot); ``n`` new ones start."""
        self.stop_all()
        return [self.start(**options) for _ in range(n)]

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    group = Workers(tmp_path)
    yield group
    group.stop_all()


def hotpatch_cli(*args: str) -> str:
    """The real ``hotpatch`` command, as an operator would run it; its output."""
    run = subprocess.run(
        [sys.executable, "-m", "hotpatch", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_one_drop_reaches_every_worker_and_one_result_lists_them(workers: Workers) -> None:
    pids = [workers.start() for _ in range(3)]
    assert workers.owner() == pids[0]
    assert sorted(p.name for p in (workers.folder / WORKERS_DIR).glob("*.sock")) == sorted(
        f"{pid}.sock" for pid in pids
    )
    workers.drop("fix.py", patch_text("1.1", 1))
    result = workers.filed("fix.py", "applied")
    assert result["outcome"] == "applied"
    assert result["version"] == "1.1"
    assert sorted(w["pid"] for w in result["workers"]) == sorted(pids)
    assert {w["outcome"] for w in result["workers"]} == {"applied"}
    assert all(w["level"] == ["1.1"] for w in result["workers"])
    assert all(workers.level(pid) == ["1.1"] for pid in pids)
    # One result file, written by the owner: nothing else in the outcome folders.
    assert sorted(p.name for p in (workers.folder / "applied").iterdir()) == [
        "fix.py",
        "fix.py.result.json",
    ]
    assert list((workers.folder / "rejected").iterdir()) == []


def test_a_worker_that_refuses_rolls_the_patch_back_everywhere(workers: Workers) -> None:
    pids = [workers.start(), workers.start(), workers.start(poison=True)]
    workers.drop("fix.py", patch_text("1.1", 1))
    assert workers.filed("fix.py", "applied")["outcome"] == "applied"

    workers.drop("ints.py", patch_text("1.2", 2, migrate=True))
    result = workers.filed("ints.py", "rejected")
    assert result["outcome"] == "rejected"
    by_pid = {w["pid"]: w for w in result["workers"]}
    assert sorted(by_pid) == sorted(pids)
    assert by_pid[pids[2]]["outcome"] == "rejected"
    assert "to_int" in by_pid[pids[2]]["reason"]
    assert by_pid[pids[0]]["outcome"] == by_pid[pids[1]]["outcome"] == "applied"
    assert f"worker {pids[2]}" in result["reason"]
    assert "rolled back in the 2" in result["reason"]
    assert all(workers.level(pid) == ["1.1"] for pid in pids)


@pytest.mark.parametrize("value", [0, -1.5, float("nan"), float("inf"), "5", True])
def test_a_deliver_timeout_that_is_not_a_positive_number_is_refused(
    tmp_path: Path, value: object
) -> None:
    # Refused when install() is called, naming the option and what it takes; nothing of the
    # agent is started or written in the folder.
    folder = tmp_path / "patches"
    folder.mkdir(mode=0o700)
    with pytest.raises(ValueError, match="deliver_timeout must be a positive number of seconds"):
        hotpatch.install("1.0", watch=folder, workers=True, deliver_timeout=value)  # type: ignore[arg-type]
    assert list(folder.iterdir()) == []


def test_a_deliver_timeout_without_workers_is_refused_naming_workers(tmp_path: Path) -> None:
    # An agent alone on its folder delivers to no one: the option would do nothing.
    folder = tmp_path / "patches"
    folder.mkdir(mode=0o700)
    with pytest.raises(ValueError, match=r"deliver_timeout=5 .* needs workers=True"):
        hotpatch.install("1.0", watch=folder, deliver_timeout=5)
    assert list(folder.iterdir()) == []


def test_a_worker_started_later_comes_up_at_the_current_level(workers: Workers) -> None:
    first = workers.start()
    workers.start()
    workers.drop("fix.py", patch_text("1.1", 1))
    assert workers.filed("fix.py", "applied")["outcome"] == "applied"
    late = workers.start()  # ready only once it has caught up
    assert workers.level(late) == ["1.1"]
    workers.drop("next.py", patch_text("1.2", 2))
    result = workers.filed("next.py", "applied")
    assert len(result["workers"]) == 3
    assert workers.level(late) == workers.level(first) == ["1.1", "1.2"]


def test_when_the_owner_dies_another_worker_takes_the_folder(workers: Workers) -> None:
    pids = [workers.start() for _ in range(3)]
    owner = workers.owner()
    os.killpg(owner, signal.SIGKILL)
    workers.procs[pids.index(owner)].wait()
    wait_for(lambda: workers.owner() != owner, "another worker to own the folder")
    survivors = [pid for pid in pids if pid != owner]
    assert workers.owner() in survivors
    workers.drop("fix.py", patch_text("1.1", 1))
    result = workers.filed("fix.py", "applied")
    assert sorted(w["pid"] for w in result["workers"]) == sorted(survivors)
    # The dead worker's socket was removed, not waited on.
    assert not workers.socket(owner).exists()


def test_a_worker_says_starting_until_it_has_caught_up(workers: Workers) -> None:
    """A new worker answers its socket before it has the group's level (it asks a live
    worker for it first): until then its status says "starting", not "serving"."""
    first = workers.start()
    workers.drop("fix.py", patch_text("1.1", 1))
    workers.filed("fix.py", "applied")
    os.kill(first, signal.SIGSTOP)  # it will not answer the new worker's catch-up for now
    try:
        proc = workers.launch()
        answers: list[dict[str, Any]] = []

        def asked() -> bool:
            with contextlib.suppress(FileNotFoundError, ConnectionRefusedError):
                answers.append(request(workers.socket(proc.pid), {"cmd": "worker"}))
            return bool(answers)

        wait_for(asked, "the new worker's socket to answer")
        assert (answers[0]["state"], answers[0]["level"]) == ("starting", []), answers
    finally:
        os.kill(first, signal.SIGCONT)
    workers.ready(proc)
    state = request(workers.socket(proc.pid), {"cmd": "worker"})
    assert (state["state"], state["level"]) == ("serving", ["1.1"]), state


def test_status_lists_the_workers_and_rollback_reaches_them_all(workers: Workers) -> None:
    pids = [workers.start() for _ in range(3)]
    workers.drop("fix.py", patch_text("1.1", 1))
    workers.filed("fix.py", "applied")
    owner_socket = workers.socket(workers.owner())
    status = request(owner_socket, {"cmd": "status"})
    assert status["ok"]
    assert sorted(w["pid"] for w in status["workers"]) == sorted(pids)
    assert [w["owner"] for w in status["workers"]].count(True) == 1
    assert all(w["level"] == ["1.1"] for w in status["workers"])
    shown = hotpatch_cli("status", "--folder", str(workers.folder))
    rows = [line.split() for line in shown.splitlines()[shown.splitlines().index("") + 2 :]]
    assert sorted(int(row[1]) for row in rows) == sorted(pids), shown  # worker pid state ...
    assert sorted(row[2] for row in rows) == ["owner", "serving", "serving"], shown

    answer = request(owner_socket, {"cmd": "rollback"})
    assert answer["ok"], answer
    assert sorted(w["index"] for w in answer["workers"]) == sorted(pids)
    assert all(w["ok"] and w["versions"] == ["1.1"] for w in answer["workers"])
    assert all(workers.level(pid) == [] for pid in pids)


def test_at_a_deep_level_answers_carry_its_top_and_size_and_status_all_of_it(
    workers: Workers,
) -> None:
    """What an apply or a rollback passes between the workers, answers, logs and files does
    not grow with the level: the top 10 versions and ``level_size``. ``status`` and each
    worker's ``worker`` answer still give the whole level."""
    versions = [f"1.{n}" for n in range(1, 13)]
    entries = []
    for n, version in enumerate(versions, 1):
        text = patch_text(version, n)
        sha = hashlib.sha256(text.encode()).hexdigest()
        entries.append(JournalEntry(version, sha, f"p{n}.py", text))
    workers.journal.parent.mkdir(mode=0o700)
    Journal(workers.journal).write(JournalState("1.0", entries))
    pids = [workers.start(), workers.start()]  # the first replays, the second copies it
    owner = workers.owner()
    other = next(pid for pid in pids if pid != owner)
    assert all(workers.level(pid) == versions for pid in pids)
    brief = request(workers.socket(other), {"cmd": "worker", "brief": True})
    assert (brief["level"], brief["level_size"]) == (versions[-10:], 12)
    status = workers.status(other)
    assert status["level"] == versions
    assert [w["level"] for w in status["workers"]] == [versions, versions]

    newer = workers.outbox / "p13.py"
    newer.write_text(patch_text("1.13", 13))
    applied = request(workers.socket(other), {"cmd": "apply", "path": str(newer)})
    assert applied["ok"], applied
    deeper = [*versions, "1.13"]
    assert (applied["level"], applied["level_size"]) == (deeper[-10:], 13)
    assert sorted(w["pid"] for w in applied["workers"]) == sorted(pids)
    assert all((w["level"], w["level_size"]) == (deeper[-10:], 13) for w in applied["workers"])

    with Watching(workers.folder, 1) as watching:
        rolled = request(workers.socket(other), {"cmd": "rollback"})
        assert rolled["ok"], rolled
        records = watching.records()
    assert (rolled["versions"], rolled["level"], rolled["level_size"]) == (
        ["1.13"],
        versions[-10:],
        12,
    )
    assert sorted(w["index"] for w in rolled["workers"]) == sorted(pids)
    assert all(
        (w["ok"], w["versions"], w["level"], w["level_size"])
        == (True, ["1.13"], versions[-10:], 12)
        for w in rolled["workers"]
    )
    assert [(r["event"], r["versions"], r["level"], r["level_size"]) for r in records] == [
        ("rollback", ["1.13"], versions[-10:], 12)
    ]
    # Every worker at the group's level, all of it, and the journal too.
    assert all(workers.level(pid) == versions for pid in pids)
    assert levels(workers.recorded()) == versions
    # No log line of the apply or the rollback lists the whole level.
    lines = [line for line in workers.log_lines() if "1.13" in line]
    assert lines
    assert not [line for line in lines if "1.1, 1.2" in line], lines
    assert [line for line in lines if "rolled back 1.13" in line and "(12 patches)" in line]


def test_watch_shows_each_outcome_of_the_group_once_however_it_was_asked(
    workers: Workers,
) -> None:
    """A drop, `hotpatch apply` to a worker that does not own the folder, a rollback."""
    pids = [workers.start() for _ in range(3)]
    owner = workers.owner()
    other = next(pid for pid in pids if pid != owner)
    uid = f"uid:{os.getuid()}"
    with Watching(workers.folder, 3) as watching:
        workers.drop("fix.py", patch_text("1.1", 1))
        workers.filed("fix.py", "applied")
        newer = workers.outbox / "newer.py"
        newer.write_text(patch_text("1.2", 2))
        hotpatch_cli("apply", str(newer), "--socket", str(workers.socket(other)))
        hotpatch_cli("rollback", "--socket", str(workers.socket(other)))
        records = watching.records()
    assert [(r["event"], r["source"], r["dir"]) for r in records] == [
        ("outcome", "folder", "applied"),
        ("outcome", f"{uid} via hotpatch apply", None),
        ("rollback", f"{uid} via hotpatch rollback", None),
    ]
    assert [(r["version"], r["outcome"]) for r in records[:2]] == [
        ("1.1", "applied"),
        ("1.2", "applied"),
    ]
    assert sorted(w["pid"] for w in records[1]["workers"]) == sorted(pids)
    assert (records[2]["versions"], records[2]["level"]) == (["1.2"], ["1.1"])
    assert all(workers.level(pid) == ["1.1"] for pid in pids)

    # `hotpatch show` from any worker: every one runs the group's level.
    for pid in pids:
        shown = json.loads(
            hotpatch_cli("show", "1.1", "--json", "--socket", str(workers.socket(pid)))
        )
        assert shown["source"] == patch_text("1.1", 1)
        assert shown["path"] == str(workers.folder / "fix.py")


def test_a_damaged_delivery_is_refused(workers: Workers) -> None:
    pid = workers.start()
    text = patch_text("1.1", 1)
    answer = request(
        workers.socket(pid),
        {"cmd": "deliver", "name": "fix.py", "text": text, "sha256": "0" * 64},
    )
    assert not answer["ok"]
    assert answer["outcome"] == "rejected"
    assert "arrived damaged" in answer["reason"]
    assert workers.level(pid) == []


# -- the group's journal: the level survives a restart of every worker ---------------------


def levels(state: JournalState) -> list[str]:
    return [entry.version for entry in state.level]


def test_the_level_survives_a_restart_of_every_worker(workers: Workers) -> None:
    workers.start()
    workers.start()
    workers.drop("fix.py", patch_text("1.1", 1))
    workers.filed("fix.py", "applied")
    workers.drop("next.py", patch_text("1.2", 2))
    workers.filed("next.py", "applied")
    state = workers.recorded()
    assert levels(state) == ["1.1", "1.2"]
    assert state.level[1].text == patch_text("1.2", 2)  # the content, not just a path
    assert [(row["action"], row["version"]) for row in state.history] == [
        ("apply", "1.1"),
        ("apply", "1.2"),
    ]

    first, second = workers.restart_all(2)
    assert workers.level(first) == workers.level(second) == ["1.1", "1.2"]
    assert "replayed 2 patches" in workers.status(first)["journal_report"]
    assert workers.status(first)["journal"] == str(workers.journal)
    # Nothing was dropped again: the outcome folder holds the two drops only.
    assert sorted(p.name for p in (workers.folder / "applied").glob("*.py")) == [
        "fix.py",
        "next.py",
    ]


def test_a_rollback_and_an_all_or_none_undo_are_recorded(workers: Workers, tmp_path: Path) -> None:
    journal = tmp_path / "state" / "workers.json"  # an explicit journal= path
    owner = workers.start(journal=journal)
    other = workers.start(journal=journal)
    poisoned = workers.start(poison=True, journal=journal)
    for name, version in (("a.py", "1.1"), ("b.py", "1.2")):
        workers.drop(name, patch_text(version, 1))
        workers.filed(name, "applied")

    # Sent to a worker that does not own the folder: it passes it to the owner.
    answer = request(workers.socket(other), {"cmd": "rollback"})
    assert answer["ok"], answer
    assert answer["versions"] == ["1.2"]
    assert all(workers.level(pid) == ["1.1"] for pid in (owner, other, poisoned))
    assert levels(workers.recorded(journal)) == ["1.1"]

    workers.drop("ints.py", patch_text("1.3", 3, migrate=True))
    assert workers.filed("ints.py", "rejected")["outcome"] == "rejected"
    state = workers.recorded(journal)
    assert levels(state) == ["1.1"]
    assert [(row["action"], row["version"], row["level"]) for row in state.history[-2:]] == [
        ("rollback", "1.2", ["1.1"]),
        ("undo", "1.3", ["1.1"]),
    ]
    assert not workers.journal.exists()  # the default place is not used

    # `hotpatch history` shows the group's history, from any worker.
    history = request(workers.socket(other), {"cmd": "history"})["history"]
    assert [row["action"] for row in history] == ["apply", "apply", "rollback", "undo"]

    restarted = workers.restart_all(2, journal=journal)
    assert all(workers.level(pid) == ["1.1"] for pid in restarted)
    # `hotpatch apply` sent to a worker that does not own the folder: the owner records it.
    newer = workers.outbox / "c.py"
    newer.write_text(patch_text("1.4", 4))
    answer = request(workers.socket(restarted[1]), {"cmd": "apply", "path": str(newer)})
    assert answer["ok"], answer
    assert all(workers.level(pid) == ["1.1", "1.4"] for pid in restarted)
    assert levels(workers.recorded(journal)) == ["1.1", "1.4"]


def test_a_journal_of_another_baseline_is_set_aside_and_reported(workers: Workers) -> None:
    text = patch_text("0.9.1", 1).replace("baseline='1.0'", "baseline='0.9'")
    old = JournalEntry("0.9.1", hashlib.sha256(text.encode()).hexdigest(), "old.py", text)
    workers.journal.parent.mkdir(mode=0o700)
    Journal(workers.journal).write(JournalState("0.9", [old]))

    pid = workers.start()
    assert workers.level(pid) == []
    report = workers.status(pid)["journal_report"]
    assert "baseline 0.9, not 1.0" in report
    aside = workers.journal.with_name("journal.json.baseline-0.9")
    assert aside.name in report
    assert Journal(aside).read() is not None  # kept for inspection, as it was

    workers.drop("fix.py", patch_text("1.1", 1))
    workers.filed("fix.py", "applied")
    state = workers.recorded()
    assert (state.baseline, levels(state)) == ("1.0", ["1.1"])


def test_a_corrupt_journal_is_reported_and_the_workers_serve_the_baseline(
    workers: Workers,
) -> None:
    workers.journal.parent.mkdir(mode=0o700)
    workers.journal.write_text('{"format": 1, "baseline": "1.0", "level": [')
    pids = [workers.start(), workers.start()]
    assert all(workers.level(pid) == [] for pid in pids)
    error = workers.status(workers.owner())["journal_error"]
    assert "is corrupt" in error
    assert "moved aside" in error
    assert "journal error  journal " in hotpatch_cli("status", "--folder", str(workers.folder))

    # A drop would write a new level over the recorded one: refused, saying why.
    workers.drop("fix.py", patch_text("1.1", 1))
    result = workers.filed("fix.py", "rejected")
    assert "is corrupt" in result["reason"]
    assert "moved aside" in result["reason"]
    assert all(workers.level(pid) == [] for pid in pids)
    assert workers.journal.read_text() == '{"format": 1, "baseline": "1.0", "level": ['

    # The fix the message names: move it aside; the next drop starts a new journal.
    workers.journal.rename(workers.journal.with_name("journal.json.broken"))
    workers.drop("fix2.py", patch_text("1.2", 2))
    assert workers.filed("fix2.py", "applied")["outcome"] == "applied"
    assert levels(workers.recorded()) == ["1.2"]
    assert all(workers.level(pid) == ["1.2"] for pid in pids)


def test_a_journal_that_cannot_be_replayed_keeps_refusing_after_an_owner_change(
    workers: Workers,
) -> None:
    text = patch_text("1.1", 1).replace("app_mod:f", "app_mod:gone")  # the code changed
    entry = JournalEntry("1.1", hashlib.sha256(text.encode()).hexdigest(), "old.py", text)
    workers.journal.parent.mkdir(mode=0o700)
    Journal(workers.journal).write(JournalState("1.0", [entry]))
    first, second = workers.start(), workers.start()
    assert workers.level(first) == workers.level(second) == []
    assert "cannot be replayed" in workers.status(first)["journal_error"]

    os.killpg(first, signal.SIGKILL)
    workers.procs[0].wait()
    wait_for(lambda: workers.owner() == second, "the second worker to own the folder")
    workers.drop("fix.py", patch_text("1.2", 2))
    assert "cannot be replayed" in workers.filed("fix.py", "rejected")["reason"]
    assert levels(workers.recorded()) == ["1.1"]  # the recorded level, not overwritten


def test_an_owner_change_keeps_one_journal_consistent(workers: Workers) -> None:
    first, second = workers.start(), workers.start()
    assert workers.owner() == first
    workers.drop("a.py", patch_text("1.1", 1))
    workers.filed("a.py", "applied")
    before = workers.journal.read_bytes()
    workers.drop("b.py", patch_text("1.2", 2))
    workers.filed("b.py", "applied")
    # The owner dies after every worker applied 1.2 and before the journal said so.
    workers.journal.write_bytes(before)
    os.killpg(first, signal.SIGKILL)
    workers.procs[0].wait()

    wait_for(lambda: workers.owner() == second, "the second worker to own the folder")
    wait_for(lambda: levels(workers.recorded()) == ["1.1", "1.2"], "the new owner's level")
    assert workers.recorded().history[-1]["action"] == "resync"
    workers.drop("c.py", patch_text("1.3", 3))
    workers.filed("c.py", "applied")
    state = workers.recorded()
    assert levels(state) == ["1.1", "1.2", "1.3"]
    assert [(row["action"], row["version"]) for row in state.history] == [
        ("apply", "1.1"),
        ("resync", "1.1, 1.2"),
        ("apply", "1.3"),
    ]

    restarted = workers.restart_all(2)
    assert all(workers.level(pid) == ["1.1", "1.2", "1.3"] for pid in restarted)
