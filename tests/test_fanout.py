"""install(workers=True): one folder shared by several real worker processes (no server)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hotpatch._control import request
from hotpatch._fanout import WORKERS_DIR

WAIT_S = 60.0  # a bound so a broken build fails instead of hanging; never a measurement

WORKER = """\
import os, sys
sys.path.insert(0, sys.argv[2])
import app_mod
if os.environ.get("POISON"):
    app_mod.CACHE["bad"] = object()  # state the 1.2 migration cannot convert
import hotpatch
agent = hotpatch.install("1.0", watch=sys.argv[1], workers=True, entry_points=False)
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


def wait_for(predicate: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.01)


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

    def start(self, *, poison: bool = False) -> int:
        env = {k: v for k, v in os.environ.items() if k != "POISON"}
        if poison:
            env["POISON"] = "1"
        proc = subprocess.Popen(
            [sys.executable, str(self.script), str(self.folder), str(self.modules)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("ready"), f"worker failed to start (exit {proc.poll()})"
        return proc.pid

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


def test_one_drop_reaches_every_worker_and_one_result_lists_them(workers: Workers) -> None:
    pids = [workers.start() for _ in range(3)]
    assert workers.owner() == pids[0]
    assert sorted(p.name for p in (workers.folder / WORKERS_DIR).iterdir()) == sorted(
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

    answer = request(owner_socket, {"cmd": "rollback"})
    assert answer["ok"], answer
    assert sorted(w["index"] for w in answer["workers"]) == sorted(pids)
    assert all(w["ok"] and w["versions"] == ["1.1"] for w in answer["workers"])
    assert all(workers.level(pid) == [] for pid in pids)


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
