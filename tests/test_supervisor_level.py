"""What a supervised process says of its level, and the whole level the supervisor keeps.

Every answer and report of a serving process (``hotpatch run``) carries the top
10 versions of its level, ``level_size``, the top's patches with their sha256
and ``below``, the digest of the patches under the top: the supervisor puts the
top on the bottom it knows (``LevelMirror``) only if the digests agree, and
takes the whole level in a memfd when the process loads or when asked. Real
registries, real patch files, a real socket pair for the vital check; and
``hotpatch run --workers 2`` at a level whose whole list exceeds a control message.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_supervisor import Supervised, supervise, wait_for
from test_supervisor_patches import drop, logic_patch, result_of, watching
from test_workers import all_serving

from hotpatch._journal import Journal
from hotpatch._journal_format import JournalEntry, JournalState
from hotpatch._plugins import PluginHost
from hotpatch._results import LEVEL_SHOWN
from hotpatch.service._channel import MAX_MESSAGE
from hotpatch.service._patches import PatchLevels
from hotpatch.supervisor._child import LevelMirror
from hotpatch.supervisor._status import write_status
from hotpatch.supervisor._workers import fleet_level

__all__ = ["supervise"]  # the fixture, shared with test_supervisor

REPO = Path(__file__).resolve().parents[1]


def _source(module: str, n: int, body: str = "") -> bytes:
    return (
        "from hotpatch import Patch\n\n"
        f"patch = Patch(version='1.0.{n}', baseline='1.0')\n\n"
        f"@patch.replace('{module}:f')\n"
        "def f():\n"
        f"    return {n}{body}\n"
    ).encode()


def _levels(module: str, tmp_path: Path, name: str) -> PatchLevels:
    levels = PatchLevels(None, "1.0", str(tmp_path / f"{name}.journal.json"), PluginHost())
    assert "error" not in levels.load(None)
    return levels


def _apply(levels: PatchLevels, module: str, n: int, body: str = "") -> dict[str, Any]:
    answer = levels.apply_patch({"who": "test"}, _source(module, n, body))
    assert answer["outcome"] == "applied", answer
    return answer


def _shas(levels: PatchLevels) -> list[list[Any]]:
    assert levels.registry is not None
    return [[p.version, p.source.sha256 if p.source else None] for p in levels.registry.patches]


def test_answers_carry_the_top_of_the_level_and_the_supervisor_keeps_all_of_it(
    tmp_path: Path, make_module: Callable[[str], types.ModuleType]
) -> None:
    mod = make_module("def f():\n    return 0\n")
    levels = _levels(mod.__name__, tmp_path, "a")
    mirror = LevelMirror()
    mirror.take_whole(json.loads(levels.whole_level() or b"{}"))  # as when it loaded
    try:
        for n in range(1, 15):
            answer = _apply(levels, mod.__name__, n)
            versions = [f"1.0.{i}" for i in range(1, n + 1)]
            assert answer["level"] == versions[-LEVEL_SHOWN:]
            assert answer["level_size"] == n
            assert [p[0] for p in answer["patches"]] == versions[-LEVEL_SHOWN:]
            assert [list(p) for p in answer["patches"]] == _shas(levels)[-LEVEL_SHOWN:]
            assert mirror.take(json.loads(json.dumps(answer)))  # as it crosses the channel
            assert mirror.level == versions
            assert mirror.patches == _shas(levels)
        # A rollback under the top: the answer's top is the whole level, put on nothing.
        answer = levels.rollback({"to": "1.0.2", "who": "test"})
        assert answer["ok"], answer
        assert (answer["level"], answer["level_size"]) == (["1.0.1", "1.0.2"], 2)
        assert mirror.take(json.loads(json.dumps(answer)))
        assert mirror.level == ["1.0.1", "1.0.2"]
        for n in range(3, 15):  # up again, with other content: the digests follow it
            assert mirror.take(json.loads(json.dumps(_apply(levels, mod.__name__, n, " + 1"))))
        assert mirror.patches == _shas(levels)
        assert not mirror.missing
    finally:
        assert levels.registry is not None
        levels.registry.rollback(to="1.0")
        levels.wire.close()


def test_a_report_whose_bottom_is_not_the_one_known_is_not_put_on_it(
    tmp_path: Path, make_module: Callable[[str], types.ModuleType]
) -> None:
    """The supervisor knew one level; the process runs the same versions with another
    content under the top (what a report missed would leave): no guess, the whole level."""
    mod = make_module("def f():\n    return 0\n")
    first, second = _levels(mod.__name__, tmp_path, "a"), None
    mirror = LevelMirror()
    try:
        for n in range(1, 13):
            assert mirror.take(json.loads(json.dumps(_apply(first, mod.__name__, n))))
        assert first.registry is not None
        first.registry.rollback(to="1.0")
        second = _levels(mod.__name__, tmp_path, "b")
        for n in range(1, 13):
            answer = json.loads(json.dumps(_apply(second, mod.__name__, n, " + 2")))
        assert answer["level"] == mirror.level[-LEVEL_SHOWN:]  # the same versions on top
        assert not mirror.take(answer)
        assert mirror.missing
        assert mirror.patches != _shas(second)  # not taken: what it knew stays, said stale
        whole = json.loads(second.whole_level() or b"{}")
        newer = json.loads(json.dumps(_apply(second, mod.__name__, 13)))  # after the whole
        assert not mirror.take(newer)
        mirror.take_whole(whole)  # the process's whole level, then the newer report on it
        assert not mirror.missing
        assert mirror.patches == _shas(second)
        assert mirror.level == [f"1.0.{i}" for i in range(1, 14)]
    finally:
        for levels in (first, second):
            if levels is not None and levels.registry is not None and levels.registry.level:
                levels.registry.rollback(to="1.0")
            if levels is not None:
                levels.wire.close()


def test_the_mirrors_level_is_the_versions_of_its_patches_one_list_until_they_change(
    tmp_path: Path, make_module: Callable[[str], types.ModuleType]
) -> None:
    """``level`` and ``applied`` are made from ``patches`` (the one state kept), on every
    way the level comes: the whole level, a top put on it, a rollback, a stale report then
    the whole level. Each is one list while the level stays (the status and the folder's
    pipeline read them at every drop), another once it changed."""
    mod = make_module("def f():\n    return 0\n")
    levels = _levels(mod.__name__, tmp_path, "a")
    mirror = LevelMirror()

    def follows(patches: list[list[Any]]) -> None:
        assert mirror.patches == patches
        assert mirror.level == [str(p[0]) for p in patches]
        assert mirror.applied == [(str(p[0]), p[1]) for p in patches]
        assert mirror.level is mirror.level
        assert mirror.applied is mirror.applied

    try:
        follows([])
        mirror.take_whole(json.loads(levels.whole_level() or b"{}"))
        follows([])
        for n in range(1, 13):
            before = mirror.level, mirror.applied
            answer = json.loads(json.dumps(_apply(levels, mod.__name__, n)))
            assert mirror.take(answer)
            follows(_shas(levels))
            assert mirror.level is not before[0]
            assert mirror.applied is not before[1]
            kept = mirror.level, mirror.applied
            assert mirror.take(answer)  # the same report again: nothing changed
            assert mirror.level is kept[0]
            assert mirror.applied is kept[1]
        answer = levels.rollback({"to": "1.0.3", "who": "test"})
        assert answer["ok"], answer
        assert mirror.take(json.loads(json.dumps(answer)))
        follows(_shas(levels))
        assert mirror.level == ["1.0.1", "1.0.2", "1.0.3"]
        assert mirror.take({"level": ["1.0.1"], "patches": [["1.0.1", None]]})  # no size: whole
        follows([["1.0.1", None]])
        for n in range(4, 14):
            stale = json.loads(json.dumps(_apply(levels, mod.__name__, n)))
        assert not mirror.take(stale)  # its bottom is not the one known here
        assert mirror.missing
        follows([["1.0.1", None]])  # what it knew stays
        mirror.take_whole(json.loads(levels.whole_level() or b"{}"))
        follows(_shas(levels))
        assert mirror.level == [f"1.0.{i}" for i in range(1, 14)]
    finally:
        assert levels.registry is not None
        levels.registry.rollback(to="1.0")
        levels.wire.close()


def _chained(patches: list[list[Any]]) -> str:
    """The digest of a whole level, as documented: sha256 chained over version and sha256."""
    digest = ""
    for version, sha in patches:
        digest = hashlib.sha256(f"{digest}\n{version}\n{sha or ''}".encode()).hexdigest()
    return digest


def test_the_status_shows_a_level_by_its_top_its_size_and_its_digest(
    tmp_path: Path, make_module: Callable[[str], types.ModuleType]
) -> None:
    """The status file shows the top 10 versions, ``level_size`` and ``level_digest`` (the
    same for the same patches, another for other content under the same versions);
    ``hotpatch status`` shows the whole level with the same size and digest."""
    mod = make_module("def f():\n    return 0\n")
    first, second = _levels(mod.__name__, tmp_path, "a"), None
    mirror, other = LevelMirror(), LevelMirror()
    try:
        assert mirror.shown(whole=False) == {"level": [], "level_size": 0, "level_digest": ""}
        for n in range(1, 16):
            assert mirror.take(json.loads(json.dumps(_apply(first, mod.__name__, n))))
            versions = [f"1.0.{i}" for i in range(1, n + 1)]
            brief, whole = mirror.shown(whole=False), mirror.shown(whole=True)
            assert brief == {
                "level": versions[-LEVEL_SHOWN:],
                "level_size": n,
                "level_digest": _chained(_shas(first)),
            }
            assert whole == {**brief, "level": versions}
        shown = mirror.shown(whole=False)
        # A rollback under the top, and up again: the digest follows the level.
        answer = first.rollback({"to": "1.0.3", "who": "test"})
        assert mirror.take(json.loads(json.dumps(answer)))
        assert mirror.shown(whole=False)["level_digest"] == _chained(_shas(first)[:3])
        for n in range(4, 16):
            assert mirror.take(json.loads(json.dumps(_apply(first, mod.__name__, n))))
        assert mirror.shown(whole=False) == shown
        # The same versions with other content: the same top and size, another digest.
        assert first.registry is not None
        first.registry.rollback(to="1.0")
        second = _levels(mod.__name__, tmp_path, "b")
        for n in range(1, 16):
            assert other.take(json.loads(json.dumps(_apply(second, mod.__name__, n, " + 1"))))
        brief = other.shown(whole=False)
        assert (brief["level"], brief["level_size"]) == (shown["level"], shown["level_size"])
        assert brief["level_digest"] == _chained(_shas(second)) != shown["level_digest"]
    finally:
        for levels in (first, second):
            if levels is not None and levels.registry is not None and levels.registry.level:
                levels.registry.rollback(to="1.0")
            if levels is not None:
                levels.wire.close()


def _mirror(versions: list[str], tag: str = "") -> LevelMirror:
    """A process's whole level as it passes it when it loads (``whole-level``)."""
    mirror = LevelMirror()
    patches = [[v, hashlib.sha256(f"{v}{tag}".encode()).hexdigest()] for v in versions]
    mirror.take_whole({"level": versions, "patches": patches})
    return mirror


def test_the_fleet_shows_the_level_of_its_workers_by_its_top_its_size_and_its_digest() -> None:
    versions = [f"1.0.{n}" for n in range(1, 31)]
    one = _mirror(versions)
    for whole in (False, True):
        # At one level: that level, with its digest.
        assert fleet_level([one, _mirror(versions)], whole=whole) == one.shown(whole=whole)
        # Mid-rollout, one worker a patch ahead (or one back): the longer level.
        ahead = _mirror([*versions, "1.0.31"])
        assert fleet_level([one, ahead], whole=whole) == ahead.shown(whole=whole)
        assert fleet_level([ahead, one], whole=whole) == ahead.shown(whole=whole)
        # Levels that part under the top (other content, or other versions): every
        # version some worker runs, and no digest (no one level to stand for).
        parted = _mirror([*versions[:20], "1.0.21a", "1.0.22a"])
        # each where the first worker that runs it has it
        union = [*versions[:21], "1.0.21a", "1.0.22", "1.0.22a", *versions[22:]]
        shown = fleet_level([one, parted], whole=whole)
        assert shown == {
            "level": union if whole else union[-LEVEL_SHOWN:],
            "level_size": 32,
            "level_digest": None,
        }
        other = _mirror(versions, tag="other content")
        shown = fleet_level([one, other], whole=whole)
        assert (shown["level_size"], shown["level_digest"]) == (30, None)
    assert fleet_level([], whole=False) == {"level": [], "level_size": 0, "level_digest": ""}


def test_the_status_file_is_one_line_of_json_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    for n in range(3):
        status = {"state": "running", "patches": {"level": [f"1.0.{n}"]}, "n": n}
        write_status(path, status)
        text = path.read_text()
        assert text.count("\n") == 1
        assert text.endswith("\n")
        assert json.loads(text) == status
    assert os.listdir(tmp_path) == ["status.json"]  # no temporary file left beside it


LEVEL = 800  # the whole level with each sha256 is over a control message (64 KiB)


def _journals(folder: Path, level: int) -> list[str]:
    """Each worker's journal at ``level`` (its patches of ``counter_logic:tag``)."""
    entries = []
    for n in range(1, level + 1):
        text = logic_patch(f"1.0.{n}", f"tag{n}")
        sha = hashlib.sha256(text.encode()).hexdigest()
        entries.append(JournalEntry(f"1.0.{n}", sha, f"p{n}.py", text, f"level {n}"))
    folder.mkdir(mode=0o700, exist_ok=True)
    for worker in range(2):
        Journal(folder / f".journal.worker{worker}.json").write(JournalState("1.0", entries))
    return [e.version for e in entries]


def _cli(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hotpatch", *args, "--folder", str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
    )


@pytest.mark.e2e
@pytest.mark.slow
def test_workers_at_a_level_over_a_control_message_start_and_answer_with_its_top(
    supervise: Callable[..., Supervised], tmp_path: Path
) -> None:
    versions = _journals(tmp_path / "patches", LEVEL)
    assert len(json.dumps({"level": versions, "patches": [[v, "0" * 64] for v in versions]})) > (
        MAX_MESSAGE
    )
    options = ("--workers", "2", "--settle", "0")
    folder, supervised = watching(supervise, tmp_path, options=options, serving=False)
    status = all_serving(supervised, 2)
    # The status file shows each worker's level by its top and size (status: all of it).
    assert [(w["level"], w["level_size"]) for w in status["workers"]] == [
        (versions[-LEVEL_SHOWN:], LEVEL)
    ] * 2
    drop(folder, "fix.py", logic_patch(f"1.0.{LEVEL + 1}", "fixed"))
    result = result_of(folder, "fix.py", supervised)
    assert result["outcome"] == "applied", result
    top = [*versions, f"1.0.{LEVEL + 1}"][-LEVEL_SHOWN:]
    assert (result["level"], result["level_size"]) == (top, LEVEL + 1)
    shown = _cli(folder, "status", "--json")
    assert shown.returncode == 0, shown.stderr
    answer = json.loads(shown.stdout)
    assert [w["level"] for w in answer["workers"]] == [[*versions, f"1.0.{LEVEL + 1}"]] * 2
    # A rollback through the workers: each answer carries the top and the size.
    rolled = _cli(folder, "rollback", "--json")
    assert rolled.returncode == 0, rolled.stderr
    answer = json.loads(rolled.stdout)
    assert (answer["level"], answer["level_size"]) == (versions[-LEVEL_SHOWN:], LEVEL)
    for worker in answer["workers"]:
        assert (worker["level"], worker["level_size"]) == (versions[-LEVEL_SHOWN:], LEVEL)
    rolled = _cli(folder, "rollback", "--to", versions[-2])
    assert rolled.returncode == 0, rolled.stderr
    assert f"({LEVEL - 1} patches)" in rolled.stdout
    status = supervised.wait(
        lambda s: all(w["level_size"] == LEVEL - 1 for w in s["workers"]), "the rollback"
    )
    assert [w["level"] for w in status["workers"]] == [versions[:-1][-LEVEL_SHOWN:]] * 2
    assert all(w["pid"] for w in status["workers"])
    assert os.path.exists(folder / "applied" / "fix.py")


def _brief(status: dict[str, Any]) -> dict[str, Any]:
    """``hotpatch status --json`` as the status file shows it: each level cut to its top (the
    folder's problem and the drop waiting too: the file holds them)."""
    brief = {k: v for k, v in status.items() if k not in ("ok", "supervisor")}
    brief.pop("updated", None)
    brief["workers"] = [{**w, "level": w["level"][-LEVEL_SHOWN:]} for w in brief["workers"]]
    patches = dict(brief["patches"])
    patches["level"] = patches["level"][-LEVEL_SHOWN:]
    patches["pending"] = patches["pending"][:LEVEL_SHOWN]
    brief["patches"] = patches
    return brief


@pytest.mark.e2e
@pytest.mark.slow
def test_the_status_file_after_a_burst_says_what_status_says(
    supervise: Callable[..., Supervised], tmp_path: Path
) -> None:
    """A burst of drops into two workers at level 30: the status file is rewritten on each
    change with each level's top, size and digest; once the burst is filed it says what
    ``hotpatch status`` says, whose levels are whole."""
    versions = _journals(tmp_path / "patches", 30)
    options = ("--workers", "2", "--settle", "0")
    folder, supervised = watching(supervise, tmp_path, options=options, serving=False)
    all_serving(supervised, 2)
    beside = tmp_path / "burst"
    beside.mkdir()
    added = [f"1.0.{n}" for n in range(31, 43)]
    for version in added:
        (beside / f"fix-{version}.py").write_text(logic_patch(version, f"tag {version}"))
    for version in reversed(added):  # in one go, the newest first
        os.rename(beside / f"fix-{version}.py", folder / f"fix-{version}.py")
    for version in added:
        result = result_of(folder, f"fix-{version}.py", supervised)
        assert result["outcome"] == "applied", result
    level = [*versions, *added]

    def agreed() -> tuple[dict[str, Any], dict[str, Any]] | None:
        shown = _cli(folder, "status", "--json")
        assert shown.returncode == 0, shown.stderr
        answer: dict[str, Any] = json.loads(shown.stdout)
        in_file = supervised.status()
        in_file.pop("updated", None)
        return (answer, in_file) if _brief(answer) == in_file else None

    answer, in_file = wait_for(agreed, "the status file to say what status says")
    assert [w["level"] for w in answer["workers"]] == [level, level]  # whole there
    state = Journal(folder / ".journal.worker1.json").read()
    assert state is not None
    digest = _chained([[e.version, e.sha256] for e in state.level])
    for shown in (*in_file["workers"], in_file["patches"]):
        assert (shown["level"], shown["level_size"]) == (level[-LEVEL_SHOWN:], len(level))
        assert shown["level_digest"] == digest
    assert in_file["rollout"]["state"] == answer["rollout"]["state"]


MISREPORTING = """\
import sys, threading
sys.path.insert(0, {modules!r})
import {module}
import hotpatch
from hotpatch.service._runtime import get_runtime

hotpatch.ready()
# A report whose top does not go on the bottom the supervisor knows (20 patches claimed,
# the digest of another bottom): the supervisor must not put it together with its own.
runtime = get_runtime()
levels = runtime.patches
with runtime.exchange:
    with levels.level_lock:
        levels.level_seq += 1
        seq = levels.level_seq
    top = [f"1.0.{{n}}" for n in range(3, 13)]
    runtime._send({{
        "op": "level", "baseline": "1.0", "level": top, "level_size": 20,
        "patches": [[v, "0" * 64] for v in top], "below": "another bottom", "level_seq": seq,
    }})
print("reported", flush=True)
threading.Event().wait()
"""


@pytest.mark.e2e
@pytest.mark.slow
def test_a_report_that_does_not_follow_the_level_known_makes_the_supervisor_ask_for_all_of_it(
    tmp_path: Path,
) -> None:
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "misreported.py").write_text("def f():\n    return 0\n")
    folder = tmp_path / "patches"
    folder.mkdir(mode=0o700)
    entries = []
    for n in range(1, 13):
        text = _source("misreported", n).decode()
        sha = hashlib.sha256(text.encode()).hexdigest()
        entries.append(JournalEntry(f"1.0.{n}", sha, f"p{n}.py", text, f"level {n}"))
    Journal(folder / ".journal.json").write(JournalState("1.0", entries))
    versions = [e.version for e in entries]
    service = tmp_path / "service.py"
    service.write_text(MISREPORTING.format(modules=str(modules), module="misreported"))
    status_file = tmp_path / "status.json"
    log_file = tmp_path / "supervisor.log"
    command = [
        *(sys.executable, "-m", "hotpatch.supervisor", "run", "--watch", str(folder)),
        *("--baseline", "1.0", "--allow-unsigned", "--status-file", str(status_file)),
        *("--", sys.executable, str(service)),
    ]
    with log_file.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:

        def asked() -> dict[str, Any] | None:
            text = log_file.read_text(errors="replace")
            if "passed its whole patch level (12 patches)" not in text:
                return None
            if "asking it for the whole level" not in text or not status_file.exists():
                return None
            try:
                status: dict[str, Any] = json.loads(status_file.read_text())
            except ValueError:
                return None
            patches = status.get("patches") or {}
            return status if patches.get("level_size") == len(versions) else None

        status = wait_for(asked, "the supervisor to ask for the whole level")
        # the process's level, not 20 patches
        assert status["patches"]["level"] == versions[-LEVEL_SHOWN:]
        assert status["patches"]["level_digest"] == _chained(
            [[e.version, e.sha256] for e in entries]
        )
        assert "reported" in log_file.read_text(errors="replace")
        drop(folder, "fix.py", _source("misreported", 13).decode())
        result = wait_for(
            lambda: (
                (folder / "applied" / "fix.py.result.json").exists()
                and json.loads((folder / "applied" / "fix.py.result.json").read_text())
            ),
            "fix.py filed",
        )
        assert result["outcome"] == "applied", result
        assert (result["level"], result["level_size"]) == ([*versions, "1.0.13"][-10:], 13)
        now = wait_for(
            lambda: (s := json.loads(status_file.read_text()))["patches"]["level_size"] == 13 and s,
            "the level after the drop",
        )
        assert now["patches"]["level"] == [*versions, "1.0.13"][-LEVEL_SHOWN:]
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
