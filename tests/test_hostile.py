"""Hostile or buggy patches (SPEC 11, last bullet): nothing of hotpatch is a target, no patch
cuts off the way to roll it back, a migration has a deadline, verification leaves nothing."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from drops import DropFolder
from test_fanout import Workers
from test_fanout import patch_text as fanout_patch
from test_supervisor import Supervised, running, supervise
from test_supervisor import request as svc_request
from test_supervisor_patches import drop, logic_patch, result_of, watching

import hotpatch
from hotpatch import NotPatchable
from hotpatch._journal import Journal
from hotpatch.agent._control import request

__all__ = ["supervise"]  # the fixture, shared with test_supervisor

Write = Callable[..., Path]


def _patch(body: str, version: str = "1.0.1") -> str:
    header = f"from hotpatch import Patch\npatch = Patch(version={version!r}, baseline='1.0')\n"
    return header + textwrap.dedent(body)


# -- nothing of hotpatch is a target -------------------------------------------------------

OWN_TARGETS = [
    ("hotpatch._registry:Registry.apply", "replace", "hotpatch._registry"),
    ("hotpatch.agent._outcome:write_result", "replace", "hotpatch.agent._outcome"),
    ("hotpatch:load_patch", "replace", "hotpatch"),
    ("hotpatch_plugins.audit:AuditLog.hotpatch_after_apply", "replace", "hotpatch_plugins.audit"),
    (
        "hotpatch.agent._control_server:ControlServer",
        "replace_class",
        "hotpatch.agent._control_server",
    ),
    ("hotpatch.agent._pipeline", "migrate", "hotpatch.agent._pipeline"),
]


def _own_patch(target: str, how: str) -> str:
    if how == "migrate":
        return _patch(f"@patch.migrate({target!r})\ndef up(module):\n    module.BROKEN = True\n")
    if how == "replace_class":
        return _patch(
            f"@patch.replace_class({target!r})\nclass ControlServer:\n"
            "    def stop(self):\n        return None\n"
        )
    return _patch(f"@patch.replace({target!r})\ndef f(*args, **kwargs):\n    return None\n")


@pytest.mark.parametrize(("target", "how", "module"), OWN_TARGETS)
def test_a_target_inside_hotpatch_is_refused_by_check_and_apply(
    registry: hotpatch.Registry, write_patch: Write, target: str, how: str, module: str
) -> None:
    patch = hotpatch.load_patch(write_patch(_own_patch(target, how)))
    for attempt in (registry.check, registry.apply):
        with pytest.raises(NotPatchable, match="part of hotpatch itself") as caught:
            attempt(patch)
        assert caught.value.target == target
        assert module in str(caught.value)
    assert registry.level == ()


def test_a_function_of_hotpatch_reached_through_the_service_is_refused(
    registry: hotpatch.Registry,
    write_patch: Write,
    make_module: Callable[[str], types.ModuleType],
) -> None:
    mod = make_module("from hotpatch import load_patch\n")
    patch = hotpatch.load_patch(
        write_patch(
            _patch(
                f"@patch.replace('{mod.__name__}:load_patch')\n"
                "def load_patch(path, **kwargs):\n    return None\n"
            )
        )
    )
    with pytest.raises(NotPatchable, match="part of hotpatch itself") as caught:
        registry.check(patch)
    assert "hotpatch._loader" in str(caught.value)
    assert caught.value.target == f"{mod.__name__}:load_patch"


# -- a migration has a deadline ------------------------------------------------------------

HANGING = """
import threading
RELEASE = threading.Event()
RATE = 1
TOUCHED = []

def price(x):
    return x * RATE
"""


def _hanging_patch(mod: types.ModuleType, version: str = "1.0.1", *, first: str = "") -> str:
    return _patch(
        f"""
        @patch.replace('{mod.__name__}:price')
        def price(x):
            return (x * RATE, {version!r})
        {first}
        @patch.migrate({mod.__name__!r})
        def hang(module):
            module.TOUCHED.append('started')
            module.RELEASE.wait()
            module.TOUCHED.append('finished')
        """,
        version,
    )


def test_a_migration_past_its_deadline_refuses_the_patch_and_changes_nothing(
    write_patch: Write,
    make_module: Callable[[str], types.ModuleType],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    mod = make_module(HANGING)
    other = make_module("STATE = []\n")
    first = (
        f"@patch.migrate({other.__name__!r})\ndef first(module):\n    module.STATE.append('up')\n"
        f"@patch.unmigrate({other.__name__!r})\ndef first_down(module):\n"
        "    module.STATE.append('down')\n"
    )
    journal = tmp_path / "journal.json"
    # The deadline is each migration's: the first one, quick, must make it even when the
    # machine is loaded (0.5 s left little room at load 28 on 2 cores).
    registry = hotpatch.Registry("1.0", journal=journal, migration_timeout=3)
    try:
        patch = hotpatch.load_patch(
            write_patch(_hanging_patch(mod, first=textwrap.indent(first, "        ").strip()))
        )
        with pytest.raises(hotpatch.MigrationFailed, match=r"did not return within 3 s") as caught:
            registry.apply(patch)
        assert caught.value.target == mod.__name__
        assert registry.level == ()
        assert mod.price(3) == 3  # the code never switched
        assert other.STATE == ["up", "down"]  # the earlier migration was undone
        assert not journal.exists()  # nor was the level recorded
        # The registry goes on: a later patch applies and rolls back.
        later = _patch(
            f"@patch.replace('{mod.__name__}:price')\ndef price(x):\n    return -x\n", "1.0.2"
        )
        registry.apply(hotpatch.load_patch(write_patch(later)))
        assert mod.price(3) == -3
        registry.rollback()
        assert mod.price(3) == 3
    finally:
        mod.RELEASE.set()
    # The abandoned migration, returning at last, is told of in the log and changes no level.
    assert _eventually(lambda: "returned" in caplog.text)
    assert mod.TOUCHED == ["started", "finished"]
    assert registry.level == ()
    assert "abandoned" in caplog.text


def test_the_journal_never_holds_a_patch_whose_migration_still_runs(
    write_patch: Write, make_module: Callable[[str], types.ModuleType], tmp_path: Path
) -> None:
    # A process killed during a long migration must not replay that patch at its next
    # start (where the migration would run, and perhaps hang, again before it serves).
    mod = make_module(HANGING)
    journal = tmp_path / "journal.json"
    registry = hotpatch.Registry("1.0", journal=journal, migration_timeout=60)
    patch = hotpatch.load_patch(write_patch(_hanging_patch(mod)))
    applying = threading.Thread(target=registry.apply, args=(patch,))
    applying.start()
    try:
        assert _eventually(lambda: mod.TOUCHED == ["started"])
        recorded = Journal(journal).read()
        assert recorded is None or recorded.level == []
    finally:
        mod.RELEASE.set()
        applying.join()
    state = Journal(journal).read()
    assert state is not None
    assert [entry.version for entry in state.level] == ["1.0.1"]
    registry.rollback()


def test_the_migration_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="migration_timeout"):
        hotpatch.Registry("1.0", migration_timeout=0)


def test_a_migration_raising_systemexit_is_a_refusal_not_an_exit(
    registry: hotpatch.Registry,
    write_patch: Write,
    make_module: Callable[[str], types.ModuleType],
) -> None:
    mod = make_module("RATE = 1\n")
    patch = _patch(f"@patch.migrate({mod.__name__!r})\ndef up(module):\n    raise SystemExit(3)\n")
    with pytest.raises(hotpatch.MigrationFailed, match="SystemExit"):
        registry.apply(hotpatch.load_patch(write_patch(patch)))
    assert registry.level == ()


def _eventually(predicate: Callable[[], object], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_an_agent_whose_migration_hangs_refuses_it_and_stays_responsive(
    tmp_path: Path, make_module: Callable[[str], types.ModuleType]
) -> None:
    mod = make_module(HANGING)
    folder = DropFolder(tmp_path)
    agent = hotpatch.install(
        "1.0", watch=folder.path, journal=folder.journal, migration_timeout=0.5
    )
    sock = folder.path / ".hotpatch.sock"
    try:
        folder.drop("hang.py", _hanging_patch(mod))
        result = folder.filed("hang.py", "rejected")
        assert result["outcome"] == "rejected"
        assert "did not return within 0.5 s" in result["reason"]
        assert "migration_timeout" in result["reason"]
        assert request(sock, {"cmd": "status"})["level"] == []
        # Later drops apply, the socket answers, rollback works.
        folder.drop(
            "next.py",
            _patch(
                f"@patch.replace('{mod.__name__}:price')\ndef price(x):\n    return -x\n", "1.0.2"
            ),
        )
        assert folder.filed("next.py")["outcome"] == "applied"
        assert mod.price(2) == -2
        assert request(sock, {"cmd": "rollback"})["versions"] == ["1.0.2"]
        assert mod.price(2) == 2
    finally:
        mod.RELEASE.set()
        agent.stop()


# -- no patch cuts off the way to roll it back -------------------------------------------

SERVICE = """
import sys, time
import hotpatch
wait = float(sys.argv[3]) if sys.argv[3:] else None  # the check after an apply's, if given
agent = hotpatch.install("1.0", watch=sys.argv[1], journal=sys.argv[2], vital_timeout=wait)
print("ready", flush=True)
while True:
    time.sleep(1)
"""

BREAKS = {
    "raises": "raise RuntimeError('json is broken')",
    "garbage": "return '{not json'",
    "hangs": "import time; time.sleep(3600)",
}


def _json_patch(how: str, version: str = "1.0.1") -> str:
    return _patch(
        f"@patch.replace('json:dumps')\ndef dumps(obj, *args, **kwargs):\n    {BREAKS[how]}\n",
        version,
    )


SLOW_CHECK_S = 2.0
# A json.dumps that works, but takes SLOW_CHECK_S once on the thread of the check after
# the apply (the agent's and the serving process's alike): that check takes longer than a
# short wait, and well within a long one. It runs with json's globals: it imports its own.
SLOW_CHECK = _patch(
    f"""
    @patch.replace('json:dumps')
    def dumps(obj, *args, **kwargs):
        import json, sys, threading, time
        if threading.current_thread().name == "hotpatch-vital-check" and not hasattr(
            sys, "slowed_a_check"
        ):
            sys.slowed_a_check = True
            time.sleep({SLOW_CHECK_S!r})
        encoder = kwargs.pop("cls", None) or json.JSONEncoder
        return encoder(*args, **kwargs).encode(obj)
    """
)


class Service:
    """A real service process with an embedded agent on ``folder``."""

    def __init__(self, folder: DropFolder, vital_timeout: float | None = None) -> None:
        self.folder = folder
        quicker = [] if vital_timeout is None else [str(vital_timeout)]
        self.process = subprocess.Popen(
            [sys.executable, "-c", SERVICE, str(folder.path), str(folder.journal), *quicker],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "ready"

    def status(self) -> dict[str, Any]:
        return request(self.folder.path / ".hotpatch.sock", {"cmd": "status"}, timeout=10.0)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.mark.parametrize("how", ["raises", "garbage", "hangs"])
def test_a_patch_breaking_json_is_rolled_back_and_filed_rejected(tmp_path: Path, how: str) -> None:
    # A json.dumps that hangs holds the check after the apply for good: the agent gives up
    # on it the same way after 3 s as after its 10 s.
    folder = DropFolder(tmp_path)
    service = Service(folder, vital_timeout=3.0)
    try:
        folder.drop("json.py", _json_patch(how))
        result = folder.filed("json.py", "rejected")
        assert result["outcome"] == "rejected"
        assert "rolled back" in result["reason"]
        assert "json:dumps" not in result["reason"] or "vital" in result["reason"]
        assert result["level"] == []
        status = service.status()
        assert status["level"] == []
        history = request(folder.path / ".hotpatch.sock", {"cmd": "history"})["history"]
        assert [(h["action"], h["version"]) for h in history] == [
            ("apply", "1.0.1"),
            ("rollback", "1.0.1"),
        ]
        # A later drop is applied and filed as usual.
        folder.drop(
            "fine.py", _patch("@patch.migrate('json')\ndef up(module):\n    pass\n", "1.0.2")
        )
        assert folder.filed("fine.py")["outcome"] == "applied"
    finally:
        service.stop()
    # A restart does not replay the patch that was rolled back.
    service = Service(folder)
    try:
        assert service.status()["level"] == ["1.0.2"]
    finally:
        service.stop()


@pytest.mark.parametrize(("wait", "outcome"), [(SLOW_CHECK_S / 2, "rejected"), (30.0, "applied")])
def test_a_check_after_the_apply_longer_than_vital_timeout_rolls_the_patch_back(
    tmp_path: Path, wait: float, outcome: str
) -> None:
    # The same patch, whose check takes SLOW_CHECK_S: rolled back naming the wait and the
    # setting when install(vital_timeout=) is shorter, kept when it is long enough.
    folder = DropFolder(tmp_path)
    service = Service(folder, vital_timeout=wait)
    try:
        folder.drop("slow.py", SLOW_CHECK)
        result = folder.filed("slow.py", outcome)
        assert result["outcome"] == outcome, result
        if outcome == "rejected":
            assert "rolled back" in result["reason"]
            assert f"did not finish within vital_timeout ({wait:g} s;" in result["reason"]
            assert "install(..., vital_timeout=SECONDS)" in result["reason"]
            assert service.status()["level"] == []
        else:
            assert service.status()["level"] == ["1.0.1"]
    finally:
        service.stop()


@pytest.mark.parametrize("value", [0, -1.5, float("nan"), float("inf"), "5", True])
def test_a_vital_timeout_that_is_not_a_positive_number_is_refused(
    tmp_path: Path, value: object
) -> None:
    # Refused when install() is called, naming the option and what it takes; nothing of the
    # agent is started or written in the folder.
    folder = tmp_path / "patches"
    folder.mkdir(mode=0o700)
    with pytest.raises(ValueError, match="vital_timeout must be a positive number of seconds"):
        hotpatch.install("1.0", watch=folder, vital_timeout=value)  # type: ignore[arg-type]
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize(
    ("given", "wait"),
    [("option", SLOW_CHECK_S / 2), ("environment", SLOW_CHECK_S / 2), ("option", 30.0)],
)
def test_under_the_supervisor_a_check_longer_than_vital_timeout_rolls_the_patch_back(
    supervise: Callable[..., Supervised],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    given: str,
    wait: float,
) -> None:
    # hotpatch run --vital-timeout S (or $HOTPATCH_VITAL_TIMEOUT), passed on to the serving
    # process: its check after the apply gets that long.
    outcome = "rejected" if wait < SLOW_CHECK_S else "applied"
    options: tuple[str, ...] = ()
    if given == "option":
        options = ("--vital-timeout", str(wait))
    else:
        monkeypatch.setenv("HOTPATCH_VITAL_TIMEOUT", str(wait))
    folder, supervised = watching(supervise, tmp_path, options=options)
    drop(folder, "slow.py", SLOW_CHECK)
    result = result_of(folder, "slow.py", supervised)
    assert result["dir"] == outcome, result
    if outcome == "rejected":
        assert "rolled back" in result["reason"]
        assert f"within the vital timeout ({wait:g} s;" in result["reason"]
        assert "hotpatch run --vital-timeout SECONDS" in result["reason"]
        assert supervised.status()["patches"]["level"] == []
    else:
        assert supervised.status()["patches"]["level"] == ["1.0.1"]


def test_under_the_supervisor_a_patch_breaking_json_is_rolled_back_in_the_service(
    supervise: Callable[..., Supervised], tmp_path: Path
) -> None:
    folder, supervised = watching(supervise, tmp_path)
    drop(folder, "json.py", _json_patch("raises"))
    result = result_of(folder, "json.py", supervised)
    assert result["dir"] == "rejected", result
    assert "rolled back" in result["reason"]
    assert supervised.status()["patches"]["level"] == []
    assert svc_request(supervised.address, "/get")["tag"] == "base"  # json works again
    drop(folder, "fix.py", logic_patch("1.0.2", "fixed"))
    assert result_of(folder, "fix.py", supervised)["dir"] == "applied"
    outcome = supervised.restart()  # the journal does not bring it back
    assert outcome["ok"], outcome
    assert supervised.status()["patches"]["level"] == ["1.0.2"]


# -- verification leaves nothing behind ------------------------------------------------------


def _spinning_patch(pids: Path, *, spin: bool) -> str:
    """A patch whose import, in the verification child (``python -I``) only, starts a
    double-forked daemon spinning the CPU, then spins itself if ``spin``."""
    return _patch(
        f"""
        import os, sys
        def _note(name):
            tmp = os.path.join({str(pids)!r}, name + ".tmp")
            with open(tmp, "w") as f:
                f.write(str(os.getpid()))
            os.replace(tmp, os.path.join({str(pids)!r}, name))
        if sys.flags.isolated:
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    _note("daemon")
                    while True:
                        pass
                os._exit(0)
            while not os.path.exists(os.path.join({str(pids)!r}, "daemon")):
                pass
            _note("check")
            while {spin!r}:
                pass
        @patch.migrate("json")
        def nothing(module):
            pass
        """
    )


def _pids(folder: Path) -> dict[str, int]:
    return {name: int((folder / name).read_text()) for name in ("check", "daemon")}


def _gone(pids: dict[str, int], timeout: float = 20.0) -> list[str]:
    """The processes of ``pids`` still alive after ``timeout`` (zombies count as gone)."""
    _eventually(lambda: not any(running(p) for p in pids.values()), timeout)
    return [f"{name} {pid}" for name, pid in pids.items() if running(pid)]


def test_a_daemon_a_patch_starts_at_import_dies_with_its_check(tmp_path: Path) -> None:
    folder, pids = DropFolder(tmp_path), tmp_path / "pids"
    pids.mkdir()
    service = Service(folder)
    try:
        folder.drop("daemon.py", _spinning_patch(pids, spin=False))
        assert folder.filed("daemon.py")["outcome"] == "applied"
        assert not _gone(_pids(pids))
    finally:
        service.stop()


def test_sigkill_of_the_service_during_a_spinning_check_leaves_no_process(
    tmp_path: Path,
) -> None:
    folder, pids = DropFolder(tmp_path), tmp_path / "pids"
    pids.mkdir()
    service = Service(folder)
    try:
        folder.drop("spin.py", _spinning_patch(pids, spin=True))
        assert _eventually((pids / "check").exists, 60.0)
        found = _pids(pids)
        assert all(running(p) for p in found.values())
        service.process.send_signal(signal.SIGKILL)  # no chance to clean up
        service.process.wait()
        assert not _gone(found), "a verification process outlived the service"
    finally:
        service.stop()


def test_sigkill_of_hotpatch_run_during_a_spinning_check_leaves_no_check_process(
    supervise: Callable[..., Supervised], tmp_path: Path
) -> None:
    folder, supervised = watching(supervise, tmp_path)
    pids = tmp_path / "pids"
    pids.mkdir()
    drop(folder, "spin.py", _spinning_patch(pids, spin=True))
    assert _eventually((pids / "check").exists, 60.0)
    found = _pids(pids)
    supervised.process.send_signal(signal.SIGKILL)
    supervised.process.wait()
    assert not _gone(found), "a verification process outlived hotpatch run"


def test_under_the_supervisor_a_hanging_migration_is_refused_at_the_services_deadline(
    supervise: Callable[..., Supervised], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOTPATCH_MIGRATION_TIMEOUT", "0.5")  # hotpatch run passes it on
    folder, supervised = watching(supervise, tmp_path)
    hang = "@patch.migrate('counter_logic')\ndef hang(module):\n    import time; time.sleep(3600)\n"
    drop(folder, "hang.py", logic_patch("1.0.1", "hung", extra=hang))
    result = result_of(folder, "hang.py", supervised)
    assert result["dir"] == "rejected", result
    assert "did not return within 0.5 s" in result["reason"]
    drop(folder, "fix.py", logic_patch("1.0.2", "fixed"))
    assert result_of(folder, "fix.py", supervised)["dir"] == "applied"
    assert svc_request(supervised.address, "/get")["tag"] == "fixed"


def test_pre_fork_workers_roll_back_a_patch_breaking_json_everywhere(tmp_path: Path) -> None:
    workers = Workers(tmp_path)
    try:
        pids = [workers.start(), workers.start()]
        workers.drop("json.py", _json_patch("raises"))
        result = workers.filed("json.py", "rejected")
        assert "rolled back" in result["reason"]
        assert all(workers.level(pid) == [] for pid in pids)
        workers.drop("fix.py", fanout_patch("1.1", 1))
        assert workers.filed("fix.py", "applied")["outcome"] == "applied"
        assert all(workers.level(pid) == ["1.1"] for pid in pids)
    finally:
        workers.stop_all()


def test_pre_fork_workers_roll_back_a_patch_whose_check_outlasts_their_vital_timeout(
    tmp_path: Path,
) -> None:
    # install(workers=True, vital_timeout=): each worker's check after the apply gets that long.
    workers = Workers(tmp_path)
    wait = SLOW_CHECK_S / 2
    try:
        pids = [workers.start(vital_timeout=wait), workers.start(vital_timeout=wait)]
        workers.drop("slow.py", SLOW_CHECK)
        result = workers.filed("slow.py", "rejected")
        assert "rolled back" in result["reason"]
        assert f"did not finish within vital_timeout ({wait:g} s;" in str(result), result
        assert all(workers.level(pid) == [] for pid in pids)
    finally:
        workers.stop_all()
