"""The pre-fork workers' journal: one record appended per change, durable as the core journal.

The group's journal (``DIR/.workers/journal.json``) is written by the owner of
the folder with ``hotpatch._journal``'s records: what a change costs does not
grow with the level, a crash at any point of an append or of a compaction
leaves a prefix of whole levels, an older file is converted in place and a
newer one refused.
"""

from __future__ import annotations

import itertools
import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from test_fanout import Workers, levels, patch_text, workers
from test_journal import (
    TARGET,
    _format1,
    _kill_points,
    _patch_source,
    _records_of,
    _write_chain,
)

import hotpatch
from hotpatch._journal import Journal
from hotpatch.agent._control import request
from hotpatch.agent.fanout._journal import GroupJournal

__all__ = ["workers"]


@pytest.fixture
def target(make_module: Any) -> Any:
    return make_module(TARGET)


def test_a_change_appends_one_record_whatever_the_level(
    target: Any, write_patch: Any, tmp_path: Path
) -> None:
    """The owner's side: a registry without a journal of its own, the group's journal."""
    path = tmp_path / ".workers" / "journal.json"
    group = GroupJournal(path, "1.0")
    registry = hotpatch.Registry("1.0")
    sizes, lines = [], []
    try:
        for patch in _write_chain(write_patch, target.__name__, 30):
            applied = registry.apply(hotpatch.load_patch(patch))
            group.record(registry, "apply", applied.version, "test")
            sizes.append(path.stat().st_size)
            lines.append(len(_records_of(path)))
        registry.rollback()
        group.record(registry, "rollback", "1.0.30", "test")
        rolled = path.stat().st_size
    finally:
        registry.rollback(to="1.0")
    assert lines == list(range(2, 32))  # the header, then one more record each time
    growth = [b - a for a, b in itertools.pairwise(sizes)]
    assert max(growth) - min(growth) < 20  # one record per apply, the same size at 2 and 30
    assert 0 < rolled - sizes[-1] < 200  # a rollback's record names no patch content
    assert len(_records_of(path)) == 1 + 30 + 1  # the header, 30 applies, the rollback
    state = Journal(path).read()
    assert state is not None
    assert [e.version for e in state.level] == [f"1.0.{i}" for i in range(1, 30)]
    assert [(h["action"], len(h["level"])) for h in state.history[-2:]] == [
        ("apply", 30),
        ("rollback", 29),
    ]


def test_the_owner_appends_one_record_per_drop(workers: Workers) -> None:
    pids = [workers.start(), workers.start()]
    for n in range(1, 4):
        workers.drop(f"p{n}.py", patch_text(f"1.{n}", n))
        workers.filed(f"p{n}.py", "applied")
    assert len(_records_of(workers.journal)) == 1 + 3
    assert request(workers.socket(workers.owner()), {"cmd": "rollback"})["ok"]
    assert len(_records_of(workers.journal)) == 1 + 4
    state = workers.recorded()
    assert levels(state) == ["1.1", "1.2"]
    assert [(h["action"], h["level"]) for h in state.history] == [
        ("apply", ["1.1"]),
        ("apply", ["1.1", "1.2"]),
        ("apply", ["1.1", "1.2", "1.3"]),
        ("rollback", ["1.1", "1.2"]),
    ]
    assert all(workers.level(pid) == ["1.1", "1.2"] for pid in pids)
    assert all(workers.level(pid) == ["1.1", "1.2"] for pid in workers.restart_all(2))


# -- SIGKILL inside an append, a compaction and a conversion ---------------------------------

# As test_journal's KILLER, for the group's journal: a forked process applies the
# patches of "before" in a registry without a journal, recording each in the group's
# journal as the owner does; then does "op" with one system call of the journal
# replaced (written short, made or not) and SIGKILLs itself there. Another forked
# process then replays the file as a worker starting alone does, takes the folder
# over as the owner does, applies the next patch and records it.
KILLER = textwrap.dedent(
    """
    import json, os, signal, sys
    cfg = json.loads(sys.argv[1])
    sys.path.insert(0, cfg["modules"])
    import hotpatch, hotpatch._journal as J
    from hotpatch.agent.fanout._journal import GroupJournal
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
                real(fd, data[:cut], offset)
                die()
            if point.get("after"):
                real(*args)
            die()

        setattr(os, call, hooked)

    def child(point, path):
        if point.get("compact"):
            J.COMPACT_MIN, J.COMPACT_GROWTH = 0, 0
        reg = hotpatch.Registry("1.0")
        group = GroupJournal(path, "1.0")
        for p in cfg["before"]:
            done = reg.apply(hotpatch.load_patch(p))
            group.record(reg, "apply", done.version, "test")
        if point.get("format1"):  # the file as hotpatch 1 wrote it, read as an owner does
            state = J.Journal(path).read()
            doc = {"format": 1, "baseline": "1.0", "history": state.history,
                   "level": [{"version": e.version, "sha256": e.sha256, "path": e.path,
                              "text": e.text, "summary": e.summary} for e in state.level]}
            with open(path, "w") as f:
                json.dump(doc, f)
            group = GroupJournal(path, "1.0")
            if point.get("convert"):
                arm(point)
                group.take_over(reg, "test")
                os._exit(0)
        arm(point)
        if point["op"] == "rollback":
            reg.rollback()
            group.record(reg, "rollback", "x", "test")
        else:
            done = reg.apply(hotpatch.load_patch(point["op"]))
            group.record(reg, "apply", done.version, "test")
        os._exit(0)  # the kill never came

    def resume(path, out):
        group = GroupJournal(path, "1.0")
        reg = group.replay(lambda journal: hotpatch.Registry("1.0", journal=journal))
        level = list(reg.level)
        group.take_over(reg, "test")
        done = reg.apply(hotpatch.load_patch(cfg["next"]))
        group.record(reg, "apply", done.version, "test")
        state = J.Journal(path).read()
        os.write(out, json.dumps([level, [e.version for e in state.level],
                                  group.problem]).encode())
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
        level, resumed, problem = json.loads(answer)
        leftovers = sorted(n for n in os.listdir(cfg["folder"]) if n.startswith(f".journal-{i}."))
        print(json.dumps({"point": point, "killed": killed, "level": level, "problem": problem,
                          "resumed": resumed, "leftovers": leftovers}), flush=True)
    """
)


def _conversion_points() -> list[tuple[dict[str, Any], str]]:
    """A journal of format 1: rewritten whole in format 2, by the next record or by the
    owner taking it over ("convert"), killed on the way. A conversion keeps the level."""
    points: list[tuple[dict[str, Any], str]] = []
    steps = (
        ("fsync", 1, False, "before"),  # the temporary file written, not synced
        ("fsync", 1, True, "before"),  # synced, not renamed
        ("replace", 1, False, "before"),
        ("replace", 1, True, "after"),  # renamed: the new level, in format 2
        ("fsync", 2, False, "after"),  # the folder's sync
    )
    for call, nth, after, expect in steps:
        for op in ("apply", "rollback"):
            point = {"op": op, "call": call, "nth": nth, "after": after, "format1": True}
            points.append((point, expect))
        point = {"op": "apply", "call": call, "nth": nth, "after": after, "format1": True}
        points.append(({**point, "convert": True}, "before"))
    return points


@pytest.mark.slow  # about sixty processes, each killed at one point of a journal write
def test_sigkill_at_every_point_of_an_append_a_compaction_and_a_conversion(
    target: Any, write_patch: Any, tmp_path: Path
) -> None:
    p1, p2, p3, p4 = _write_chain(write_patch, target.__name__, 4)
    points = _kill_points() + _conversion_points()
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
    expected = {
        ("apply", "before"): ["1.0.1", "1.0.2"],
        ("apply", "after"): ["1.0.1", "1.0.2", "1.0.3"],
        ("rollback", "before"): ["1.0.1", "1.0.2"],
        ("rollback", "after"): ["1.0.1"],
    }
    for (point, expect), result in zip(points, results, strict=True):
        assert result["killed"], point  # the kill came where it was armed
        assert result["problem"] is None, (point, result["problem"])
        assert result["level"] == expected[point["op"], expect], point
        assert result["resumed"] == [*result["level"], "1.0.4"], point
        assert all(n.endswith(".tmp") for n in result["leftovers"]), point


# -- formats: an older file converted in place, a newer one refused ----------------------------


def test_a_group_journal_of_format_1_is_replayed_and_converted_in_place(
    workers: Workers, caplog: pytest.LogCaptureFixture
) -> None:
    workers.start()
    for n in (1, 2):
        workers.drop(f"p{n}.py", patch_text(f"1.{n}", n))
        workers.filed(f"p{n}.py", "applied")
    workers.stop_all()
    old = _format1(workers.journal)
    workers.journal.write_text(json.dumps(old, indent=1))  # as hotpatch 1 wrote it

    pids = [workers.start(), workers.start()]
    assert all(workers.level(pid) == ["1.1", "1.2"] for pid in pids)
    journal = Journal(workers.journal)
    state = journal.read()
    assert journal.format_found == 2
    assert state is not None
    assert [e.text for e in state.level] == [e["text"] for e in old["level"]]
    assert state.history == old["history"]
    assert sorted(p.name for p in workers.journal.parent.iterdir() if "journal" in p.name) == [
        "journal.json"
    ]
    workers.drop("p3.py", patch_text("1.3", 3))  # and it goes on by appending
    workers.filed("p3.py", "applied")
    assert len(_records_of(workers.journal)) == 1 + 1 + 1
    assert levels(workers.recorded()) == ["1.1", "1.2", "1.3"]


def test_a_group_journal_of_format_1_is_converted_by_a_new_owner_too(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The owner takes a journal over (it did not replay it): converted, level unchanged."""
    registry = hotpatch.Registry("1.0")
    path = tmp_path / "journal.json"
    path.write_text(json.dumps({"format": 1, "baseline": "1.0", "level": [], "history": []}))
    group = GroupJournal(path, "1.0")
    with caplog.at_level(logging.INFO, logger="hotpatch"):
        group.take_over(registry, "test")
    assert path.read_bytes().startswith(b'{"format":2,')
    assert "converted from format 1 to format 2" in caplog.text
    assert group.problem is None


@pytest.mark.parametrize(
    "newer",
    [
        pytest.param(b'{"format":3,"baseline":"1.0"}\t00000000\n', id="as-2"),
        pytest.param(b'{"format": 12, "level": {}}', id="one-document"),
    ],
)
def test_a_group_journal_of_a_newer_format_is_refused_never_misread(
    workers: Workers, newer: bytes
) -> None:
    workers.journal.parent.mkdir(mode=0o700)
    workers.journal.write_bytes(newer)
    number = json.loads(newer.split(b"\t")[0])["format"]
    pids = [workers.start(), workers.start()]
    assert all(workers.level(pid) == [] for pid in pids)
    error = workers.status(workers.owner())["journal_error"]
    assert f"written in format {number}" in error
    assert "Upgrade hotpatch" in error
    workers.drop("p1.py", patch_text("1.1", 1))
    result = workers.filed("p1.py", "rejected")
    assert f"written in format {number}" in result["reason"]
    assert all(workers.level(pid) == [] for pid in pids)
    assert workers.journal.read_bytes() == newer  # never rewritten


def test_each_record_leaves_the_registry_s_level_in_the_file(
    target: Any, write_patch: Any, tmp_path: Path
) -> None:
    """A record finds what changed from the top of the registry's patches since the last
    one, not by walking the level: after applies and rollbacks of several at once, a
    patch applied again, one applied from code (no source: never journaled), changes
    made between two records and a new owner, the file holds the registry's level."""
    path = tmp_path / ".workers" / "journal.json"
    group = GroupJournal(path, "1.0")
    registry = hotpatch.Registry("1.0")
    paths = _write_chain(write_patch, target.__name__, 6)
    loaded = [hotpatch.load_patch(p) for p in paths]
    in_code = hotpatch.Patch(version="1.0.4", baseline="1.0")

    @in_code.replace(f"{target.__name__}:other")
    def other(x: int) -> int:
        return x

    def record(action: str) -> None:
        group.record(registry, action, registry.version, "test")
        state = Journal(path).read()
        assert state is not None
        assert [(e.version, e.sha256) for e in state.level] == [
            (p.version, p.source.sha256) for p in registry.patches if p.source is not None
        ], action

    try:
        for patch in loaded[:3]:
            registry.apply(patch)
            record("apply")
        registry.apply(in_code)
        record("apply")
        registry.apply(loaded[4])
        record("apply")  # 1.0.1-3, 1.0.4 (from code), 1.0.5
        registry.rollback(to="1.0.2")
        record("rollback")  # three off at once, one of them not in the file
        registry.apply(loaded[2])  # the very same patch again
        registry.apply(hotpatch.load_patch(paths[3]))  # 1.0.4, from its file this time
        record("apply")  # two changes since the last record
        registry.rollback(to="1.0")
        other_first = _patch_source(target.__name__, "1.0.1", "x + 100")
        registry.apply(hotpatch.load_patch(write_patch(other_first, name="p1b.py")))
        registry.apply(loaded[1])  # the very object 1.0.2 was, now on another 1.0.1
        record("apply")  # the level changed below its top since the last record
        registry.rollback()
        record("rollback")
        group = GroupJournal(path, "1.0")  # another worker takes the folder over
        group.take_over(registry, "test")
        registry.apply(loaded[5])
        record("apply")
        state = Journal(path).read()
        assert state is not None
        assert [e.version for e in state.level] == ["1.0.1", "1.0.6"]
        assert state.level[0].text == textwrap.dedent(other_first)
    finally:
        registry.rollback(to="1.0")
