"""Patches under the supervisor: the registry side of a patch applied through a restart."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import textwrap
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_supervisor import WAIT, Load, Supervised, request, supervise, wait_for

import hotpatch
from hotpatch import RestartRequired, load_patch
from hotpatch._journal import Journal

__all__ = ["supervise"]  # the fixture, shared with test_supervisor


def restart_patch(mod: types.ModuleType, write_patch: Callable[..., Path]) -> Path:
    return write_patch(
        f"""
        from hotpatch import Patch
        patch = Patch(version="1.0.1", baseline="1.0", restart=True)

        @patch.replace("{mod.__name__}:answer")
        def answer():
            return "patched"
        """
    )


def test_a_patch_needing_a_restart_applies_in_a_process_not_serving_yet(
    make_module: Callable[[str], types.ModuleType],
    write_patch: Callable[..., Path],
    tmp_path: Path,
) -> None:
    mod = make_module("def answer():\n    return 'base'\n")
    path = restart_patch(mod, write_patch)
    journal = tmp_path / "journal.json"
    registry = hotpatch.Registry("1.0", journal=journal)
    with pytest.raises(RestartRequired):
        registry.apply(load_patch(path))
    assert mod.answer() == "base"
    result = registry.apply(load_patch(path), restarting=True)
    try:
        assert registry.level == ("1.0.1",)
        assert result.version == "1.0.1"
        assert mod.answer() == "patched"
    finally:
        registry.rollback(to="1.0")
    assert mod.answer() == "base"


def test_the_journal_replays_a_patch_that_was_applied_through_a_restart(
    make_module: Callable[[str], types.ModuleType],
    write_patch: Callable[..., Path],
    tmp_path: Path,
) -> None:
    # A journal is replayed by a process starting up, before it serves: what a
    # restart is for. A restart=True patch in it must come back, not fail the replay.
    mod = make_module("def answer():\n    return 'base'\n")
    path = restart_patch(mod, write_patch)
    journal = tmp_path / "journal.json"
    first = hotpatch.Registry("1.0", journal=journal)
    first.apply(load_patch(path), restarting=True)
    first.detach_journal()  # this "process" ends; its code is undone in memory only
    first.rollback(to="1.0")
    assert mod.answer() == "base"
    second = hotpatch.Registry("1.0", journal=journal)
    try:
        assert second.level == ("1.0.1",)
        assert mod.answer() == "patched"
    finally:
        second.rollback(to="1.0")


# -- end to end: a real HTTP service under `hotpatch run --watch` -----------------------

BASE_OPTIONS = ("--baseline", "1.0", "--allow-unsigned")


def logic_patch(version: str, tag: str, *, extra: str = "", head: str = "") -> str:
    return textwrap.dedent(
        f"""
        from hotpatch import Patch
        patch = Patch(version="{version}", baseline="1.0"{head})

        @patch.replace("counter_logic:tag")
        def tag():
            return "{tag}"
        """
    ) + textwrap.dedent(extra)


def drop(folder: Path, name: str, text: str) -> None:
    """The documented way: write under a temporary name, then rename into the folder."""
    tmp = folder / f".{name}.part"
    tmp.write_text(text)
    tmp.rename(folder / name)


def result_of(folder: Path, name: str, supervised: Supervised) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        for outcome in ("applied", "rejected", "pending"):
            path = folder / outcome / f"{name}.result.json"
            if path.exists():
                result: dict[str, Any] = json.loads(path.read_text())
                result["dir"] = outcome
                return result
        return None

    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if (found := find()) is not None:
            return found
        if supervised.process.poll() is not None:
            pytest.fail(f"the supervisor exited before {name} had an outcome:\n{supervised.log()}")
        time.sleep(0.02)
    pytest.fail(f"no outcome for {name}:\n{supervised.log()[-5000:]}")


def journal_level(path: Path) -> list[str]:
    state = Journal(path).read()
    return [] if state is None else [e.version for e in state.level]


def watching(
    supervise: Callable[..., Supervised],
    tmp_path: Path,
    *service_args: str,
    options: tuple[str, ...] = (),
    serving: bool = True,
) -> tuple[Path, Supervised]:
    """A supervisor of the counter service watching ``tmp_path/patches``, unsigned allowed."""
    folder = tmp_path / "patches"
    options = ("--watch", str(folder), *options, *BASE_OPTIONS)
    return folder, supervise(*service_args, options=options, serving=serving)


@contextlib.contextmanager
def under_load(supervised: Supervised, *, workers: bool = False) -> Iterator[Load]:
    """Clients sending requests, once the service (``workers``: two workers) answered one."""
    first = None if workers else supervised.child_pid
    with Load(supervised.address) as load:
        if first is None:
            wait_for(lambda: len(load.pids) >= 2, "requests served by several workers")
        else:
            wait_for(lambda: load.served_by(first), "a request to the service")
        yield load


def test_a_dropped_patch_goes_into_the_serving_process_and_survives_a_restart(
    supervise: Callable[..., Supervised], tmp_path: Path
) -> None:
    folder, supervised = watching(supervise, tmp_path)
    first = supervised.child_pid
    with under_load(supervised) as load:
        assert request(supervised.address, "/get")["tag"] == "base"
        drop(folder, "fix-1.0.1.py", logic_patch("1.0.1", "fixed"))
        result = result_of(folder, "fix-1.0.1.py", supervised)
        assert result["dir"] == "applied", result
        assert result["outcome"] == "applied"
        assert result["via"] == "hot"
        assert result["level"] == ["1.0.1"]
        assert result["targets"] == ["counter_logic:tag"]
        assert (folder / "applied" / "fix-1.0.1.py").exists()
        answer = request(supervised.address, "/get")
        assert answer["tag"] == "fixed"
        assert answer["pid"] == first  # hot: the same process
        assert journal_level(folder / ".journal.json") == ["1.0.1"]
        status = supervised.status()
        assert status["patches"]["level"] == ["1.0.1"]
        assert status["patches"]["last"]["via"] == "hot"
        # Same content again: unchanged, decided without bothering the service.
        drop(folder, "again.py", logic_patch("1.0.1", "fixed"))
        assert result_of(folder, "again.py", supervised)["outcome"] == "unchanged"

        outcome = supervised.restart()
        assert outcome["ok"], outcome
        wait_for(lambda: load.served_by(outcome["new_pid"]), "a request to the new process")
        answer = request(supervised.address, "/get")
        assert answer["pid"] == outcome["new_pid"] != first
        assert answer["tag"] == "fixed"  # the journal was replayed before it served
        assert supervised.status()["patches"]["level"] == ["1.0.1"]
    load.check(request(supervised.address, "/get")["counters"])


def test_a_patch_that_fails_verification_never_reaches_the_service(
    supervise: Callable[..., Supervised], tmp_path: Path
) -> None:
    folder, supervised = watching(supervise, tmp_path)
    drop(folder, "bad.py", logic_patch("1.0.1", "x").replace("counter_logic:tag", "nowhere:tag"))
    result = result_of(folder, "bad.py", supervised)
    assert result["dir"] == "rejected"
    assert "nowhere" in result["reason"]
    assert supervised.status()["patches"]["level"] == []
    assert request(supervised.address, "/get")["tag"] == "base"


def test_signatures_are_required_unless_allowed(tmp_path: Path) -> None:
    folder = tmp_path / "patches"
    command = [sys.executable, "-m", "hotpatch.supervisor", "run", "--watch", str(folder)]
    result = subprocess.run(
        [*command, "--baseline", "1.0", "--", "true"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert "--trusted-keys" in result.stderr
    result = subprocess.run([*command, "--", "true"], capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert "--baseline" in result.stderr


# -- step 2: a patch that cannot go in hot goes in through a restart --------------------


def test_a_patch_needing_a_restart_is_applied_by_a_memory_preserving_restart(
    supervise: Callable[..., Supervised], tmp_path: Path
) -> None:
    folder, supervised = watching(supervise, tmp_path)
    first = supervised.child_pid
    with under_load(supervised) as load:
        drop(folder, "big-1.0.1.py", logic_patch("1.0.1", "restarted", head=", restart=True"))
        result = result_of(folder, "big-1.0.1.py", supervised)
        assert result["dir"] == "applied", result
        assert result["via"] == "restart"
        assert "restart=True" in result["reason"]
        assert result["restart"]["new_pid"] != first  # which processes, and the pause
        assert result["restart"]["paused_s"] > 0
        status = supervised.status()
        restart = status["last_restart"]
        assert restart["ok"]
        assert restart["kind"] == "preserving"
        assert restart["state"] == "complete"
        assert restart["old_pid"] == first
        assert "1.0.1" in restart["reason"]
        assert status["patches"]["last"]["via"] == "restart"
        assert status["patches"]["level"] == ["1.0.1"]
        wait_for(lambda: load.served_by(restart["new_pid"]), "a request to the new process")
        answer = request(supervised.address, "/get")
        assert answer["tag"] == "restarted"
        assert answer["pid"] == restart["new_pid"]
        assert journal_level(folder / ".journal.json") == ["1.0.1"]
        # A hot patch on top, then a plain SIGHUP restart: the journal (with the
        # restart=True patch in it) is replayed.
        drop(folder, "small-1.0.2.py", logic_patch("1.0.2", "hot-on-top"))
        assert result_of(folder, "small-1.0.2.py", supervised)["via"] == "hot"
        outcome = supervised.restart()
        assert outcome["ok"], outcome
        wait_for(lambda: load.served_by(outcome["new_pid"]), "a request to the third process")
        assert request(supervised.address, "/get")["tag"] == "hot-on-top"
        assert supervised.status()["patches"]["level"] == ["1.0.1", "1.0.2"]
    load.check(request(supervised.address, "/get")["counters"])


def test_the_new_process_follows_a_rollback_the_old_one_made_while_draining(
    supervise: Callable[..., Supervised], tmp_path: Path
) -> None:
    """The journal is replayed early; a change the old process makes later is caught up."""
    folder, flag = tmp_path / "patches", tmp_path / "roll-back-while-draining"
    supervised = supervise(
        "--plugin",
        "--rollback-on-drain-if-exists",
        str(flag),
        options=("--watch", str(folder), *BASE_OPTIONS),
    )
    with Load(supervised.address) as load:
        drop(folder, "fix-1.0.1.py", logic_patch("1.0.1", "patched"))
        assert result_of(folder, "fix-1.0.1.py", supervised)["outcome"] == "applied"
        assert request(supervised.address, "/get")["tag"] == "patched"
        flag.touch()
        outcome = supervised.restart()
        assert outcome["ok"], outcome
        wait_for(lambda: load.served_by(outcome["new_pid"]), "a request to the new process")
        # The old process rolled 1.0.1 back after the new one had replayed it:
        # the new one caught up at the hand-over, before it served.
        answer = request(supervised.address, "/get")
        assert (answer["pid"], answer["tag"]) == (outcome["new_pid"], "base")
        assert journal_level(folder / ".journal.json") == []
        supervised.wait(lambda s: s["patches"]["level"] == [], "the level the new process reports")
        assert "changed since it was replayed" in supervised.log()
    load.check(request(supervised.address, "/get")["counters"])


def test_when_the_new_process_cannot_apply_it_the_old_one_keeps_serving(
    supervise: Callable[..., Supervised], tmp_path: Path
) -> None:
    folder, supervised = watching(supervise, tmp_path)
    first = supervised.child_pid
    broken = logic_patch(
        "1.0.1",
        "never",
        head=", restart=True",
        extra="""
        @patch.migrate("counter_logic")
        def upgrade(module):
            raise RuntimeError("the data cannot be upgraded")
        """,
    )
    with under_load(supervised) as load:
        drop(folder, "broken-1.0.1.py", broken)
        result = result_of(folder, "broken-1.0.1.py", supervised)
        assert result["dir"] == "rejected", result
        assert result["via"] == "restart"
        assert "the data cannot be upgraded" in result["reason"]
        assert "restart failed" in result["reason"]
        status = supervised.status()
        assert status["child"]["pid"] == first
        assert status["last_restart"]["ok"] is False
        assert "keeps serving" in status["last_restart"]["error"]
        answer = request(supervised.address, "/get")
        assert answer["pid"] == first
        assert answer["tag"] == "base"
        assert (
            not (folder / ".journal.json").exists() or journal_level(folder / ".journal.json") == []
        )
    load.check(request(supervised.address, "/get")["counters"])


# -- the supervisor follows the level the service has, whoever changed it ---------------


def raising_patch(version: str) -> str:
    return logic_patch(version, "x").replace('return "x"', 'raise RuntimeError("bad patch")')


def test_a_rollback_by_the_health_gate_in_the_service_reaches_the_supervisor(
    supervise: Callable[..., Supervised], tmp_path: Path
) -> None:
    folder, supervised = watching(supervise, tmp_path, "--health-gate", "3")
    drop(folder, "bad-1.0.1.py", raising_patch("1.0.1"))
    result = result_of(folder, "bad-1.0.1.py", supervised)
    assert result["outcome"] == "applied", result
    assert supervised.status()["patches"]["level"] == ["1.0.1"]

    failed = 0

    def rolled_back() -> bool:
        nonlocal failed
        try:
            return request(supervised.address, "/get")["tag"] == "base"
        except Exception:
            failed += 1  # the patched function raised: the request failed
            return False

    wait_for(rolled_back, "the health gate to roll the patch back")
    assert failed >= 3
    # The supervisor heard it from the service, not from a reply of its own.
    status = supervised.wait(
        lambda s: s["patches"]["level"] == [], "the status to show the rollback"
    )
    assert status["child"]["pid"] == supervised.child_pid
    assert journal_level(folder / ".journal.json") == []
    assert "reports its patch level" in supervised.log()

    # The same version again is not `unchanged`: the service no longer has it.
    drop(folder, "bad-again.py", raising_patch("1.0.1"))
    again = result_of(folder, "bad-again.py", supervised)
    assert again["outcome"] == "applied", again
    assert again["level"] == ["1.0.1"]
    assert supervised.status()["patches"]["level"] == ["1.0.1"]
