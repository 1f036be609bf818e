"""``hotpatch run --workers N``: real workers on shared sockets, patched domain by domain."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_supervisor import Load, Supervised, request, supervise, wait_for
from test_supervisor_patches import drop, logic_patch, result_of, under_load, watching

from hotpatch._journal import Journal
from hotpatch.supervisor._rollout import domains

pytestmark = pytest.mark.e2e
slow = pytest.mark.slow  # five real workers each: over the per-file budget together

__all__ = ["supervise"]  # the fixture, shared with test_supervisor

WORKERS = 5


def test_update_domains_are_a_fifth_of_the_workers_and_at_least_one() -> None:
    assert domains(5) == [[0], [1], [2], [3], [4]]
    assert domains(3) == [[0], [1], [2]]
    assert domains(10) == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert domains(12) == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11]]
    assert domains(1) == [[0]]


def all_serving(supervised: Supervised, count: int) -> dict[str, Any]:
    return supervised.wait(
        lambda s: (
            len(s.get("workers", [])) == count
            and all(w["pid"] for w in s["workers"])
            and s["state"] == "running"
        ),
        f"{count} serving workers",
    )


def rolling_restart(supervised: Supervised) -> dict[str, Any]:
    """SIGHUP, and the status once the rolling restart is done: each worker replaced by a
    new process that took its state over completely."""
    before = [w["pid"] for w in supervised.status()["workers"]]
    supervised.process.send_signal(signal.SIGHUP)
    status = supervised.wait(
        lambda s: (
            (s.get("rollout") or {}).get("what", "").startswith("restart")
            and s["rollout"]["state"] == "done"
        ),
        "the rolling restart",
    )
    after = [w["pid"] for w in status["workers"]]
    assert all(a != b for a, b in zip(after, before, strict=True))
    restarts = [w["last_restart"] for w in status["workers"]]
    assert all(r["state"] == "complete" for r in restarts), restarts
    return status


def unhealthy_patch(version: str) -> str:
    return logic_patch(version, "sick") + (
        "\n@patch.replace('counter_logic:healthy')\ndef healthy():\n    return False\n"
    )


def journal_level(folder: Path, worker: int) -> list[str]:
    path = folder / f".journal.worker{worker}.json"
    if not path.exists():
        return []
    state = Journal(path).read()
    return [] if state is None else [e.version for e in state.level]


class Watcher:
    """Polls the status file while a rollout runs: how many workers changed, how many batches."""

    def __init__(self, supervised: Supervised, version: str) -> None:
        self.supervised = supervised
        self.version = version
        self.seen: list[tuple[int, int]] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watcher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(30)

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                status = self.supervised.status()
            except (OSError, ValueError):
                continue
            rollout = status.get("rollout") or {}
            if rollout.get("what", "").startswith("patch"):
                changed = sum(self.version in w["level"] for w in status.get("workers", []))
                self.seen.append((changed, len(rollout.get("batches", []))))
            self.stopping.wait(0.005)


@pytest.fixture
def fleet(supervise: Callable[..., Supervised], tmp_path: Path) -> tuple[Supervised, Path]:
    options = ("--workers", str(WORKERS), "--settle", "0.2")
    options = (*options, "--health-url", "/get")  # probed from inside each changed worker
    folder, supervised = watching(supervise, tmp_path, "--plugin", options=options, serving=False)
    all_serving(supervised, WORKERS)
    return supervised, folder


@slow
def test_a_good_patch_reaches_every_worker_one_domain_at_a_time(
    fleet: tuple[Supervised, Path],
) -> None:
    supervised, folder = fleet
    pids = {w["pid"] for w in supervised.status()["workers"]}
    assert len(pids) == WORKERS
    with Load(supervised.address, clients=4) as load, Watcher(supervised, "1.0.1") as watcher:
        wait_for(lambda: len(load.pids) >= 2, "requests served by several workers")
        drop(folder, "fix-1.0.1.py", logic_patch("1.0.1", "fixed"))
        result = result_of(folder, "fix-1.0.1.py", supervised)
    assert result["outcome"] == "applied", result
    assert load.refused == 0
    assert load.failed == []
    assert sum(load.ok.values()) > 0
    status = supervised.status()
    rollout = status["rollout"]
    assert rollout["state"] == "done"
    assert [b["workers"] for b in rollout["batches"]] == [[0], [1], [2], [3], [4]]
    for before, after in zip(rollout["batches"], rollout["batches"][1:], strict=False):
        assert before["finished"] <= after["started"]  # one batch at a time
    # What the status showed while it ran: never more workers changed than batches begun.
    assert watcher.seen
    assert all(changed <= batches for changed, batches in watcher.seen)
    assert any(0 < changed < WORKERS for changed, _ in watcher.seen)
    assert all(w["level"] == ["1.0.1"] for w in status["workers"])
    assert {w["pid"] for w in status["workers"]} == pids  # hot: the same processes
    assert all(journal_level(folder, i) == ["1.0.1"] for i in range(WORKERS))
    assert {request(supervised.address, "/get")["tag"] for _ in range(20)} == {"fixed"}
    progress = supervised.log()
    assert "batch 1/5: workers [0]" in progress
    assert "done: all 5 workers changed" in progress
    # What an operator sees: `hotpatch status` on the folder lists every worker.
    shown = subprocess.run(
        [sys.executable, "-m", "hotpatch", "status", "--folder", str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert any(line.startswith("rollout") and line.endswith("done") for line in lines)
    rows = [line.split() for line in lines[lines.index("") + 2 :]]
    assert [(int(r[0]), int(r[1]), r[-1]) for r in rows] == [
        (w["index"], w["pid"], "1.0.1") for w in status["workers"]
    ]


@slow
def test_a_bad_patch_halts_in_the_first_domain_and_is_rolled_back(
    fleet: tuple[Supervised, Path],
) -> None:
    supervised, folder = fleet
    with under_load(supervised, workers=True) as load:
        drop(folder, "sick-1.0.1.py", unhealthy_patch("1.0.1"))
        result = result_of(folder, "sick-1.0.1.py", supervised)
    assert result["dir"] == "rejected", result
    assert "halted after batch 1" in result["reason"]
    assert result["rollout"]["state"] == "rolled-back"  # each batch's results, for machines
    assert result["rollout"]["unhealthy"] == [0]
    assert load.refused == 0
    assert load.failed == []
    status = supervised.status()
    rollout = status["rollout"]
    assert rollout["state"] == "rolled-back"
    assert len(rollout["batches"]) == 1
    assert rollout["unhealthy"] == [0]
    assert rollout["rolled_back"] == {"0": "rolled back"}
    assert all(w["level"] == [] for w in status["workers"])
    assert journal_level(folder, 0) == []
    for untouched in range(1, WORKERS):  # never written: the patch never reached them
        assert not (folder / f".journal.worker{untouched}.json").exists()
    assert {request(supervised.address, "/get")["tag"] for _ in range(20)} == {"base"}
    assert "halted: unhealthy workers [0]" in supervised.log()


@slow
def test_a_killed_worker_comes_back_at_its_journal_level(
    fleet: tuple[Supervised, Path],
) -> None:
    supervised, folder = fleet
    drop(folder, "fix-1.0.1.py", logic_patch("1.0.1", "fixed"))
    assert result_of(folder, "fix-1.0.1.py", supervised)["outcome"] == "applied"
    victim = supervised.status()["workers"][2]["pid"]
    os.kill(victim, signal.SIGKILL)
    status = supervised.wait(
        lambda s: s["workers"][2]["pid"] not in (None, victim) and s["workers"][2]["level"],
        "worker 2 to come back",
    )
    assert status["workers"][2]["level"] == ["1.0.1"]
    assert status["workers"][2]["last_restart"]["kind"] == "recovery"
    assert journal_level(folder, 2) == ["1.0.1"]
    others = [w["pid"] for i, w in enumerate(status["workers"]) if i != 2]
    assert victim not in others
    assert {request(supervised.address, "/get")["tag"] for _ in range(20)} == {"fixed"}


@slow
def test_sighup_restarts_the_workers_one_domain_at_a_time(
    fleet: tuple[Supervised, Path],
) -> None:
    supervised, _ = fleet
    with under_load(supervised, workers=True) as load:
        status = rolling_restart(supervised)
    assert load.refused == 0
    assert load.failed == []
    assert [b["workers"] for b in status["rollout"]["batches"]] == [[0], [1], [2], [3], [4]]


@slow
def test_workers_idle_after_load_hand_over_and_stop_when_told(
    fleet: tuple[Supervised, Path],
) -> None:
    # The last connections of a load woke every worker and each went to one: the
    # others must be back to waiting, so that each hands its state over at a
    # restart and stops at a stop when told, not when killed at the drain timeout.
    supervised, _ = fleet

    def serve_every_worker() -> None:
        with Load(supervised.address, clients=4) as load:
            wait_for(lambda: len(load.pids) == WORKERS, "requests served by every worker")
        assert load.failed == []
        assert load.refused == 0

    serve_every_worker()
    rolling_restart(supervised)
    serve_every_worker()
    assert supervised.stop() == 0
    log = supervised.log()
    assert "did not hand over" not in log, log
    assert "did not stop in time" not in log, log
    assert "terminating" not in log, log
    assert "killing" not in log, log


@slow
def test_soak_patches_applied_and_rolled_back_under_load_fail_no_request(
    supervise: Callable[..., Supervised], tmp_path: Path
) -> None:
    """Issue 7 item 6: 8 clients, patches in and out of 3 workers, zero failed requests.

    Every other patch fails its health check in the first domain and is rolled
    back; the others roll through all three workers. ``HOTPATCH_SOAK=100`` for
    the long run (CI: 10).
    """
    count = int(os.environ.get("HOTPATCH_SOAK", "10"))
    folder, supervised = watching(
        supervise,
        tmp_path,
        "--plugin",
        options=("--workers", "3", "--settle", "0.05"),
        serving=False,
    )
    all_serving(supervised, 3)
    good: list[str] = []
    with Load(supervised.address, clients=8) as load:
        wait_for(lambda: len(load.pids) >= 2, "requests served by several workers")
        for i in range(1, count + 1):
            version = f"1.0.{i}"
            name = f"soak-{version}.py"
            sick = i % 2 == 0
            drop(folder, name, unhealthy_patch(version) if sick else logic_patch(version, f"v{i}"))
            result = result_of(folder, name, supervised)
            if sick:
                assert result["dir"] == "rejected", result
                rollout = supervised.status()["rollout"]
                assert rollout["state"] == "rolled-back", (result, rollout)
            else:
                assert result["outcome"] == "applied", result
                good.append(version)
            assert all(w["level"] == good for w in supervised.status()["workers"])
    assert load.refused == 0
    assert load.failed == []
    assert sum(load.ok.values()) > 0
    last = f"v{count if count % 2 else count - 1}"
    assert {request(supervised.address, "/get")["tag"] for _ in range(12)} == {last}


@slow
def test_a_failing_health_url_halts_the_rollout(
    supervise: Callable[..., Supervised], tmp_path: Path
) -> None:
    options = ("--workers", "2", "--settle", "0", "--health-url", "/missing")
    folder, supervised = watching(supervise, tmp_path, "--plugin", options=options, serving=False)
    all_serving(supervised, 2)
    drop(folder, "fix-1.0.1.py", logic_patch("1.0.1", "fixed"))
    result = result_of(folder, "fix-1.0.1.py", supervised)
    assert result["dir"] == "rejected", result
    assert "HTTP probe GET /missing answered 404" in result["reason"]
    status = supervised.status()
    assert status["rollout"]["state"] == "rolled-back"
    assert [w["level"] for w in status["workers"]] == [[], []]


@slow
def test_a_patch_needing_a_restart_restarts_the_workers_one_domain_at_a_time(
    supervise: Callable[..., Supervised], tmp_path: Path
) -> None:
    folder, supervised = watching(
        supervise, tmp_path, "--plugin", options=("--workers", "3", "--settle", "0"), serving=False
    )
    before = [w["pid"] for w in all_serving(supervised, 3)["workers"]]
    with under_load(supervised, workers=True) as load:
        drop(folder, "big-1.0.1.py", logic_patch("1.0.1", "restarted", head=", restart=True"))
        result = result_of(folder, "big-1.0.1.py", supervised)
    assert result["outcome"] == "applied", result
    assert result["via"] == "restart"
    assert load.refused == 0
    assert load.failed == []
    status = supervised.status()
    assert [b["workers"] for b in status["rollout"]["batches"]] == [[0], [1], [2]]
    for old, worker in zip(before, status["workers"], strict=True):
        assert worker["pid"] != old  # each went through a memory-preserving restart
        assert worker["level"] == ["1.0.1"]
        assert worker["last_restart"]["kind"] == "preserving"
        assert worker["last_restart"]["state"] == "complete"
    assert {request(supervised.address, "/get")["tag"] for _ in range(12)} == {"restarted"}
