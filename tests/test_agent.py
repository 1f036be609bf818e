"""The embedded agent: life cycle, journal replay then catch-up, plugins, the control socket."""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from drops import WAIT_S, DropFolder

import hotpatch
from hotpatch._journal import Journal
from hotpatch.agent._control import request
from hotpatch.agent._settings import Checks, PluginChoice, Settings
from hotpatch.agent._solo import agent_status


def patch_text(mod: str, version: str, value: int | str, *, extra: str = "") -> str:
    return (
        "from hotpatch import Patch\n\n"
        f"patch = Patch(version={version!r}, baseline='1.0'{extra})\n\n"
        f"@patch.replace('{mod}:f')\n"
        "def f():\n"
        f"    return {value!r}\n"
    )


@pytest.fixture
def paths(tmp_path: Path) -> DropFolder:
    return DropFolder(tmp_path)


@pytest.fixture
def target(make_module: Callable[[str], types.ModuleType]) -> types.ModuleType:
    return make_module(
        """\
        def f():
            return 0
        """
    )


@pytest.fixture
def agents() -> Iterator[list[hotpatch.Agent]]:
    """Agents a test started: stopped, and their patches rolled back, at teardown."""
    started: list[hotpatch.Agent] = []
    yield started
    for agent in started:
        agent.stop()
        if agent.registry is not None and agent.registry.level:
            agent.registry.rollback(to=agent.registry.baseline)


@pytest.fixture
def agent(paths: DropFolder, agents: list[hotpatch.Agent]) -> hotpatch.Agent:
    """An agent watching ``paths.path`` with its control socket, verifying in a child."""
    started = hotpatch.install("1.0", watch=paths.path, journal=paths.journal)
    agents.append(started)
    return started


def agent_threads() -> list[str]:
    return [
        t.name
        for t in threading.enumerate()
        if t.name.startswith("hotpatch") or type(t).__module__.startswith("watchdog")
    ]


# -- life cycle -----------------------------------------------------------------------------


def test_install_starts_in_the_background_and_stop_ends_it_cleanly(
    paths: DropFolder, target: types.ModuleType
) -> None:
    before = set(threading.enumerate())
    agent = hotpatch.install("1.0", watch=paths.path, verify=False)
    try:
        socket_path = paths.path / ".hotpatch.sock"
        assert agent.running
        assert stat.S_ISSOCK(socket_path.lstat().st_mode)
        assert stat.S_IMODE(socket_path.lstat().st_mode) == 0o600
        pidfile = json.loads((paths.path / ".hotpatch.json").read_text())
        assert pidfile["pid"] == os.getpid()
        assert pidfile["socket"] == str(socket_path)
        assert agent_threads()
        paths.drop("fix.py", patch_text(target.__name__, "1.0.1", 1))
        paths.filed("fix.py")
        assert target.f() == 1
    finally:
        agent.stop()
    assert not agent.running
    assert not os.path.lexists(paths.path / ".hotpatch.sock")
    assert not (paths.path / ".hotpatch.json").exists()
    assert set(threading.enumerate()) <= before  # observer, worker, socket threads all joined
    agent.stop()  # idempotent
    # Stopped means stopped: a new drop stays where it is; the patch applied stays applied.
    paths.drop("later.py", patch_text(target.__name__, "1.0.2", 2))
    time.sleep(0.2)
    assert (paths.path / "later.py").exists()
    assert target.f() == 1
    assert agent.registry is not None
    agent.registry.rollback()


def test_the_agent_is_a_context_manager(paths: DropFolder, target: types.ModuleType) -> None:
    with hotpatch.install("1.0", watch=paths.path, verify=False) as agent:
        paths.drop("fix.py", patch_text(target.__name__, "1.0.1", 1))
        paths.filed("fix.py")
        assert agent.status()["level"] == ["1.0.1"]
    assert not agent.running
    assert not os.path.lexists(paths.path / ".hotpatch.sock")
    assert agent.registry is not None
    agent.registry.rollback()
    # Agent(...) without install() starts when entered.
    with hotpatch.Agent("1.0", watch=paths.path, verify=False) as again:
        assert again.running
    assert not again.running


def test_a_failed_start_leaves_nothing_running(
    paths: DropFolder, agent: hotpatch.Agent, agents: list[hotpatch.Agent]
) -> None:
    before = set(threading.enumerate())
    with pytest.raises(FileExistsError, match="already watched by another agent") as info:
        hotpatch.install("1.0", watch=paths.path, journal=paths.root / "other.json")
    assert f"(pid {os.getpid()})" in str(info.value)
    assert set(threading.enumerate()) <= before
    assert not (paths.root / "other.json").exists()  # refused before anything else ran
    assert json.loads((paths.path / ".hotpatch.json").read_text())["pid"] == os.getpid()
    # The first agent still answers.
    assert request(paths.path / ".hotpatch.sock", {"cmd": "status"})["ok"] is True


def test_the_service_keeps_its_main_loop(paths: DropFolder, target: types.ModuleType) -> None:
    # install() returns at once; the service's own loop runs on, and sees the patch.
    seen: list[object] = []
    with hotpatch.install("1.0", watch=paths.path, verify=False):
        paths.drop("fix.py", patch_text(target.__name__, "1.0.1", 1))
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:  # the "main loop"
            seen.append(target.f())
            if seen[-1] == 1:
                break
            time.sleep(0.001)
    assert seen[0] == 0
    assert seen[-1] == 1


def test_a_stopped_agent_does_not_start_again(agents: list[hotpatch.Agent]) -> None:
    agent = hotpatch.install("1.0")  # a registry only: no folder, no socket
    agents.append(agent)
    assert agent.running
    assert agent.start() is agent  # already running: nothing to do
    agent.stop()
    assert not agent.running
    with pytest.raises(RuntimeError, match="this agent was stopped; start a new one"):
        agent.start()


def test_bad_options_are_refused(paths: DropFolder) -> None:
    with pytest.raises(ValueError, match="verify_timeout must be positive"):
        hotpatch.install("1.0", watch=paths.path, verify_timeout=0)
    with pytest.raises(ValueError, match="control_socket=True needs watch"):
        hotpatch.install("1.0", control_socket=True)


# -- journal and catch-up -------------------------------------------------------------------


def test_journal_replay_then_catch_up_in_version_order(
    paths: DropFolder, target: types.ModuleType, agents: list[hotpatch.Agent]
) -> None:
    name = target.__name__
    first = hotpatch.install("1.0", watch=paths.path, journal=paths.journal, verify=False)
    paths.drop("one.py", patch_text(name, "1.0.1", 1))
    paths.filed("one.py")
    first.stop()
    # "The process restarts": the code is back to its original, the journal stays.
    journal = paths.journal.read_bytes()
    assert first.registry is not None
    first.registry.rollback(to="1.0")
    paths.journal.write_bytes(journal)
    assert target.f() == 0
    # While it was down, two more patches arrived (names opposite to versions).
    paths.drop("a.py", patch_text(name, "1.0.3", 3))
    paths.drop("b.py", patch_text(name, "1.0.2", 2))

    second = hotpatch.install("1.0", watch=paths.path, journal=paths.journal, verify=False)
    agents.append(second)
    paths.filed("a.py")
    paths.filed("b.py")
    assert second.registry is not None
    assert second.registry.level == ("1.0.1", "1.0.2", "1.0.3")
    actions = [(h.action, h.version) for h in second.registry.history]
    assert actions[-3:] == [("replay", "1.0.1"), ("apply", "1.0.2"), ("apply", "1.0.3")]
    assert target.f() == 3


SERVICE = """\
import os, sys, time
sys.path.insert(0, {modules!r})
import hotpatch, {module}

agent = hotpatch.install("1.0", watch={folder!r}, journal={journal!r})
print("ready", flush=True)
while True:  # the service's own main loop, untouched by the agent
    {module}.f()
    time.sleep(0.01)
"""


@pytest.mark.e2e
def test_a_restarted_service_replays_its_journal_then_catches_up(
    paths: DropFolder, make_module: Callable[[str], types.ModuleType]
) -> None:
    module = make_module("def f():\n    return 0\n")
    modules = str(Path(module.__file__ or "").parent)
    script = paths.root / "service.py"
    script.write_text(
        SERVICE.format(
            modules=modules,
            module=module.__name__,
            folder=str(paths.path),
            journal=str(paths.journal),
        )
    )
    sock = paths.path / ".hotpatch.sock"

    def run_service() -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        return proc

    def level() -> list[str]:
        answer: list[str] = request(sock, {"cmd": "status"})["level"]
        return answer

    proc = run_service()
    try:
        paths.drop("one.py", patch_text(module.__name__, "1.0.1", 1))
        paths.filed("one.py")
        assert level() == ["1.0.1"]
    finally:
        proc.send_signal(signal.SIGKILL)  # a crash: no clean stop
        proc.communicate()
    # Down: two more drops arrive; the stale socket is still there.
    paths.drop("a.py", patch_text(module.__name__, "1.0.3", 3))
    paths.drop("b.py", patch_text(module.__name__, "1.0.2", 2))
    proc = run_service()
    try:
        paths.filed("a.py")
        paths.filed("b.py")
        assert level() == ["1.0.1", "1.0.2", "1.0.3"]
        history = request(sock, {"cmd": "history"})["history"]
        assert [(h["action"], h["version"]) for h in history][-3:] == [
            ("replay", "1.0.1"),
            ("apply", "1.0.2"),
            ("apply", "1.0.3"),
        ]
    finally:
        proc.terminate()
        proc.communicate()


# -- the control socket ---------------------------------------------------------------------


def test_status_over_the_socket(paths: DropFolder, agent: hotpatch.Agent) -> None:
    answer = request(paths.path / ".hotpatch.sock", {"cmd": "status"})
    assert answer == {
        "ok": True,
        "baseline": "1.0",
        "version": "1.0",
        "level": [],
        "pid": os.getpid(),
        "watch": str(paths.path),
        "journal": str(paths.journal),
        "socket": str(paths.path / ".hotpatch.sock"),
        "pending": [],
        "last": None,
        "folder": {"safe": True, "problem": None, "since": None},
        "waiting": None,
    }


def test_apply_over_the_socket_goes_through_the_same_pipeline(
    paths: DropFolder, agent: hotpatch.Agent, target: types.ModuleType
) -> None:
    sock = paths.path / ".hotpatch.sock"
    path = paths.write("fix.py", patch_text(target.__name__, "1.0.1", 1))
    answer = request(sock, {"cmd": "apply", "path": str(path)})
    assert answer["ok"] is True
    assert answer["outcome"] == "applied"
    assert answer["version"] == "1.0.1"
    assert answer["targets"] == [f"{target.__name__}:f"]
    assert answer["who"] == f"uid:{os.getuid()}"
    assert answer["timings"]["verify_s"] > 0  # verified in a child first
    assert len(answer["sha256"]) == 64
    assert target.f() == 1
    assert path.exists()  # a file given by path stays where it is
    # The same file again: unchanged, exactly as a folder drop would be.
    again = request(sock, {"cmd": "apply", "path": str(path)})
    assert (again["ok"], again["outcome"]) == (True, "unchanged")
    # A folder drop of the same content agrees.
    paths.drop("same.py", path.read_text())
    assert paths.filed("same.py")["outcome"] == "unchanged"
    status = request(sock, {"cmd": "status"})
    assert status["level"] == ["1.0.1"]
    assert status["last"]["file"] == "same.py"
    history = request(sock, {"cmd": "history"})["history"]
    assert [(h["action"], h["version"], h["who"]) for h in history] == [
        ("apply", "1.0.1", f"uid:{os.getuid()}")
    ]
    assert set(history[0]) == {"time", "action", "version", "level", "elapsed_s", "who"}


def test_a_file_name_that_is_not_utf8_is_shown_escaped(
    paths: DropFolder, agent: hotpatch.Agent, target: types.ModuleType
) -> None:
    name = os.fsdecode(b"fix-\xff\xfe.py")  # not UTF-8: held with surrogate escapes
    paths.drop(name, patch_text(target.__name__, "1.0.1", 1))
    result = paths.filed(name)
    assert result["file"] == "fix-\\xff\\xfe.py"  # printable, and valid UTF-8 JSON
    assert target.f() == 1
    status = request(paths.path / ".hotpatch.sock", {"cmd": "status"})
    assert status["ok"] is True
    assert status["last"]["file"] == "fix-\\xff\\xfe.py"
    # A rejected one too, and the raw bytes of the name are kept on disk.
    paths.drop(os.fsdecode(b"bad-\xff.py"), "import sys\nsys.exit(2)\n")
    assert paths.filed(os.fsdecode(b"bad-\xff.py"), "rejected")["file"] == "bad-\\xff.py"
    assert b"bad-\xff.py" in os.listdir(os.fsencode(paths.path / "rejected"))
    assert request(paths.path / ".hotpatch.sock", {"cmd": "status"})["ok"] is True


def test_apply_over_the_socket_refuses_with_the_reason(
    paths: DropFolder, agent: hotpatch.Agent, target: types.ModuleType
) -> None:
    sock = paths.path / ".hotpatch.sock"
    bad = paths.write("bad.py", "import sys\nsys.exit(2)\n")
    answer = request(sock, {"cmd": "apply", "path": str(bad)})
    assert answer["ok"] is False
    assert answer["outcome"] == "rejected"
    assert answer["error_type"] == "VerificationFailed"
    assert "sys.exit(2)" in answer["error"]
    old = paths.write("old.py", patch_text(target.__name__, "0.9", 1).replace("'1.0'", "'0.9'"))
    answer = request(sock, {"cmd": "apply", "path": str(old)})
    assert answer["error_type"] == "BaselineMismatch"
    not_hot = paths.write(
        "restart.py", patch_text(target.__name__, "1.0.1", 1, extra=", restart=True")
    )
    answer = request(sock, {"cmd": "apply", "path": str(not_hot)})
    assert (answer["ok"], answer["outcome"], answer["error_type"]) == (
        False,
        "pending",
        "RestartRequired",
    )
    assert request(sock, {"cmd": "apply", "path": "fix.py"})["error_type"] == "BadRequest"
    missing = request(sock, {"cmd": "apply", "path": str(paths.outbox / "nope.py")})
    assert (missing["error_type"], missing["error"]) == (
        "BadRequest",
        f"no such file: {paths.outbox / 'nope.py'}",
    )
    assert agent.status()["level"] == []
    assert target.f() == 0


def test_verify_over_the_socket_is_a_dry_run(
    paths: DropFolder, agent: hotpatch.Agent, target: types.ModuleType
) -> None:
    sock = paths.path / ".hotpatch.sock"
    good = paths.write("good.py", patch_text(target.__name__, "1.0.1", 1))
    answer = request(sock, {"cmd": "verify", "path": str(good)})
    assert answer == {
        "ok": True,
        "version": "1.0.1",
        "hot": True,
        "reasons": [],
        "targets": [f"{target.__name__}:f"],
        "modes": {f"{target.__name__}:f": "inline"},
    }
    not_hot = paths.write(
        "restart.py", patch_text(target.__name__, "1.0.1", 1, extra=", restart=True")
    )
    answer = request(sock, {"cmd": "verify", "path": str(not_hot)})
    assert answer["ok"] is True
    assert answer["hot"] is False
    assert answer["reasons"] == ["patch 1.0.1 asks for a restart (restart=True)"]
    broken = paths.write("broken.py", "def f(:\n")
    answer = request(sock, {"cmd": "verify", "path": str(broken)})
    assert (answer["ok"], answer["error_type"]) == (False, "VerificationFailed")
    assert "syntax error" in answer["error"]
    assert agent.status()["level"] == []
    assert target.f() == 0


def test_a_brief_status_carries_the_top_of_the_level_as_the_check_after_an_apply_asks(
    paths: DropFolder, agent: hotpatch.Agent, target: types.ModuleType
) -> None:
    """After each apply the agent files a result and asks its own socket for a brief
    status (the top 10 versions and ``level_size``: the same answer at any level); a
    plain status still lists the whole level."""
    assert agent.registry is not None
    for n in range(1, 12):
        path = paths.write(f"p{n}.py", patch_text(target.__name__, f"1.0.{n}", n))
        agent.registry.apply(hotpatch.load_patch(path))
    paths.drop("p12.py", patch_text(target.__name__, "1.0.12", 12))
    result = paths.filed("p12.py")
    assert result["outcome"] == "applied", result  # the check after the apply answered
    versions = [f"1.0.{n}" for n in range(1, 13)]
    assert (result["level"], result["level_size"]) == (versions[-10:], 12)
    sock = paths.path / ".hotpatch.sock"
    brief = request(sock, {"cmd": "status", "brief": True})
    assert (brief["ok"], brief["level"], brief["level_size"]) == (True, versions[-10:], 12)
    assert brief["version"] == "1.0.12"
    assert (brief["pending"], brief["pending_count"]) == ([], 0)
    assert request(sock, {"cmd": "status"})["level"] == versions
    assert target.f() == 12


class _Compared(str):
    """A version that counts the comparisons made with it."""

    compared = 0

    def __eq__(self, other: object) -> bool:
        type(self).compared += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def test_a_brief_status_asks_the_top_of_the_level_whether_the_last_patch_stands(
    registry: hotpatch.Registry, make_module: Callable[[str], types.ModuleType], tmp_path: Path
) -> None:
    """Whether the last patch filed was rolled back since (``last.rolled_back``) is asked of
    the top of the level first: after each drop of a burst the last patch is the top, and
    the brief status costs the same at any level. Before, the version was looked for in
    the whole level, from its bottom: a burst of 1,000 drops compared each drop's version
    with every one applied before it."""
    target = make_module("def f():\n    return 0\n")
    for n in range(1, 41):
        path = tmp_path / f"p{n}.py"
        path.write_text(patch_text(target.__name__, f"1.0.{n}", n))
        registry.apply(hotpatch.load_patch(path))
    settings = Settings("1.0", None, None, None, Checks(), PluginChoice())
    last = {"outcome": "applied", "version": _Compared("1.0.40")}
    answer = agent_status(settings, registry, pending=[], last=last, brief=True)
    assert answer["last"]["rolled_back"] is False
    assert _Compared.compared <= 2, _Compared.compared
    registry.rollback()
    answer = agent_status(settings, registry, pending=[], last=last, brief=True)
    assert answer["last"]["rolled_back"] is True
    last = {"outcome": "applied", "version": "1.0.7"}  # not the top: still in the level
    answer = agent_status(settings, registry, pending=[], last=last, brief=True)
    assert answer["last"]["rolled_back"] is False


def test_rollback_and_history_over_the_socket(
    paths: DropFolder, agent: hotpatch.Agent, target: types.ModuleType
) -> None:
    sock = paths.path / ".hotpatch.sock"
    for n in (1, 2, 3):
        paths.drop(f"p{n}.py", patch_text(target.__name__, f"1.0.{n}", n))
        paths.filed(f"p{n}.py")
    answer = request(sock, {"cmd": "rollback", "to": "latest"})
    assert (answer["error_type"], answer["error"]) == (
        "BadRequest",
        "rollback target 'latest' is not a PEP 440 version (write it like '2.3.1')",
    )
    answer = request(sock, {"cmd": "rollback", "to": None})
    assert answer == {
        "ok": True,
        "versions": ["1.0.3"],
        "level": ["1.0.1", "1.0.2"],
        "level_size": 2,
    }
    assert target.f() == 2
    answer = request(sock, {"cmd": "rollback", "to": "1.0"})
    assert answer == {"ok": True, "versions": ["1.0.2", "1.0.1"], "level": [], "level_size": 0}
    assert target.f() == 0
    answer = request(sock, {"cmd": "rollback"})
    assert (answer["ok"], answer["error_type"]) == (False, "VersionConflict")
    assert "nothing to roll back" in answer["error"]
    assert request(sock, {"cmd": "rollback", "to": 3})["error_type"] == "BadRequest"
    history = request(sock, {"cmd": "history"})["history"]
    assert [(h["action"], h["who"]) for h in history] == [
        ("apply", f"folder:{paths.path}"),
        ("apply", f"folder:{paths.path}"),
        ("apply", f"folder:{paths.path}"),
        ("rollback", f"uid:{os.getuid()}"),
        ("rollback", f"uid:{os.getuid()}"),
    ]
    # The journal followed.
    recorded = Journal(paths.journal).read()
    assert recorded is not None
    assert recorded.level == []


def test_unknown_requests_are_bad_requests(paths: DropFolder, agent: hotpatch.Agent) -> None:
    sock = paths.path / ".hotpatch.sock"
    for payload in ({"cmd": "reboot"}, {}, {"cmd": ["status"]}):
        answer = request(sock, payload)
        assert (answer["ok"], answer["error_type"]) == (False, "BadRequest"), payload
        assert "status, apply, verify, rollback, history" in answer["error"]
    assert agent.handle(["not", "a", "dict"], 0)["error_type"] == "BadRequest"  # type: ignore[arg-type]


def test_an_agent_without_a_folder_serves_its_socket(
    tmp_path: Path, target: types.ModuleType, agents: list[hotpatch.Agent]
) -> None:
    sock = tmp_path / "control.sock"
    agent = hotpatch.install("1.0", control_socket=sock, verify=False)
    agents.append(agent)
    path = tmp_path / "fix.py"
    path.write_text(patch_text(target.__name__, "1.0.1", 1))
    assert request(sock, {"cmd": "apply", "path": str(path)})["outcome"] == "applied"
    assert request(sock, {"cmd": "status"})["watch"] is None
    agent.stop()
    assert not os.path.lexists(sock)
    with pytest.raises(FileNotFoundError):
        request(sock, {"cmd": "status"})


# -- plugins, audit, logging ----------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str | None]] = []

    @hotpatch.hookimpl
    def hotpatch_after_apply(self, patch: hotpatch.Patch) -> None:
        self.events.append(("applied", patch.version))

    @hotpatch.hookimpl
    def hotpatch_rejected(self, version: str | None, reason: str) -> None:
        self.events.append(("rejected", version))


class Exploding:
    @hotpatch.hookimpl
    def hotpatch_after_apply(self) -> None:
        raise RuntimeError("plugin bug")


def test_explicit_plugins_see_applies_and_rejections_and_a_raising_one_is_contained(
    paths: DropFolder, target: types.ModuleType, agents: list[hotpatch.Agent]
) -> None:
    recorder = Recorder()
    agent = hotpatch.install("1.0", watch=paths.path, plugins=[Exploding(), recorder], verify=False)
    agents.append(agent)
    paths.drop("good.py", patch_text(target.__name__, "1.0.1", 1))
    paths.filed("good.py")
    paths.drop("bad.py", "this is not a patch (\n")
    paths.filed("bad.py", "rejected")
    paths.drop("old.py", patch_text(target.__name__, "1.0.0", 1))
    paths.filed("old.py", "rejected")
    # Rejected before loading (reported by the agent) and by the registry: once each.
    assert recorder.events == [("applied", "1.0.1"), ("rejected", None), ("rejected", "1.0.0")]
    assert target.f() == 1


def test_audit_log_records_who_did_what(
    paths: DropFolder, target: types.ModuleType, agents: list[hotpatch.Agent]
) -> None:
    audit = paths.root / "audit.jsonl"
    agent = hotpatch.install("1.0", watch=paths.path, audit_log=audit, verify=False)
    agents.append(agent)
    paths.drop("good.py", patch_text(target.__name__, "1.0.1", 1))
    paths.filed("good.py")
    paths.drop("bad.py", "")
    paths.filed("bad.py", "rejected")
    request(paths.path / ".hotpatch.sock", {"cmd": "rollback"})
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(r["action"], r["outcome"], r["version"], r["who"]) for r in lines] == [
        ("apply", "applied", "1.0.1", f"folder:{paths.path}"),
        ("reject", "rejected", None, f"folder:{paths.path}"),
        ("rollback", "rolled-back", "1.0.1", f"uid:{os.getuid()}"),
    ]
    assert "is empty" in lines[1]["reason"]


ENTRY_POINT_PLUGIN = """\
import hotpatch

SEEN = []

@hotpatch.hookimpl
def hotpatch_after_apply(patch):
    SEEN.append(patch.version)
"""


@pytest.fixture
def entry_point_plugin(tmp_path: Path) -> Iterator[str]:
    """A real installed distribution declaring a plugin in the ``hotpatch`` entry-point group."""
    site = tmp_path / "site"
    name = f"hotpatch_test_plugin_{os.getpid()}_{id(tmp_path)}"
    (site / f"{name}.py").parent.mkdir()
    (site / f"{name}.py").write_text(ENTRY_POINT_PLUGIN)
    dist = site / f"{name}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[hotpatch]\nrecorder = {name}\n")
    sys.path.insert(0, str(site))
    yield name
    sys.path.remove(str(site))
    sys.modules.pop(name, None)


def test_plugins_load_from_entry_points(
    paths: DropFolder,
    target: types.ModuleType,
    agents: list[hotpatch.Agent],
    entry_point_plugin: str,
) -> None:
    agent = hotpatch.install("1.0", watch=paths.path, verify=False)
    agents.append(agent)
    paths.drop("fix.py", patch_text(target.__name__, "1.0.1", 1))
    paths.filed("fix.py")
    assert sys.modules[entry_point_plugin].SEEN == ["1.0.1"]
    agent.stop()
    assert agent.registry is not None
    agent.registry.rollback()
    # entry_points=False: only the plugins passed explicitly.
    quiet = hotpatch.install("1.0", watch=paths.path, verify=False, entry_points=False)
    agents.append(quiet)
    paths.drop("fix2.py", patch_text(target.__name__, "1.0.2", 2))
    assert paths.filed("fix2.py")["outcome"] == "applied"
    assert sys.modules[entry_point_plugin].SEEN == ["1.0.1"]


def test_a_broken_entry_point_does_not_stop_the_agent(
    paths: DropFolder,
    target: types.ModuleType,
    agents: list[hotpatch.Agent],
    entry_point_plugin: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    site = next(Path(p) for p in sys.path if (Path(p) / f"{entry_point_plugin}.py").exists())
    (site / f"{entry_point_plugin}.py").write_text("raise ImportError('plugin is broken')\n")
    with caplog.at_level(logging.ERROR, logger="hotpatch"):
        agent = hotpatch.install("1.0", watch=paths.path, verify=False)
    agents.append(agent)
    assert "entry points failed" in caplog.text
    paths.drop("fix.py", patch_text(target.__name__, "1.0.1", 1))
    assert paths.filed("fix.py")["outcome"] == "applied"


def test_one_log_line_per_outcome_with_version_targets_and_time(
    paths: DropFolder,
    target: types.ModuleType,
    agents: list[hotpatch.Agent],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="hotpatch")
    agent = hotpatch.install("1.0", watch=paths.path, verify=False)
    agents.append(agent)
    spec = f"{target.__name__}:f"
    paths.drop("good.py", patch_text(target.__name__, "1.0.1", 1))
    paths.filed("good.py")
    paths.drop("old.py", patch_text(target.__name__, "1.0.0", 1))
    paths.filed("old.py", "rejected")
    request(paths.path / ".hotpatch.sock", {"cmd": "rollback"})
    outcomes = [r.getMessage() for r in caplog.records if " good.py: " in r.getMessage()]
    assert len(outcomes) == 1
    assert outcomes[0].startswith(f"folder:{paths.path} good.py: applied patch 1.0.1, ")
    assert f"targets {spec}, in " in outcomes[0]
    assert outcomes[0].endswith(" ms")
    rejections = [r for r in caplog.records if " old.py: " in r.getMessage()]
    assert len(rejections) == 1
    assert rejections[0].levelno == logging.WARNING
    assert f"rejected patch 1.0.0, targets {spec}, in " in rejections[0].getMessage()
    assert "not newer" in rejections[0].getMessage()
    assert any(r.getMessage().startswith("rolled back 1.0.1 in ") for r in caplog.records)


def test_the_applied_patches_an_agent_lists_follow_every_change_of_the_level(
    make_module: Callable[[str], types.ModuleType], write_patch: Callable[..., Path]
) -> None:
    """After applies, rollbacks, a patch applied again and a change below the top, what the
    pipeline compares each drop with is the registry's level; and what it was given stays
    the level as it was then (a view of one state, not of the registry)."""
    from hotpatch.agent._local import LocalApplier

    mod = make_module("def f():\n    return 0\n")
    registry = hotpatch.Registry("1.0")
    local = LocalApplier(registry)

    def load(version: str, value: int) -> hotpatch.Patch:
        return hotpatch.load_patch(write_patch(patch_text(mod.__name__, version, value)))

    def check() -> None:
        assert [(a.version, a.sha256, a.targets) for a in local.applied()] == [
            (p.version, p.sha256, p.targets) for p in registry.patches
        ]

    first, second, third = load("1.0.1", 1), load("1.0.2", 2), load("1.0.3", 3)
    try:
        for patch in (first, second, third):
            registry.apply(patch)
            check()
        registry.rollback()
        check()
        registry.apply(third)  # the very same patch again
        registry.rollback(to="1.0")
        registry.apply(load("1.0.1", 10))  # another 1.0.1 under the same 1.0.2
        registry.apply(second)
        check()
        assert local.applied()[0].sha256 != first.sha256
        given = local.applied()
        registry.rollback()
        assert [a.version for a in given] == ["1.0.1", "1.0.2"]
        assert [a.version for a in reversed(given)] == ["1.0.2", "1.0.1"]
        assert (given[-1].version, given[0:1][0].version, len(given)) == ("1.0.2", "1.0.1", 2)
        assert [a.version for a in local.applied()] == ["1.0.1"]
    finally:
        if registry.level:
            registry.rollback(to="1.0")
