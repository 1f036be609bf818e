"""The folder's outcome log: appended by several real processes, rotated, followed across it."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hotpatch.agent._names import OUTCOME_LOG_NAME
from hotpatch.agent._outcome_log import LogTail, OutcomeLog, rotated

WRITER = """\
import sys
from pathlib import Path
from hotpatch.agent._outcome_log import OutcomeLog

folder, who, count, max_bytes = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
log = OutcomeLog(folder, max_bytes=max_bytes)
for n in range(count):
    log.append({"who": who, "n": n, "pad": "x" * 200})
"""


def test_a_tail_sees_what_is_appended_after_it_was_made(tmp_path: Path) -> None:
    log = OutcomeLog(tmp_path)
    log.append({"n": 0})
    tail = LogTail(tmp_path)
    assert tail.read() == []
    log.append({"n": 1})
    log.append({"n": 2, "reason": "caf\u00e9"})
    assert tail.read() == [{"n": 1}, {"n": 2, "reason": "caf\u00e9"}]
    assert tail.read() == []
    tail.close()
    assert [r["n"] for r in LogTail(tmp_path, from_start=True).read()] == [0, 1, 2]


def test_a_tail_made_before_the_log_exists_reads_it_from_its_start(tmp_path: Path) -> None:
    tail = LogTail(tmp_path)
    assert tail.read() == []
    OutcomeLog(tmp_path).append({"n": 0})
    assert tail.read() == [{"n": 0}]


def test_a_line_being_written_is_read_once_complete_and_garbage_is_skipped(
    tmp_path: Path,
) -> None:
    path = tmp_path / OUTCOME_LOG_NAME
    path.write_bytes(b"")
    tail = LogTail(tmp_path)
    with path.open("ab") as out:
        out.write(b'{"n": 1')
        out.flush()
        assert tail.read() == []
        out.write(b"}\nnot json\n[1, 2]\n")
        out.flush()
    assert tail.read() == [{"n": 1}]


def test_the_log_is_rotated_and_a_tail_follows_it_across(tmp_path: Path) -> None:
    log = OutcomeLog(tmp_path, max_bytes=1000)
    tail = LogTail(tmp_path)
    seen = []
    for n in range(40):
        log.append({"n": n, "pad": "x" * 80})
        seen += tail.read()
    assert [r["n"] for r in seen] == list(range(40))
    path = tmp_path / OUTCOME_LOG_NAME
    log.append({"n": 40})  # the last one may have rotated it: a new file begins
    assert [r["n"] for r in tail.read()] == [40]
    assert path.stat().st_size < 1000
    assert rotated(path).stat().st_size < 1000 + 100
    # Only one older generation is kept.
    assert sorted(p.name for p in tmp_path.iterdir()) == [OUTCOME_LOG_NAME, f"{OUTCOME_LOG_NAME}.1"]


def test_writers_in_several_processes_lose_and_mix_no_line(tmp_path: Path) -> None:
    """The workers of a pre-fork server append to one log, rotating it as they go."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    per_writer, max_bytes = 300, 40_000
    writers = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path), f"w{i}", str(per_writer), str(max_bytes)]
        )
        for i in range(4)
    ]
    for writer in writers:
        assert writer.wait(timeout=120) == 0
    path = tmp_path / OUTCOME_LOG_NAME
    current = path.read_bytes() if path.exists() else b""  # rotated by the last append
    lines = rotated(path).read_bytes().splitlines() + current.splitlines()
    records = [json.loads(line) for line in lines]  # every line whole
    assert all(len(r["pad"]) == 200 for r in records)
    # The rotations dropped whole generations, never part of a line; each writer's
    # lines are in its order.
    for i in range(4):
        numbers = [r["n"] for r in records if r["who"] == f"w{i}"]
        assert numbers == sorted(numbers)
    assert not path.exists() or path.stat().st_size < max_bytes
    assert len(records) >= max_bytes // 300  # at least the generation that was rotated


def test_a_reason_that_is_not_utf8_is_kept_escaped(tmp_path: Path) -> None:
    """A file name that is not UTF-8 reaches the reason as a surrogate escape."""
    name = os.fsdecode(b"bad-\xff.py")
    OutcomeLog(tmp_path).append({"file": "bad-\\xff.py", "reason": f"patch file {name} exits"})
    (record,) = LogTail(tmp_path, from_start=True).read()
    assert record["reason"] == f"patch file {name} exits"
    assert (tmp_path / OUTCOME_LOG_NAME).read_bytes().isascii()


def test_a_log_that_cannot_be_written_is_reported_and_nothing_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "gone"
    log = OutcomeLog(folder)
    with caplog.at_level(logging.WARNING, logger="hotpatch"):
        log.append({"n": 0})
    assert "cannot add to the outcome log" in caplog.text
    assert str(folder / OUTCOME_LOG_NAME) in caplog.text


def test_a_symlink_in_place_of_the_log_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    folder = tmp_path / "folder"
    folder.mkdir()
    os.symlink(victim, folder / OUTCOME_LOG_NAME)
    OutcomeLog(folder).append({"n": 0})
    assert victim.read_text() == "keep\n"
    assert LogTail(folder, from_start=True).read() == []
