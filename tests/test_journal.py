"""Journal: the patch level survives a restart, in a new process, written atomically."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import itertools
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from pychild import run_python_json
from test_folder_resources import SmallDisk, small_disk

import hotpatch
import hotpatch._journal
import hotpatch._journal_format
from hotpatch._journal_format import JournalEntry, JournalState, encode, encode_change
from hotpatch._shortage import RESOURCES, shortage_of

__all__ = ["small_disk"]  # the fixture

# A real service stand-in: imports the target module, builds a Registry on the
# journal (which replays it), reports, then applies the patch files it is given.
# "WAIT" in the list prints a "ready" line and blocks reading stdin.
CHILD = textwrap.dedent(
    """
    import importlib, json, sys
    cfg = json.loads(sys.argv[1])
    sys.path.insert(0, cfg["modules"])
    import hotpatch, hotpatch._journal
    mod = importlib.import_module(cfg["module"])
    if cfg.get("compact"):  # rewrite the journal before every append
        hotpatch._journal.COMPACT_MIN = hotpatch._journal.COMPACT_GROWTH = 0

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

    def argv(self, apply: list[str], baseline: str = "1.0", compact: bool = False) -> list[str]:
        cfg = {
            "compact": compact,
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

    def start(self, apply: list[str], compact: bool = False) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(apply, compact=compact),
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


def journal_files(folder: Path) -> list[str]:
    """The files in ``folder``, less the code a replay keeps for the next one (_codecache)."""
    return sorted(
        p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".hotpatch-code-")
    )


def _state(journal: Path) -> hotpatch._journal_format.JournalState:
    state = hotpatch._journal.Journal(journal).read()
    assert state is not None
    return state


def _format1(journal: Path) -> dict[str, Any]:
    """The journal's state as a document of format 1 (what hotpatch wrote before format 2)."""
    state = _state(journal)
    return {
        "format": 1,
        "baseline": state.baseline,
        "level": [dataclasses.asdict(e) for e in state.level],
        "history": state.history,
    }


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

    head = service.journal.read_bytes().split(b"\n")[0]
    assert head.startswith(b'{"format":2,"baseline":"1.0"}\t')
    journal = hotpatch._journal.Journal(service.journal)
    state = journal.read()
    assert state is not None
    assert journal.format_found == 2
    assert state.baseline == "1.0"
    assert [e.version for e in state.level] == ["1.0.1", "1.0.2"]
    for entry, path in zip(state.level, paths, strict=True):
        raw = path.read_bytes()
        assert entry.text == raw.decode()
        assert entry.sha256 == hashlib.sha256(raw).hexdigest()
        assert entry.path == str(path)
    assert [(h["action"], h["level"]) for h in state.history] == [
        ("apply", ["1.0.1"]),
        ("apply", ["1.0.1", "1.0.2"]),
    ]
    # nothing but the journal is left in its folder
    assert journal_files(service.journal.parent) == ["journal.json"]


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
    assert _state(service.journal).level == []
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

        def crash(*args: Any) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "pwrite", crash)  # an append
        monkeypatch.setattr(os, "replace", crash)  # a whole rewrite
        with pytest.raises(hotpatch.JournalError, match="cannot be written") as info:
            registry.apply(hotpatch.load_patch(second))
        assert str(journal) in str(info.value)
        assert journal.read_bytes() == before  # the previous journal is intact
        assert journal_files(tmp_path) == ["journal.json"]
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
    assert _state(journal).level == []


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
        state = _state(service.journal)
        assert (state.baseline, [e.version for e in state.level]) == ("2.0", ["2.0.1"])
    finally:
        again.rollback()


# -- corrupt journals ---------------------------------------------------------------------


def _assert_clear_error(exc: hotpatch.JournalError, journal: Path) -> None:
    message = str(exc)
    assert str(journal) in message
    assert "move" in message.lower()  # what to do


def test_truncated_journal_of_format_1(service, target, write_patch):
    service.run(_write_chain(write_patch, target.__name__, 2))
    service.journal.write_text(json.dumps(_format1(service.journal), indent=1))
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
    data = damage(_format1(service.journal))
    service.journal.write_text(json.dumps(data))
    written = service.journal.read_bytes()
    with pytest.raises(hotpatch.JournalError) as info:
        hotpatch.Registry("1.0", journal=service.journal)
    _assert_clear_error(info.value, service.journal)
    assert target.price(10) == 10
    assert service.journal.read_bytes() == written


def test_newer_format_says_to_upgrade(service, target, write_patch):
    service.run(_write_chain(write_patch, target.__name__, 1))
    data = _format1(service.journal)
    service.journal.write_text(json.dumps({**data, "format": 3}))
    with pytest.raises(hotpatch.JournalError, match="format 3") as info:
        hotpatch.Registry("1.0", journal=service.journal)
    assert "upgrade hotpatch" in str(info.value).lower()


def test_sha256_that_does_not_match_the_content(service, target, write_patch):
    service.run(_write_chain(write_patch, target.__name__, 2))
    data = _format1(service.journal)
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
    assert journal_files(service.journal.parent) == ["journal.json"]


@pytest.mark.parametrize(
    ("compact", "delay"),
    [(False, 0.05), (True, 0.03), (True, 0.11)],
    ids=["appending", "compacting-early", "compacting-later"],
)
def test_sigkill_during_a_burst_of_applies_leaves_a_replayable_prefix(
    service, target, write_patch, compact, delay
):
    count = 200
    burst = [f"1.0.{i}" for i in range(1, count + 1)]
    paths = [str(p) for p in _write_chain(write_patch, target.__name__, count)]
    proc = service.start(paths, compact=compact)
    assert proc.stdout is not None
    try:
        _read_until(proc, "start")
        time.sleep(delay)  # let the burst run, then kill it wherever it is
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        rest = proc.stdout.read()  # through the reader that has read ahead: no line lost
    finally:
        proc.kill()
        proc.communicate(timeout=30)
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
    # a compaction killed half-way can only leave its temporary file
    leftovers = set(journal_files(service.journal.parent)) - {"journal.json"}
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
    data = _format1(journal)
    data["baseline"] = "2.0"
    journal.write_text(json.dumps(data))
    assert registry.resync() is False
    assert registry.level == ("1.0.1",)
    assert journal.exists()  # not set aside: it is the new baseline's
    registry.rollback(to="1.0")


# -- format 2: appended records, each whole or ignored -------------------------------------


def _records_of(journal: Path) -> list[int]:
    """The offsets where each line of a format-2 journal ends (the header's first)."""
    raw = journal.read_bytes()
    return [i + 1 for i, byte in enumerate(raw) if byte == ord("\n")]


def test_an_apply_appends_one_record_whatever_the_level(target, write_patch, tmp_path):
    journal = tmp_path / "journal.json"
    registry = hotpatch.Registry("1.0", journal=journal)
    paths = _write_chain(write_patch, target.__name__, 30)
    sizes = []
    try:
        for path in paths:
            registry.apply(hotpatch.load_patch(path))
            sizes.append(journal.stat().st_size)
        registry.rollback()
        rolled = journal.stat().st_size
    finally:
        registry.rollback(to="1.0")
    growth = [b - a for a, b in itertools.pairwise(sizes)]
    assert max(growth) - min(growth) < 20  # a record per apply, the same size at 2 and 30
    assert 0 < rolled - sizes[-1] < 200  # a rollback's record names no patch content
    assert len(_records_of(journal)) == 1 + 30 + 2  # header, 30 applies, 2 rollbacks


def test_every_truncation_of_the_records_reads_as_a_prefix_of_whole_levels(
    target, write_patch, tmp_path
):
    """A crash can cut the file anywhere after the last synced record: cut it everywhere."""
    journal = tmp_path / "journal.json"
    registry = hotpatch.Registry("1.0", journal=journal)
    p1, p2, p3 = _write_chain(write_patch, target.__name__, 3)
    cumulative = write_patch(
        _patch_source(target.__name__, "1.0.4", "x * 4").replace(
            'summary="patch 1.0.4"', 'summary="patch 1.0.4", cumulative=True'
        ),
        name="p4.py",
    )
    levels: list[list[str]] = []
    try:
        for step in (p1, p2, p3, "rollback", p3, cumulative, "rollback", "rollback"):
            if step == "rollback":
                registry.rollback()
            else:
                registry.apply(hotpatch.load_patch(step))
            levels.append(list(registry.level))
    finally:
        if registry.level:
            registry.rollback(to="1.0")
    raw = journal.read_bytes()
    ends = _records_of(journal)
    assert len(ends) == 1 + 9  # the header, then one record per change
    levels = [*levels, []]  # the registry's last rollback, to the baseline
    expected = {ends[0]: []} | dict(zip(ends[1:], levels, strict=True))
    cut = tmp_path / "cut.json"
    for size in range(ends[0], len(raw) + 1):
        cut.write_bytes(raw[:size])
        state = hotpatch._journal.Journal(cut).read()
        assert state is not None
        whole = max(end for end in expected if end <= size)
        assert [e.version for e in state.level] == expected[whole], size
        assert len(state.history) == ends.index(whole)
    # A torn cumulative: none of it (not an empty level, nor the patches it replaced half).
    cut.write_bytes(raw[: ends[5] + 5])
    assert [e.version for e in _state(cut).level] == ["1.0.1", "1.0.2", "1.0.3"]


def test_a_torn_record_is_cut_off_by_the_next_append(service, target, write_patch):
    p1, p2, p3 = _write_chain(write_patch, target.__name__, 3)
    service.run([p1, p2])
    raw = service.journal.read_bytes()
    last = _records_of(service.journal)[-2]
    service.journal.write_bytes(raw[: last + 30])  # 1.0.2's record, torn after 30 bytes
    events = service.run([p3])
    assert events[0]["level"] == ["1.0.1"]
    assert events[-1] == {"event": "done", "level": ["1.0.1", "1.0.3"]}
    assert service.run()[0]["level"] == ["1.0.1", "1.0.3"]
    assert service.journal.read_bytes().startswith(raw[:last])
    assert len(_records_of(service.journal)) == 3


def test_zeros_in_place_of_the_last_record_are_ignored(service, target, write_patch):
    """What a crash can leave when the size reached the disk before the data did."""
    service.run(_write_chain(write_patch, target.__name__, 2))
    raw = service.journal.read_bytes()
    last = _records_of(service.journal)[-2]
    service.journal.write_bytes(raw[:last] + b"\0" * (len(raw) - last))
    assert service.run()[0]["level"] == ["1.0.1"]


def test_a_damaged_record_followed_by_others_is_corruption(service, target, write_patch):
    service.run(_write_chain(write_patch, target.__name__, 3))
    raw = bytearray(service.journal.read_bytes())
    ends = _records_of(service.journal)
    raw[ends[1] + 40] ^= 0x01  # a bit flipped in 1.0.2's record; 1.0.3's follows
    service.journal.write_bytes(bytes(raw))
    with pytest.raises(hotpatch.JournalError, match="record 2") as info:
        hotpatch.Registry("1.0", journal=service.journal)
    _assert_clear_error(info.value, service.journal)
    assert "corrupt" in str(info.value)
    assert target.price(10) == 10
    assert service.journal.read_bytes() == bytes(raw)  # left for inspection


def test_compaction_keeps_the_level_and_history(target, write_patch, tmp_path, monkeypatch):
    monkeypatch.setattr(hotpatch._journal, "COMPACT_MIN", 2000)
    journal = tmp_path / "journal.json"
    registry = hotpatch.Registry("1.0", journal=journal)
    paths = _write_chain(write_patch, target.__name__, 12)
    compactions = 0
    try:
        for path in paths:
            lines = len(_records_of(journal)) if journal.exists() else 0
            registry.apply(hotpatch.load_patch(path))
            compactions += len(_records_of(journal)) < lines
        registry.rollback(to="1.0.9")
        expected = [(h.action, h.version, list(h.level)) for h in registry.history]
    finally:
        registry.rollback(to="1.0")
    assert compactions >= 2  # rewritten as the header and one record, more than once
    state = _state(journal)
    assert state.level == []
    assert [(h["action"], h["version"], h["level"]) for h in state.history[:-1]] == expected
    assert (state.history[-1]["action"], state.history[-1]["level"]) == ("rollback", [])
    assert sorted(p.name for p in tmp_path.iterdir() if "journal" in p.name) == ["journal.json"]


def test_history_beyond_what_is_kept_is_dropped(target, write_patch, tmp_path, monkeypatch):
    monkeypatch.setattr(hotpatch._journal_format, "HISTORY_KEPT", 5)
    journal = tmp_path / "journal.json"
    registry = hotpatch.Registry("1.0", journal=journal)
    try:
        for path in _write_chain(write_patch, target.__name__, 8):
            registry.apply(hotpatch.load_patch(path))
    finally:
        registry.rollback(to="1.0")
    history = _state(journal).history
    assert [h["version"] for h in history[:4]] == ["1.0.5", "1.0.6", "1.0.7", "1.0.8"]
    assert history[3]["level"] == [f"1.0.{i}" for i in range(1, 9)]
    assert (history[4]["action"], history[4]["level"]) == ("rollback", [])


# A process appending to its journal, compacted before every append, with an audit hook
# noting each open of the journal's file for reading.
READS_BACK = """
import hashlib, json, os, sys
sys.path[:0] = {paths!r}
import hotpatch._journal as J
from hotpatch._journal_format import JournalEntry, JournalState

J.COMPACT_MIN, J.COMPACT_GROWTH = 0, 0
path = {path!r}
journal = J.Journal(path)
journal.write(JournalState("1.0"))
reads = []

def hook(event, args):
    if event == "open" and not isinstance(args[0], int) and os.fspath(args[0]) == path:
        mode, flags = args[1], args[2]
        if (mode or "").startswith("r") or mode is None and flags & os.O_ACCMODE != os.O_WRONLY:
            reads.append(mode or flags)

def whole():
    raise AssertionError("the journal is this object's: no whole state needed")

sys.addaudithook(hook)
for n in range(1, 6):
    text = f"# patch {{n}}\\n"
    entry = JournalEntry(f"1.0.{{n}}", hashlib.sha256(text.encode()).hexdigest(), "p.py", text)
    row = {{"time": float(n), "action": "apply", "version": entry.version, "elapsed_s": 0.001}}
    journal.append(0, [entry], [row], whole)
count = len(reads)
state = J.Journal(path).read()
print(json.dumps({{"reads": count, "level": [e.version for e in state.level],
                  "history": [h["level"] for h in state.history],
                  "lines": len(open(path, "rb").read().splitlines())}}))
"""


def test_a_compaction_reads_nothing_back(tmp_path):
    """The state a compaction writes is the one the journal object followed as it
    appended, not the file read back and decoded again (its sha256s checked again)."""
    path = tmp_path / "journal.json"
    result = run_python_json(READS_BACK.format(paths=sys.path, path=str(path)))
    assert result["reads"] == 0
    assert result["level"] == [f"1.0.{n}" for n in range(1, 6)]
    assert result["history"] == [[f"1.0.{n}" for n in range(1, k + 1)] for k in range(1, 6)]
    assert result["lines"] == 3  # compacted before the last record: header, state, record


def _random_change(rng: random.Random, versions: list[str], last: list[str], serial: list[int]):
    """A change of the level as the registry and the fan-out record them: patches off the
    top, others on, and rows: some carrying their level or their change from the row
    before (a replay's rows), the last at the level the change leaves."""
    pop = rng.randint(0, len(versions))
    push = []
    for _ in range(rng.randint(0, 2)):
        serial[0] += 1
        text = f"# patch {serial[0]}\n" * rng.randint(1, 3)
        push.append(
            JournalEntry(
                f"1.0.{serial[0]}",
                hashlib.sha256(text.encode()).hexdigest(),
                f"p{serial[0]}.py",
                text,
                rng.choice(["", f"fix {serial[0]}"]),
            )
        )
    rows: list[dict[str, Any]] = []
    prev = list(last)
    for _ in range(rng.randint(0, 2)):
        row: dict[str, Any] = {"time": rng.random(), "action": "replay", "version": "1.0.1"}
        row |= {"elapsed_s": rng.random(), "who": rng.choice(["api", "folder"])}
        if rng.random() < 0.5 or not rows:
            level = [*prev[: rng.randint(0, len(prev))], f"1.0.{rng.randint(1, 9)}"]
            row["level"] = level
        else:
            k = rng.randint(0, len(prev))
            added = [f"1.0.{rng.randint(1, 9)}" for _ in range(rng.randint(0, 2))]
            row["delta"] = [k, added]
            level = prev[: len(prev) - k] + added
        rows.append(row)
        prev = level
    rows.append({"time": rng.random(), "action": "apply", "version": "x", "elapsed_s": 0.0})
    return pop, push, rows


@pytest.mark.parametrize("seed", range(4))
def test_a_compaction_writes_what_reading_the_journal_back_would(tmp_path, monkeypatch, seed):
    """Levels up and down, rows carrying their level or their change, history trimmed:
    each compaction writes the bytes the file read back would give."""
    monkeypatch.setattr(hotpatch._journal, "COMPACT_MIN", 0)
    monkeypatch.setattr(hotpatch._journal, "COMPACT_GROWTH", 0.0)
    monkeypatch.setattr(hotpatch._journal_format, "HISTORY_KEPT", 7)
    rng = random.Random(seed)
    path = tmp_path / "journal.json"
    journal = hotpatch._journal.Journal(path)
    journal.write(JournalState("1.0"))
    versions: list[str] = []
    serial = [0]
    compactions = 0
    for n in range(60):
        if n == 30:  # another object, the file read at its start (a new process)
            journal = hotpatch._journal.Journal(path)
            journal.read()
        before, state = path.read_bytes(), _state(path)
        last = state.history[-1]["level"] if state.history else []
        pop, push, rows = _random_change(rng, versions, last, serial)
        undo = journal.append(pop, push, rows, lambda: pytest.fail("the file is its own"))
        record = encode_change(pop, push, rows)
        after = path.read_bytes()
        if after != before + record:  # compacted first (unless nothing was appended since)
            assert after == encode(state) + record
            compactions += 1
        versions = versions[: len(versions) - pop] + [e.version for e in push]
        if n % 9 == 8:  # taken back (a failed apply): the next compaction reads it back
            undo()
            versions = [e.version for e in state.level]
    assert compactions > 40
    assert [e.version for e in _state(path).level] == versions
    assert len(_state(path).history) == 7


# -- SIGKILL inside an append and inside a compaction ---------------------------------------

# Forks one process per kill point. Each builds a journaled registry, applies the
# patches of "before", then does "op" (an apply or a rollback) with one system call
# of the journal replaced: when it comes, only "bytes" of a write are written (or
# the call is made or not, for "replace"/"fsync"), and the process SIGKILLs itself.
# Then another forked process replays what is on disk, reports the level, and
# applies the next patch on top (the journal goes on after the crash).
KILLER = textwrap.dedent(
    """
    import json, os, signal, sys
    cfg = json.loads(sys.argv[1])
    sys.path.insert(0, cfg["modules"])
    import hotpatch, hotpatch._journal as J
    __import__(cfg["module"])

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def arm(point):
        call, nth, size = point["call"], point.get("nth", 1), point.get("bytes")
        seen = [0]
        real = getattr(os, call)

        def hooked(*args):
            seen[0] += 1
            if seen[0] < nth:
                return real(*args)
            if call == "pwrite":
                fd, data, offset = args
                data = bytes(data)
                cut = int(len(data) * point["frac"]) if "frac" in point else size
                real(fd, data[:cut], offset)  # a negative cut counts from the end
                die()
            if point.get("after"):
                real(*args)
            die()

        setattr(os, call, hooked)

    def child(point, path):
        if point.get("compact"):
            J.COMPACT_MIN, J.COMPACT_GROWTH = 0, 0
        reg = hotpatch.Registry("1.0", journal=path)
        for p in cfg["before"]:
            reg.apply(hotpatch.load_patch(p))
        arm(point)
        if point["op"] == "rollback":
            reg.rollback()
        else:
            reg.apply(hotpatch.load_patch(point["op"]))
        os._exit(0)  # the kill never came

    def resume(path, out):
        reg = hotpatch.Registry("1.0", journal=path)
        level = list(reg.level)
        reg.apply(hotpatch.load_patch(cfg["next"]))
        state = J.Journal(path).read()
        os.write(out, json.dumps([level, [e.version for e in state.level]]).encode())
        os._exit(0)

    for i, point in enumerate(cfg["points"]):
        path = os.path.join(cfg["folder"], f"journal-{i}.json")
        pid = os.fork()
        if pid == 0:
            child(point, path)
        _, status = os.waitpid(pid, 0)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            resume(path, w)
        os.close(w)
        answer = b""
        while chunk := os.read(r, 65536):
            answer += chunk
        os.close(r)
        os.waitpid(pid, 0)
        level, resumed = json.loads(answer)
        leftovers = sorted(n for n in os.listdir(cfg["folder"]) if n.startswith(f".journal-{i}."))
        print(json.dumps({"point": point, "killed": killed, "level": level,
                          "resumed": resumed, "leftovers": leftovers}), flush=True)
    """
)


def _kill_points() -> list[tuple[dict[str, Any], str]]:
    """(kill point, which level the journal must hold after it: "before" or "after")."""
    points: list[tuple[dict[str, Any], str]] = []
    for op in ("apply", "rollback"):
        # A record cut after so many bytes (negative: short of its end by so many).
        cuts = (0, 1, 2, 9, 30, -30, -10, -9, -8, -2, -1)
        points.extend(({"op": op, "call": "pwrite", "bytes": cut}, "before") for cut in cuts)
        fracs = (0.25, 0.5, 0.75)
        points.extend(({"op": op, "call": "pwrite", "frac": f}, "before") for f in fracs)
        points.append(({"op": op, "call": "pwrite", "frac": 1.0}, "after"))  # all, no sync
        points.append(({"op": op, "call": "fdatasync"}, "after"))  # written, not synced
        points.append(({"op": op, "call": "fdatasync", "after": True}, "after"))
    # A compaction (forced before every append): the temporary file, the rename, the
    # folder's sync, then the append that follows it.
    for call, nth, after, expect in (
        ("fsync", 1, False, "before"),  # the temporary file written, not synced
        ("fsync", 1, True, "before"),  # synced, not renamed
        ("replace", 1, False, "before"),
        ("replace", 1, True, "before"),  # renamed: the same level, compacted
        ("fsync", 2, False, "before"),  # the folder's sync
        ("fsync", 2, True, "before"),
        ("pwrite", 1, None, "before"),  # the record after the compaction, torn
        ("fdatasync", 1, True, "after"),
    ):
        for op in ("apply", "rollback"):
            point = {"op": op, "call": call, "nth": nth, "after": after, "compact": True}
            if call == "pwrite":
                point["bytes"] = 20
            points.append((point, expect))
    return points


@pytest.mark.slow  # about fifty processes, each killed at one point of a journal write
def test_sigkill_at_every_point_of_an_append_and_of_a_compaction(target, write_patch, tmp_path):
    p1, p2, p3, p4 = _write_chain(write_patch, target.__name__, 4)
    points = _kill_points()
    folder = tmp_path / "kills"
    folder.mkdir()
    cfg = {
        "modules": str(Path(target.__file__).parent),
        "module": target.__name__,
        "folder": str(folder),
        "before": [str(p1), str(p2)],
        "next": str(p4),
        "points": [
            {**point, "op": "rollback" if point["op"] == "rollback" else str(p3)}
            for point, _ in points
        ],
    }
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    proc = subprocess.run(
        [sys.executable, "-B", str(script), json.dumps(cfg)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(results) == len(points)
    levels = {
        ("apply", "before"): ["1.0.1", "1.0.2"],
        ("apply", "after"): ["1.0.1", "1.0.2", "1.0.3"],
        ("rollback", "before"): ["1.0.1", "1.0.2"],
        ("rollback", "after"): ["1.0.1"],
    }
    for (point, expect), result in zip(points, results, strict=True):
        assert result["killed"], point  # the kill came where it was armed
        assert result["level"] == levels[point["op"], expect], point
        assert result["resumed"] == [*result["level"], "1.0.4"], point
        # a compaction killed before its rename leaves at most its temporary file
        assert all(n.endswith(".tmp") for n in result["leftovers"]), point


# -- formats ------------------------------------------------------------------------------


def test_a_journal_of_format_1_is_replayed_and_converted_in_place(
    service, target, write_patch, caplog
):
    p1, p2, p3 = _write_chain(write_patch, target.__name__, 3)
    service.run([p1, p2])
    old = _format1(service.journal)
    service.journal.write_text(json.dumps(old, indent=1))  # as hotpatch 1 wrote it

    with caplog.at_level(logging.INFO, logger="hotpatch"):
        registry = hotpatch.Registry("1.0", journal=service.journal)
    try:
        assert registry.level == ("1.0.1", "1.0.2")
        assert target.price(10) == 12
        assert [(h.action, h.level) for h in registry.history][:2] == [
            ("apply", ("1.0.1",)),
            ("apply", ("1.0.1", "1.0.2")),
        ]
        assert "converted from format 1 to format 2" in caplog.text
        journal = hotpatch._journal.Journal(service.journal)
        state = journal.read()
        assert journal.format_found == 2
        assert state == hotpatch._journal_format.JournalState(
            "1.0",
            [hotpatch._journal_format.JournalEntry(**e) for e in old["level"]],
            old["history"],
        )
        registry.apply(hotpatch.load_patch(p3))  # and it goes on by appending
    finally:
        registry.rollback(to="1.0")
    assert journal_files(service.journal.parent) == ["journal.json"]
    assert service.run()[0]["level"] == []


def test_a_journal_of_format_1_converted_by_a_new_process(service, target, write_patch):
    p1, p2 = _write_chain(write_patch, target.__name__, 2)
    service.run([p1])
    service.journal.write_text(json.dumps(_format1(service.journal), indent=1))
    events = service.run([p2])
    assert events[0]["level"] == ["1.0.1"]
    assert events[-1] == {"event": "done", "level": ["1.0.1", "1.0.2"]}
    assert service.journal.read_bytes().startswith(b'{"format":2,')
    assert service.run()[0]["level"] == ["1.0.1", "1.0.2"]


@pytest.mark.parametrize(
    "newer",
    [
        pytest.param(lambda raw: raw.replace(b'{"format":2,', b'{"format":3,', 1), id="as-2"),
        pytest.param(
            lambda raw: b'{"format": 7, "baseline": "1.0"}\n<binary records>\n', id="other-lines"
        ),
        pytest.param(lambda raw: b'{"format": 12, "level": {}}', id="one-document"),
    ],
)
def test_a_journal_of_a_newer_format_is_refused_never_misread(service, target, write_patch, newer):
    service.run(_write_chain(write_patch, target.__name__, 1))
    raw = newer(service.journal.read_bytes())
    service.journal.write_bytes(raw)
    number = json.loads(raw.split(b"\n")[0].split(b"\t")[0])["format"]
    with pytest.raises(hotpatch.JournalError) as info:
        hotpatch.Registry("1.0", journal=service.journal)
    message = str(info.value)
    assert str(service.journal) in message
    assert f"written in format {number}" in message
    assert "reads formats 1 to 2" in message
    assert "Upgrade hotpatch" in message
    assert "move it aside" in message
    assert target.price(10) == 10
    assert service.journal.read_bytes() == raw  # never rewritten
    event = service.run()[0]
    assert (event["event"], event["result"]) == ("error", 10)


def test_a_replay_is_in_the_journals_history_from_the_next_change(service, target, write_patch):
    p1, p2, p3 = _write_chain(write_patch, target.__name__, 3)
    service.run([p1, p2])
    service.run([])  # replays, changes nothing: its replay is not recorded
    assert [h["action"] for h in _state(service.journal).history] == ["apply", "apply"]
    service.run([p3])  # replays, then applies: both recorded, in one record
    assert [(h["action"], h["version"], h["level"]) for h in _state(service.journal).history] == [
        ("apply", "1.0.1", ["1.0.1"]),
        ("apply", "1.0.2", ["1.0.1", "1.0.2"]),
        ("replay", "1.0.1", ["1.0.1"]),
        ("replay", "1.0.2", ["1.0.1", "1.0.2"]),
        ("apply", "1.0.3", ["1.0.1", "1.0.2", "1.0.3"]),
    ]
    assert len(_records_of(service.journal)) == 1 + 3


# -- an undo point held across a restart (the supervisor's) -------------------------------


def test_an_undo_point_is_put_back_on_a_full_disk(make_module, write_patch, small_disk: SmallDisk):
    # A restart that fails its health check puts the journal back as it was before the
    # new process appended to it: that must not need space the disk no longer has,
    # or the process started after the rollback would replay the patch it rolled back.
    module = make_module(TARGET)
    path = small_disk.path / "journal.json"
    registry = hotpatch.Registry("1.0", journal=path)
    paths = _write_chain(write_patch, module.__name__, 3)
    try:
        registry.apply(hotpatch.load_patch(paths[0]))
        before = path.read_bytes()
        put_back = hotpatch._journal.Journal(path).undo_point()
        for p in paths[1:]:
            registry.apply(hotpatch.load_patch(p))
        assert [e.version for e in _state(path).level] == ["1.0.1", "1.0.2", "1.0.3"]
        small_disk.fill()
        put_back()
        assert path.read_bytes() == before
        assert [e.version for e in _state(path).level] == ["1.0.1"]
    finally:
        small_disk.free()
        registry.rollback(to="1.0")


def test_an_undo_point_of_a_journal_rewritten_since_writes_it_whole(tmp_path):
    path = tmp_path / "journal.json"
    journal = hotpatch._journal.Journal(path)
    journal.write(hotpatch._journal_format.JournalState("1.0"))
    before = path.read_bytes()
    put_back = hotpatch._journal.Journal(path).undo_point()
    hotpatch._journal.Journal(path).write(hotpatch._journal_format.JournalState("2.0"))
    put_back()
    assert path.read_bytes() == before
    assert _state(path).baseline == "1.0"


def test_an_undo_point_held_across_a_compaction_is_put_back_on_a_full_disk(
    make_module, write_patch, small_disk: SmallDisk, monkeypatch
):
    # The new process of a restart compacted the journal (a new file renamed over
    # it) before it failed its health check: putting the journal back must not
    # need the space a whole new file takes either.
    module = make_module(TARGET)
    path = small_disk.path / "journal.json"
    registry = hotpatch.Registry("1.0", journal=path)
    paths = _write_chain(write_patch, module.__name__, 3)
    try:
        registry.apply(hotpatch.load_patch(paths[0]))
        before, inode = path.read_bytes(), path.stat().st_ino
        point = hotpatch._journal.Journal(path).hold()
        monkeypatch.setattr(hotpatch._journal, "COMPACT_MIN", 0)
        monkeypatch.setattr(hotpatch._journal, "COMPACT_GROWTH", 0.0)
        for p in paths[1:]:
            registry.apply(hotpatch.load_patch(p))
        assert path.stat().st_ino != inode  # compacted: rewritten whole, renamed over it
        assert [e.version for e in _state(path).level] == ["1.0.1", "1.0.2", "1.0.3"]
        small_disk.fill()
        point.restore()
        assert path.read_bytes() == before
        assert [e.version for e in _state(path).level] == ["1.0.1"]
        assert sorted(os.listdir(small_disk.path)) == [".filler", "journal.json"]
    finally:
        small_disk.free()
        registry.rollback(to="1.0")


def test_an_undo_point_held_across_a_baseline_restart_is_put_back_on_a_full_disk(
    make_module, write_patch, small_disk: SmallDisk
):
    # The new process of a baseline restart set the journal aside and recorded the
    # new baseline's level before it failed its health check: going back to the
    # old code puts the old baseline's journal back, with no new space either.
    module = make_module(TARGET)
    path = small_disk.path / "journal.json"
    registry = hotpatch.Registry("1.0", journal=path)
    try:
        registry.apply(hotpatch.load_patch(_write_chain(write_patch, module.__name__, 1)[0]))
        before = path.read_bytes()
        point = hotpatch._journal.Journal(path).hold()
        newer = hotpatch.Registry("2.0", journal=path)  # the new baseline's process
        assert "not replayed (kept as journal.json.baseline-1.0)" in str(newer.journal_report)
        hotpatch._journal.Journal(path).write(hotpatch._journal_format.JournalState("2.0"))
        small_disk.fill()
        point.restore()
        assert path.read_bytes() == before
        assert _state(path).baseline == "1.0"
        assert [e.version for e in _state(path).level] == ["1.0.1"]
        # As before the restart: the copy set aside went back to being the journal.
        assert sorted(os.listdir(small_disk.path)) == [".filler", "journal.json"]
    finally:
        small_disk.free()
        registry.rollback(to="1.0")


def test_an_undo_point_no_longer_needed_leaves_nothing_behind(tmp_path):
    path = tmp_path / "journal.json"
    hotpatch._journal.Journal(path).write(hotpatch._journal_format.JournalState("1.0"))
    point = hotpatch._journal.Journal(path).hold()
    assert len(os.listdir(tmp_path)) == 2  # the journal, and the same file kept for the point
    point.discard()
    assert os.listdir(tmp_path) == ["journal.json"]
    assert path.stat().st_nlink == 1


def test_the_file_kept_by_an_undo_point_of_a_killed_process_is_removed(tmp_path):
    path = tmp_path / "journal.json"
    hotpatch._journal.Journal(path).write(hotpatch._journal_format.JournalState("1.0"))
    held = textwrap.dedent(
        f"""
        import os, hotpatch._journal
        hotpatch._journal.Journal({str(path)!r}).hold()
        os._exit(0)  # never lets it go
        """
    )
    subprocess.run([sys.executable, "-c", held], check=True, timeout=60)
    assert len(os.listdir(tmp_path)) == 2
    point = hotpatch._journal.Journal(path).hold()  # the next one clears the dead one's
    point.discard()
    assert os.listdir(tmp_path) == ["journal.json"]


def test_an_undo_point_of_no_journal_removes_the_one_written_since(tmp_path):
    path = tmp_path / "journal.json"
    point = hotpatch._journal.Journal(path).hold()
    hotpatch._journal.Journal(path).write(hotpatch._journal_format.JournalState("1.0"))
    point.restore()
    point.discard()
    assert os.listdir(tmp_path) == []


def test_an_undo_point_only_appended_to_since_is_cut_back_in_place(
    make_module, write_patch, tmp_path
):
    module = make_module(TARGET)
    path = tmp_path / "journal.json"
    registry = hotpatch.Registry("1.0", journal=path)
    paths = _write_chain(write_patch, module.__name__, 2)
    try:
        registry.apply(hotpatch.load_patch(paths[0]))
        before, inode = path.read_bytes(), path.stat().st_ino
        point = hotpatch._journal.Journal(path).hold()
        registry.apply(hotpatch.load_patch(paths[1]))
        point.restore()
        point.discard()
        assert (path.read_bytes(), path.stat().st_ino) == (before, inode)
        assert not [n for n in os.listdir(tmp_path) if ".undo-" in n]
        assert path.stat().st_nlink == 1
    finally:
        registry.rollback(to="1.0")


def test_an_undo_point_that_cannot_be_kept_is_a_shortage(small_disk: SmallDisk):
    # No inode left: the file cannot be kept under a second name, so a rollback
    # could not put it back either. Said as a shortage (the change waits), nothing made.
    path = small_disk.path / "journal.json"
    hotpatch._journal.Journal(path).write(hotpatch._journal_format.JournalState("1.0"))
    small_disk.use_up_inodes()
    try:
        with pytest.raises(hotpatch.JournalError, match="no undo point can be kept") as caught:
            hotpatch._journal.Journal(path).hold()
        assert shortage_of(caught.value) == RESOURCES[errno.ENOSPC]
        assert sorted(os.listdir(small_disk.path)) == [".inodes", "journal.json"]
    finally:
        small_disk.free()


@pytest.mark.parametrize("changed", ["compacted", "baseline"])
def test_an_undo_point_whose_kept_file_was_removed_waits_for_room_on_a_full_disk(
    make_module, write_patch, small_disk: SmallDisk, monkeypatch, changed
):
    # The file kept for the point was removed by hand while the new process changed
    # the journal. "baseline": the journal it set aside is the same file under another
    # name, put back with no new space. "compacted": the file is gone for good, the
    # bytes must be written whole (the last resort): on a full disk a shortage naming
    # the disk, the journal left whole as it is, put back once there is room.
    module = make_module(TARGET)
    path = small_disk.path / "journal.json"
    registry = hotpatch.Registry("1.0", journal=path)
    paths = _write_chain(write_patch, module.__name__, 3)
    try:
        registry.apply(hotpatch.load_patch(paths[0]))
        before = path.read_bytes()
        point = hotpatch._journal.Journal(path).hold()
        [kept] = [n for n in os.listdir(small_disk.path) if ".undo-" in n]
        os.unlink(small_disk.path / kept)
        if changed == "compacted":
            monkeypatch.setattr(hotpatch._journal, "COMPACT_MIN", 0)
            monkeypatch.setattr(hotpatch._journal, "COMPACT_GROWTH", 0.0)
            for p in paths[1:]:
                registry.apply(hotpatch.load_patch(p))
        else:
            hotpatch.Registry("2.0", journal=path)  # the new baseline's process sets it aside
            hotpatch._journal.Journal(path).write(hotpatch._journal_format.JournalState("2.0"))
        after = path.read_bytes()
        small_disk.fill()
        if changed == "compacted":
            with pytest.raises(hotpatch.JournalError, match="cannot be put back") as caught:
                point.restore()
            assert shortage_of(caught.value) == RESOURCES[errno.ENOSPC]
            assert f"the file kept for it ({kept}) was removed" in str(caught.value)
            assert path.read_bytes() == after  # whole, as it was
            assert sorted(os.listdir(small_disk.path)) == [".filler", "journal.json"]
            small_disk.free()
        point.restore()
        assert path.read_bytes() == before
        assert [e.version for e in _state(path).level] == ["1.0.1"]
        assert sorted(n for n in os.listdir(small_disk.path) if n != ".filler") == ["journal.json"]
    finally:
        small_disk.free()
        registry.rollback(to="1.0")


# -- a journal gone while the process runs ---------------------------------------------------


def test_a_journal_deleted_with_its_folder_is_written_again_at_the_running_level(
    target, write_patch, tmp_path
):
    """The journal is the level a restart comes back at: deleted with its folder (``rm -rf``
    of the patch folder, made again) while the process runs, ``keep_journal()`` writes it
    again at the running level. Before, a restart before the next apply came back at the
    baseline, every fix gone, silently."""
    folder = tmp_path / "watched"
    folder.mkdir()
    journal = folder / ".journal.json"
    registry = hotpatch.Registry("1.0", journal=journal)
    paths = _write_chain(write_patch, target.__name__, 2)
    for path in paths:
        registry.apply(hotpatch.load_patch(path))
    assert registry.keep_journal() is False  # there: left as it is
    before = journal.read_bytes()
    assert registry.keep_journal() is False
    assert journal.read_bytes() == before

    shutil.rmtree(folder)
    folder.mkdir(mode=0o700)
    assert registry.keep_journal() is True
    state = _state(journal)
    assert [e.version for e in state.level] == ["1.0.1", "1.0.2"]
    assert [e.text for e in state.level] == [p.read_text() for p in paths]
    assert [h["level"] for h in state.history][-1] == ["1.0.1", "1.0.2"]
    assert target.price(10) == 12  # the code was not touched
    assert registry.keep_journal() is False  # written: left as it is


def test_a_journal_that_cannot_be_written_again_is_said(target, write_patch, small_disk):
    journal = small_disk.path / ".journal.json"
    registry = hotpatch.Registry("1.0", journal=journal)
    registry.apply(hotpatch.load_patch(_write_chain(write_patch, target.__name__, 1)[0]))
    journal.unlink()
    small_disk.fill()
    with pytest.raises(hotpatch.JournalError, match=r"journal .*\.journal\.json"):
        registry.keep_journal()  # never a silent False
    assert not journal.exists()


def test_no_journal_is_written_for_a_level_at_the_baseline(target, tmp_path):
    journal = tmp_path / "journal.json"
    registry = hotpatch.Registry("1.0", journal=journal)
    assert registry.keep_journal() is False
    assert not journal.exists()
    assert hotpatch.Registry("1.0").keep_journal() is False  # no journal at all
