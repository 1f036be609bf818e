"""Journal: the patch level survives a restart, in a new process, written atomically."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import hotpatch

# A real service stand-in: imports the target module, builds a Registry on the
# journal (which replays it), reports, then applies the patch files it is given.
# "WAIT" in the list prints a "ready" line and blocks reading stdin.
CHILD = textwrap.dedent(
    """
    import importlib, json, sys
    cfg = json.loads(sys.argv[1])
    sys.path.insert(0, cfg["modules"])
    import hotpatch
    mod = importlib.import_module(cfg["module"])

    def out(**kw):
        print(json.dumps(kw), flush=True)

    try:
        reg = hotpatch.Registry(cfg["baseline"], journal=cfg["journal"])
    except hotpatch.JournalError as exc:
        out(event="error", message=str(exc), patch=exc.patch, result=mod.price(10))
        sys.exit(3)
    out(event="start", level=list(reg.level), result=mod.price(10),
        report=reg.journal_report, state=getattr(mod, "STATE", None))
    for path in cfg["apply"]:
        if path == "WAIT":
            out(event="ready")
            sys.stdin.readline()
            continue
        result = reg.apply(hotpatch.load_patch(path))
        out(event="applied", version=result.version, result=mod.price(10))
    out(event="done", level=list(reg.level))
    """
)

TARGET = """
def price(x):
    return x

def other(x):
    return -x
"""


def _patch_source(module: str, version: str, body: str = "x + 1", target: str = "price") -> str:
    return f"""
        from hotpatch import Patch
        patch = Patch(version="{version}", baseline="1.0", summary="patch {version}")

        @patch.replace("{module}:{target}")
        def {target}(x):
            return {body}
        """


class Service:
    """Runs CHILD in fresh interpreters against one module folder and one journal."""

    def __init__(self, tmp_path: Path, module: Any, journal: Path):
        self.script = tmp_path / "service.py"
        self.script.write_text(CHILD)
        self.modules = str(Path(module.__file__).parent)
        self.module = module.__name__
        self.journal = journal

    def argv(self, apply: list[str], baseline: str = "1.0") -> list[str]:
        cfg = {
            "modules": self.modules,
            "module": self.module,
            "baseline": baseline,
            "journal": str(self.journal),
            "apply": apply,
        }
        return [sys.executable, "-B", str(self.script), json.dumps(cfg)]

    def run(self, apply: list[str] | None = None, baseline: str = "1.0") -> list[dict[str, Any]]:
        proc = subprocess.run(
            self.argv([str(p) for p in apply or []], baseline),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        events = [json.loads(line) for line in proc.stdout.splitlines()]
        if proc.returncode not in (0, 3):
            pytest.fail(f"service exited {proc.returncode}:\n{proc.stderr}")
        return events

    def start(self, apply: list[str]) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(apply),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


@pytest.fixture
def target(make_module):
    return make_module(TARGET)


@pytest.fixture
def service(tmp_path, target):
    return Service(tmp_path, target, tmp_path / "state" / "journal.json")


def _write_chain(write_patch, module: str, count: int) -> list[Path]:
    return [
        write_patch(_patch_source(module, f"1.0.{i}", f"x + {i}"), name=f"p{i}.py")
        for i in range(1, count + 1)
    ]


# -- what the journal holds -------------------------------------------------------------


def test_journal_holds_content_and_sha256(service, target, write_patch):
    paths = _write_chain(write_patch, target.__name__, 2)
    events = service.run(paths)
    assert events[-1] == {"event": "done", "level": ["1.0.1", "1.0.2"]}

    data = json.loads(service.journal.read_text())
    assert data["format"] == 1
    assert data["baseline"] == "1.0"
    assert [e["version"] for e in data["level"]] == ["1.0.1", "1.0.2"]
    for entry, path in zip(data["level"], paths, strict=True):
        raw = path.read_bytes()
        assert entry["text"] == raw.decode()
        assert entry["sha256"] == hashlib.sha256(raw).hexdigest()
        assert entry["path"] == str(path)
    assert [h["action"] for h in data["history"]] == ["apply", "apply"]
    # tmp + fsync + rename: nothing but the journal is left in its folder
    assert sorted(p.name for p in service.journal.parent.iterdir()) == ["journal.json"]


def test_new_process_comes_back_at_the_level_after_the_files_are_gone(
    service, target, write_patch, tmp_path
):
    paths = _write_chain(write_patch, target.__name__, 2)
    service.run(paths)
    for path in paths:  # files move: the journal carries their content
        path.rename(tmp_path / f"moved-{path.name}")

    start = service.run()[0]
    assert start["level"] == ["1.0.1", "1.0.2"]
    assert start["result"] == 12
    assert "replayed 2 patches" in start["report"]

    # and it keeps going from there: the next patch stacks on the replayed level
    third = write_patch(_patch_source(target.__name__, "1.0.3", "x * 3"), name="p3.py")
    events = service.run([third])
    assert events[0]["level"] == ["1.0.1", "1.0.2"]
    assert events[-1] == {"event": "done", "level": ["1.0.1", "1.0.2", "1.0.3"]}
    assert service.run()[0]["result"] == 30


def test_migrations_run_again_on_replay(service, target, write_patch):
    path = write_patch(
        f"""
        from hotpatch import Patch
        patch = Patch(version="1.0.1", baseline="1.0")

        @patch.replace("{target.__name__}:price")
        def price(x):
            return x * STATE_FACTOR

        @patch.migrate("{target.__name__}")
        def migrate(module):
            module.STATE = "migrated"
            module.STATE_FACTOR = 5
        """
    )
    events = service.run([path])
    assert events[0]["state"] is None
    assert events[1]["result"] == 50

    restarted = service.run()[0]
    assert restarted["level"] == ["1.0.1"]
    assert restarted["state"] == "migrated"  # fresh process, so the migration ran again
    assert restarted["result"] == 50


def test_replay_in_process_and_roll_back_to_the_exact_original(service, target, write_patch):
    service.run(_write_chain(write_patch, target.__name__, 2))
    original = target.price.__code__

    registry = hotpatch.Registry("1.0", journal=service.journal)
    try:
        assert registry.level == ("1.0.1", "1.0.2")
        assert [h.action for h in registry.history] == ["apply", "apply", "replay", "replay"]
        assert target.price(10) == 12
    finally:
        registry.rollback(to="1.0")
    assert target.price.__code__ is original
    assert target.price(10) == 10
    assert json.loads(service.journal.read_text())["level"] == []
    assert service.run()[0]["level"] == []


# -- atomic writes ----------------------------------------------------------------------


def test_failed_write_keeps_the_previous_journal_and_changes_nothing(
    target, write_patch, tmp_path, monkeypatch
):
    journal = tmp_path / "journal.json"
    registry = hotpatch.Registry("1.0", journal=journal)
    first, second = _write_chain(write_patch, target.__name__, 2)
    try:
        registry.apply(hotpatch.load_patch(first))
        before = journal.read_bytes()
        patched = target.price.__code__

        def crash(src: Any, dst: Any) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "replace", crash)
        with pytest.raises(hotpatch.JournalError, match="cannot be written") as info:
            registry.apply(hotpatch.load_patch(second))
        assert str(journal) in str(info.value)
        assert journal.read_bytes() == before  # the previous journal is intact
        assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["journal.json"]
        assert registry.level == ("1.0.1",)
        assert target.price.__code__ is patched
        assert target.price(10) == 11

        # a rollback whose write fails rolls nothing back either
        with pytest.raises(hotpatch.JournalError):
            registry.rollback()
        assert registry.level == ("1.0.1",)
        assert target.price(10) == 11
        monkeypatch.undo()
    finally:
        if registry.level:
            registry.rollback(to="1.0")
    assert json.loads(journal.read_text())["level"] == []


def test_failed_fsync_leaves_no_temporary_file(target, write_patch, tmp_path, monkeypatch):
    journal = tmp_path / "journal.json"
    registry = hotpatch.Registry("1.0", journal=journal)
    (path,) = _write_chain(write_patch, target.__name__, 1)

    def crash(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(hotpatch.JournalError, match="Input/output error"):
        registry.apply(hotpatch.load_patch(path))
    monkeypatch.undo()
    assert list(tmp_path.glob("*journal*")) == []
    assert registry.level == ()
    assert target.price(10) == 10


# -- another baseline ---------------------------------------------------------------------


def test_journal_of_another_baseline_is_reported_set_aside_and_not_replayed(
    service, target, write_patch
):
    service.run(_write_chain(write_patch, target.__name__, 1))
    written = service.journal.read_bytes()

    registry = hotpatch.Registry("2.0", journal=service.journal)
    assert registry.level == ()
    assert target.price(10) == 10
    assert registry.journal_report is not None
    assert "baseline 1.0" in registry.journal_report
    assert "not replayed" in registry.journal_report
    kept = service.journal.with_name("journal.json.baseline-1.0")
    assert kept.read_bytes() == written  # set aside, not deleted
    assert not service.journal.exists()

    # a second one is set aside next to the first, never over it
    service.journal.write_bytes(written)
    again = hotpatch.Registry("2.0", journal=service.journal)
    assert again.level == ()
    assert kept.with_name("journal.json.baseline-1.0.2").read_bytes() == written
    assert kept.read_bytes() == written

    # and the new baseline starts its own journal
    patch2 = write_patch(
        _patch_source(target.__name__, "2.0.1", "x * 7").replace('"1.0"', '"2.0"'),
    )
    again.apply(hotpatch.load_patch(patch2))
    try:
        data = json.loads(service.journal.read_text())
        assert (data["baseline"], [e["version"] for e in data["level"]]) == ("2.0", ["2.0.1"])
    finally:
        again.rollback()


# -- corrupt journals ---------------------------------------------------------------------


def _assert_clear_error(exc: hotpatch.JournalError, journal: Path) -> None:
    message = str(exc)
    assert str(journal) in message
    assert "move" in message.lower()  # what to do


def test_truncated_journal(service, target, write_patch):
    service.run(_write_chain(write_patch, target.__name__, 2))
    raw = service.journal.read_bytes()
    service.journal.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(hotpatch.JournalError, match="corrupt") as info:
        hotpatch.Registry("1.0", journal=service.journal)
    _assert_clear_error(info.value, service.journal)
    assert target.price(10) == 10
    assert service.journal.read_bytes() == raw[: len(raw) // 2]  # left for inspection
    # a new process says the same and stays at the baseline
    event = service.run()[0]
    assert event["event"] == "error"
    assert event["result"] == 10


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda d: {**d, "format": 99}, id="newer-format"),
        pytest.param(lambda d: {**d, "format": 0}, id="format-0"),
        pytest.param(lambda d: {**d, "format": True}, id="format-bool"),
        pytest.param(lambda d: {**d, "format": "1"}, id="format-as-string"),
        pytest.param(lambda d: {k: v for k, v in d.items() if k != "level"}, id="no-level"),
        pytest.param(lambda d: [d], id="not-an-object"),
        pytest.param(lambda d: {**d, "level": [{**d["level"][0], "text": 5}]}, id="text-int"),
        pytest.param(lambda d: {**d, "level": [{**d["level"][0], "extra": 1}]}, id="extra-key"),
        pytest.param(lambda d: {**d, "level": "1.0.1"}, id="level-string"),
        pytest.param(lambda d: {**d, "baseline": None}, id="baseline-null"),
        pytest.param(lambda d: {**d, "baseline": "one"}, id="baseline-not-pep440"),
        pytest.param(lambda d: {**d, "history": [{"action": "apply"}]}, id="history-row"),
        pytest.param(lambda d: {**d, "history": 3}, id="history-int"),
    ],
)
def test_malformed_journal_is_a_clear_journal_error(service, target, write_patch, damage):
    service.run(_write_chain(write_patch, target.__name__, 1))
    data = damage(json.loads(service.journal.read_text()))
    service.journal.write_text(json.dumps(data))
    written = service.journal.read_bytes()
    with pytest.raises(hotpatch.JournalError) as info:
        hotpatch.Registry("1.0", journal=service.journal)
    _assert_clear_error(info.value, service.journal)
    assert target.price(10) == 10
    assert service.journal.read_bytes() == written


def test_newer_format_says_to_upgrade(service, target, write_patch):
    service.run(_write_chain(write_patch, target.__name__, 1))
    data = json.loads(service.journal.read_text())
    service.journal.write_text(json.dumps({**data, "format": 2}))
    with pytest.raises(hotpatch.JournalError, match="format 2") as info:
        hotpatch.Registry("1.0", journal=service.journal)
    assert "upgrade hotpatch" in str(info.value).lower()


def test_sha256_that_does_not_match_the_content(service, target, write_patch):
    service.run(_write_chain(write_patch, target.__name__, 2))
    data = json.loads(service.journal.read_text())
    data["level"][1]["text"] = data["level"][1]["text"].replace("x + 2", "x + 2000")
    service.journal.write_text(json.dumps(data))
    with pytest.raises(hotpatch.JournalError, match="sha256") as info:
        hotpatch.Registry("1.0", journal=service.journal)
    _assert_clear_error(info.value, service.journal)
    assert info.value.patch == "1.0.2"
    assert target.price(10) == 10  # 1.0.1 was not applied either: never a half level


def test_patch_whose_target_is_gone_rolls_back_the_whole_level(
    service, target, write_patch, make_module
):
    paths = [
        write_patch(_patch_source(target.__name__, "1.0.1", "x + 1"), name="p1.py"),
        write_patch(_patch_source(target.__name__, "1.0.2", "-x - 2", "other"), name="p2.py"),
        write_patch(_patch_source(target.__name__, "1.0.3", "x + 3"), name="p3.py"),
    ]
    assert service.run(paths)[-1]["level"] == ["1.0.1", "1.0.2", "1.0.3"]
    written = service.journal.read_bytes()

    # the service's code changes under the journal: `other` no longer exists
    del sys.modules[target.__name__]
    mod = make_module("def price(x):\n    return x\n", name=target.__name__)
    original = mod.price.__code__
    with pytest.raises(hotpatch.JournalError) as info:
        hotpatch.Registry("1.0", journal=service.journal)
    _assert_clear_error(info.value, service.journal)
    assert info.value.patch == "1.0.2"
    assert "1.0.2" in str(info.value)
    assert f"{mod.__name__}:other" in str(info.value)
    # 1.0.1 had been replayed: it is rolled back, the function is at the baseline
    assert mod.price.__code__ is original
    assert mod.price(10) == 10
    assert service.journal.read_bytes() == written  # kept, so the cause can be fixed

    event = service.run()[0]
    assert (event["event"], event["patch"], event["result"]) == ("error", "1.0.2", 10)


# -- SIGKILL ------------------------------------------------------------------------------


def _read_until(proc: subprocess.Popen[str], event: str) -> list[dict[str, Any]]:
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(json.loads(line))
        if seen[-1]["event"] == event:
            return seen
    assert proc.stderr is not None
    pytest.fail(f"service ended before {event!r}: {proc.stderr.read()}")


def test_sigkill_between_two_applies(service, target, write_patch):
    p1, p2, p3 = _write_chain(write_patch, target.__name__, 3)
    proc = service.start([str(p1), str(p2), "WAIT", str(p3)])
    try:
        seen = _read_until(proc, "ready")
        assert [e.get("version") for e in seen if e["event"] == "applied"] == ["1.0.1", "1.0.2"]
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.communicate(timeout=30)

    restarted = service.run()[0]
    assert restarted["event"] == "start"
    assert restarted["level"] == ["1.0.1", "1.0.2"]
    assert restarted["result"] == 12
    assert sorted(p.name for p in service.journal.parent.iterdir()) == ["journal.json"]


def test_sigkill_during_a_burst_of_applies_leaves_a_replayable_prefix(service, target, write_patch):
    count = 200
    burst = [f"1.0.{i}" for i in range(1, count + 1)]
    paths = [str(p) for p in _write_chain(write_patch, target.__name__, count)]
    proc = service.start(paths)
    assert proc.stdout is not None
    try:
        _read_until(proc, "start")
        time.sleep(0.05)  # let the burst run, then kill it wherever it is
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        rest, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    events = [json.loads(line) for line in rest.splitlines()]
    reported = [e["version"] for e in events if e["event"] == "applied"]

    restarted = service.run()[0]
    assert restarted["event"] == "start", restarted
    level = restarted["level"]
    assert level == burst[: len(level)]  # a prefix of the burst, in order
    # everything the child saw applied is recorded; at most the one in flight besides
    assert level[: len(reported)] == reported
    assert len(level) - len(reported) in (0, 1)
    assert restarted["result"] == 10 + len(level)  # the top of the level runs
    # a write killed half-way can only leave its temporary file, never a torn journal
    leftovers = {p.name for p in service.journal.parent.iterdir()} - {"journal.json"}
    assert all(n.startswith(".journal.json.") and n.endswith(".tmp") for n in leftovers)

    # and the burst resumes cleanly from where it stopped
    finished = service.run(paths[len(level) :])
    assert finished[-1] == {"event": "done", "level": burst}


# -- following a journal another process changed ------------------------------------------


def test_resync_follows_the_journal_another_process_changed(target, write_patch, tmp_path):
    """The level another process recorded is taken up: applied, replaced, rolled back."""
    ours, theirs = tmp_path / "ours.json", tmp_path / "theirs.json"
    p1, p2 = _write_chain(write_patch, target.__name__, 2)
    p3 = write_patch(_patch_source(target.__name__, "1.0.3", "x * 100"), name="p3.py")
    registry = hotpatch.Registry("1.0", journal=ours)
    assert registry.resync() is False  # no journal yet, no patches: nothing to do
    # The "other process": a registry on a second journal, whose bytes we copy over.
    other = hotpatch.Registry("1.0", journal=theirs)
    other.apply(hotpatch.load_patch(p1))
    other.apply(hotpatch.load_patch(p2))
    recorded = theirs.read_bytes()
    other.rollback(to="1.0.1")
    other.apply(hotpatch.load_patch(p3))
    diverged = theirs.read_bytes()
    other.rollback(to="1.0")
    emptied = theirs.read_bytes()
    assert target.price(10) == 10

    ours.write_bytes(recorded)
    assert registry.resync() is True
    assert registry.level == ("1.0.1", "1.0.2")
    assert target.price(10) == 12
    assert registry.resync() is False  # in step now
    assert ours.read_bytes() == recorded  # read, never written

    ours.write_bytes(diverged)  # same first patch, a different second one
    assert registry.resync() is True
    assert registry.level == ("1.0.1", "1.0.3")
    assert target.price(10) == 1000
    # The history is the journal's (the other process's applies), then this catch-up.
    assert ("apply", "1.0.3") in [(h.action, h.version) for h in registry.history]
    assert (registry.history[-1].action, registry.history[-1].who) == ("replay", "journal")

    ours.write_bytes(emptied)
    assert registry.resync() is True
    assert registry.level == ()
    assert target.price(10) == 10
    assert ours.read_bytes() == emptied


def test_resync_ignores_a_journal_of_another_baseline(target, write_patch, tmp_path):
    journal = tmp_path / "journal.json"
    registry = hotpatch.Registry("1.0", journal=journal)
    registry.apply(hotpatch.load_patch(_write_chain(write_patch, target.__name__, 1)[0]))
    data = json.loads(journal.read_text())
    data["baseline"] = "2.0"
    journal.write_text(json.dumps(data))
    assert registry.resync() is False
    assert registry.level == ("1.0.1",)
    assert journal.exists()  # not set aside: it is the new baseline's
    registry.rollback(to="1.0")
