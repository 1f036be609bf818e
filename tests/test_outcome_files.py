"""The copy of a drop filed beside its result is whole whenever its name can be seen.

A folder that is only read (a state directory) keeps the drop where it is and files
the bytes processed as a copy, as does a drop replaced while it was worked on. A
reader -- an operator, a deployment script, an agent started after a crash -- that
finds the copy's name must find the whole patch, never an empty or cut file. The
test watches every file the filing opens (an audit hook, the interpreter's own
record of each ``open``) and looks at the copy's name at that moment.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from hotpatch.agent._outcome import Outcome, file_outcome

DATA = b"from hotpatch import Patch\n" + b"# padding\n" * 10_000

_seen: list[tuple[str, int | None]] = []
_watching: list[Path] = []


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if event != "open" or not _watching:
        return
    copy = _watching[0]
    try:
        size: int | None = copy.stat().st_size
    except FileNotFoundError:
        size = None
    _seen.append((str(args[0]), size))


sys.addaudithook(_hook)  # cannot be removed: it looks only while _watching is set


@pytest.mark.parametrize("move", [False, True], ids=["kept", "replaced-while-worked-on"])
def test_the_copy_filed_is_never_seen_cut(tmp_path: Path, move: bool) -> None:
    folder = tmp_path / "patches"
    (folder / "applied").mkdir(parents=True)
    drop = folder / "fix.py"
    drop.write_bytes(b"# another file now holds the name\n")
    outcome = Outcome(name="fix.py", who="test", version="1.0.1", outcome="applied", data=DATA)
    outcome.ino = (0, 0)  # not the file at the name now: the bytes processed are copied
    copy = folder / "applied" / "fix.py"
    _seen.clear()
    _watching.append(copy)
    try:
        file_outcome(drop, outcome, move=move)
    finally:
        _watching.clear()
    assert copy.read_bytes() == DATA
    assert _seen, "the filing opened no file"
    cut = [(opened, size) for opened, size in _seen if size is not None and size != len(DATA)]
    assert not cut, f"the copy's name showed a cut file while filing: {cut}"
